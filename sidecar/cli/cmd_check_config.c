/*
 * cmd_check_config.c - `sidecar check-config`: validates a config file and
 * prints the effective configuration (defaults filled in, secrets masked),
 * or with --reference every key of every table as Markdown.
 */

#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "record/sc_registry.h"
#include "sinks/sc_sink.h"

/*
 * --online: each Schema Registry the pipelines use answers GET /subjects
 * with our credentials.  0, or SC_EXIT_FAILURE after saying which did not.
 */
static int check_online(const struct sc_config *cfg)
{
    int rc = SC_EXIT_OK;
    for (size_t i = 0; i < cfg->npipelines; i++) {
        const struct sc_pipeline_conf *p = &cfg->pipelines[i];
        if (p->formats.value != SC_VALUE_AVRO && p->formats.key != SC_VALUE_AVRO)
            continue;
        bool seen = false; /* one check per registry block */
        for (size_t j = 0; j < i; j++)
            seen |= cfg->pipelines[j].registry == p->registry &&
                    (cfg->pipelines[j].formats.value == SC_VALUE_AVRO ||
                     cfg->pipelines[j].formats.key == SC_VALUE_AVRO);
        if (seen)
            continue;
        char err[2048];
        char *url = sc_registry_display_url(p->registry);
        if (sc_registry_ping(p->registry, err, sizeof(err)) == 0) {
            fprintf(stderr, "%s: schema registry %s answers\n", p->name, url);
        } else {
            fprintf(stderr, "%s: %s\n", p->name, err);
            rc = SC_EXIT_FAILURE;
        }
        free(url);
    }
    return rc;
}

static int run_check_config(const struct sc_config *cfg, const struct sc_cli *cli)
{
    if (cli->reference) {
        char *md = sc_config_reference_markdown(&sc_sinks);
        fputs(md, stdout);
        free(md);
        return SC_EXIT_OK;
    }
    json_t *j = sc_config_to_json(cfg);
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(j);
    fprintf(stderr, "%s: configuration is valid (%zu pipeline%s)\n", cli->config, cfg->npipelines,
            cfg->npipelines == 1 ? "" : "s");
    return cli->online ? check_online(cfg) : SC_EXIT_OK;
}

const struct sc_command sc_cmd_check_config = {
    .name = "check-config",
    .summary = "Validate a config file and print the effective config.",
    .usage = "-c FILE [--online] | --reference",
    .help = "Prints the configuration with defaults filled in and secrets masked.\n"
            "--online also checks that each Schema Registry the pipelines use answers with\n"
            "the configured credentials (exit 1 if one does not).\n"
            "--reference prints every key with its type, default and range (Markdown).\n",
    .options = "c reference online",
    .run = run_check_config,
};
