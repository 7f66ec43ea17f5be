/*
 * sink_postgres.c - placeholder until the postgres sink lands (issue 4).
 */
#include <stdio.h>

#include "sc_sink.h"

static int postgres_create(struct sc_sink *sink, char *err, size_t errsize)
{
    (void)sink;
    snprintf(err, errsize, "the postgres sink is not implemented yet");
    return -1;
}

const struct sc_sink_class sink_postgres_type = {
    .name = "postgres",
    .create = postgres_create,
};
