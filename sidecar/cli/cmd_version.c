/*
 * cmd_version.c - `sidecar version` (and `sidecar --version`): the
 * sidecar's version and those of the libraries it runs with.
 */
#include <stdio.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>

#include "base/sc_util.h"
#include "cli/sc_cli.h"

void sc_print_version(FILE *out)
{
    int pq = PQlibVersion();
    fprintf(out,
            "sidecar %s (librdkafka %s, libpq %d.%d, jansson %s, libcurl %s, libmicrohttpd %s)\n",
            SIDECAR_VERSION, rd_kafka_version_str(), pq / 10000, pq % 100, jansson_version_str(),
            curl_version_info(CURLVERSION_NOW)->version, MHD_get_version());
}

static int run_version(const struct sc_config *cfg, const struct sc_cli *cli)
{
    (void)cfg, (void)cli;
    sc_print_version(stdout);
    return SC_EXIT_OK;
}

const struct sc_command sc_cmd_version = {
    .name = "version",
    .summary = "Print the version and the library versions.",
    .usage = "",
    .help = "",
    .options = "",
    .run = run_version,
};
