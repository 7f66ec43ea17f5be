/*
 * cli_target.c - the operator's --pipeline / --topic against the config
 * (see cli_target.h).
 */
#include "cli/cli_target.h"

#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"
#include "config/sc_config.h"

/* The names of a list, comma-separated, for "... (configured: a, b)". */
static char *join_names(const char *const *names, size_t n)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    for (size_t i = 0; i < n; i++)
        if (sc_buf_printf(&b, "%s%s", i ? ", " : "", names[i]) != 0)
            break;
    if (sc_buf_putc(&b, '\0') != 0)
        abort();
    return b.data;
}

/* Whether the pipeline's topic item (a name, or a "^pattern" as librdkafka takes it) names topic.
 */
static bool topic_matches(const char *item, const char *topic)
{
    if (item[0] != '^')
        return strcmp(item, topic) == 0;
    regex_t re;
    if (regcomp(&re, item, REG_EXTENDED | REG_NOSUB) != 0)
        return false;
    bool match = regexec(&re, topic, 0, NULL, 0) == 0;
    regfree(&re);
    return match;
}

int cli_find_target(const struct sc_config *cfg, const char *pipeline, const char *topic,
                    const struct sc_pipeline_conf **out, char *err, size_t errsize)
{
    const struct sc_pipeline_conf *p = NULL;
    for (size_t i = 0; i < cfg->npipelines; i++)
        if (strcmp(cfg->pipelines[i].name, pipeline) == 0)
            p = &cfg->pipelines[i];
    if (!p) {
        const char **names = sc_xcalloc(cfg->npipelines + 1, sizeof(char *));
        for (size_t i = 0; i < cfg->npipelines; i++)
            names[i] = cfg->pipelines[i].name;
        char *list = join_names(names, cfg->npipelines);
        snprintf(err, errsize, "no pipeline \"%s\" in %s (configured: %s)", pipeline, cfg->path,
                 list);
        free(list);
        free(names);
        return SC_EXIT_USAGE;
    }
    if (!topic) {
        *out = p;
        return SC_EXIT_OK;
    }
    for (size_t i = 0; i < p->topics.count; i++)
        if (topic_matches(p->topics.items[i], topic)) {
            *out = p;
            return SC_EXIT_OK;
        }
    char *list = join_names((const char *const *)p->topics.items, p->topics.count);
    snprintf(err, errsize, "pipeline \"%s\" does not consume topic \"%s\" (its topics: %s)",
             pipeline, topic, list);
    free(list);
    return SC_EXIT_USAGE;
}
