/*
 * sink_http.c - placeholder until the http sink lands (issue 4).
 */
#include <stdio.h>

#include "sc_sink.h"

static int http_create(struct sc_sink *sink, char *err, size_t errsize)
{
    (void)sink;
    snprintf(err, errsize, "the http sink is not implemented yet");
    return -1;
}

const struct sc_sink_class sink_http_type = {
    .name = "http",
    .create = http_create,
};
