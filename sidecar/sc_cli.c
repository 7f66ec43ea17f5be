/*
 * sc_cli.c - version output and the subcommands later work fills in.
 */
#include "sc_cli.h"

#include <stdio.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>

#include "sc_util.h"

void sc_print_version(FILE *out)
{
    int pq = PQlibVersion();
    fprintf(out,
            "sidecar %s (librdkafka %s, libpq %d.%d, jansson %s, libcurl %s, libmicrohttpd %s)\n",
            SIDECAR_VERSION, rd_kafka_version_str(), pq / 10000, pq % 100, jansson_version_str(),
            curl_version_info(CURLVERSION_NOW)->version, MHD_get_version());
}

static int not_yet(const char *what)
{
    fprintf(stderr, "sidecar %s: not implemented yet\n", what);
    return SC_EXIT_FAILURE;
}

int sc_cmd_status(const struct sc_config *cfg, bool json)
{
    (void)cfg, (void)json;
    return not_yet("status");
}

int sc_cmd_watch(const struct sc_config *cfg, const char *from, const char *pipeline,
                 const char *partition, bool restart_snapshot)
{
    (void)cfg, (void)from, (void)pipeline, (void)partition, (void)restart_snapshot;
    return not_yet("watch");
}

int sc_cmd_reset(const struct sc_config *cfg, const char *pipeline, const char *topic,
                 const char *partition, const char *to_offset, bool force)
{
    (void)cfg, (void)pipeline, (void)topic, (void)partition, (void)to_offset, (void)force;
    return not_yet("reset");
}
