/*
 * sc_cli - entry points of the subcommands that main.c dispatches to.
 * Each returns a process exit code
 * (SC_EXIT_OK, SC_EXIT_FAILURE, SC_EXIT_USAGE).
 */
#ifndef SC_CLI_H
#define SC_CLI_H

#include <stdbool.h>
#include <stdio.h>

struct sc_config;

int sc_cmd_run(const struct sc_config *cfg);
int sc_cmd_status(const struct sc_config *cfg, bool json);
int sc_cmd_watch(const struct sc_config *cfg, const char *from, const char *pipeline,
                 const char *partition, bool restart_snapshot);
int sc_cmd_reset(const struct sc_config *cfg, const char *pipeline, const char *topic,
                 const char *partition, const char *to_offset, bool force);
int sc_cmd_redrive(const struct sc_config *cfg, const char *pipeline, const char *id);

/* "sidecar 0.1.0 (librdkafka 2.0.2, libpq 15, jansson 2.14, ...)" */
void sc_print_version(FILE *out);

#endif
