/*
 * sc_cli.c - version output.  The subcommands live in their own files
 * (sc_run.c, sc_migrate.c, sc_inspect.c, sc_watch.c, sc_deadletter.c).
 */
#include "cli/sc_cli.h"

#include <stdio.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>

#include "base/sc_util.h"

void sc_print_version(FILE *out)
{
    int pq = PQlibVersion();
    fprintf(out,
            "sidecar %s (librdkafka %s, libpq %d.%d, jansson %s, libcurl %s, libmicrohttpd %s)\n",
            SIDECAR_VERSION, rd_kafka_version_str(), pq / 10000, pq % 100, jansson_version_str(),
            curl_version_info(CURLVERSION_NOW)->version, MHD_get_version());
}
