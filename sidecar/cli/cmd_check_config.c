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
#include "sinks/sc_sink.h"

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
    return SC_EXIT_OK;
}

const struct sc_command sc_cmd_check_config = {
    .name = "check-config",
    .summary = "Validate a config file and print the effective config.",
    .usage = "-c FILE | --reference",
    .help = "Prints the configuration with defaults filled in and secrets masked.\n"
            "--reference prints every key with its type, default and range (Markdown).\n",
    .options = "c reference",
    .run = run_check_config,
};
