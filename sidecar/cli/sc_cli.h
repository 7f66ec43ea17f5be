/*
 * sc_cli - the subcommands of the `sidecar` binary.  Each lives in its own
 * cli/cmd_<name>.c and exports one struct sc_command; main.c parses the
 * options every command shares and dispatches through the table of them.
 *
 * A command returns a process exit code (SC_EXIT_OK, SC_EXIT_FAILURE,
 * SC_EXIT_USAGE).
 */
#ifndef SC_CLI_H
#define SC_CLI_H

#include <stdbool.h>
#include <stdio.h>

struct sc_config;

/* The parsed command line; only the options the command accepts can be set. */
struct sc_cli {
    const char *config; /* -c FILE, or $SIDECAR_CONFIG */
    const char *pipeline;
    const char *topic;
    const char *partition;
    const char *to_offset;
    const char *from;
    const char *id;
    const char *instance; /* --instance ID (pin, move, drain) */
    bool wait;            /* --wait (pin, move, drain) */
    bool undo;            /* --undo (drain) */
    bool force;
    bool json;
    bool reference;
    bool restart_snapshot;
    const char *write_offset; /* reset: keep | N */
    bool all_errored;         /* retry: every errored partition of the pipeline */
    bool online;              /* check-config: also ask PostgreSQL and Kafka */
    bool wait_for_postgres;   /* run: keep retrying even when PostgreSQL refuses the login */
    /* Arguments after the options (only commands with .operands get any). */
    int argc;
    char **argv;
};

struct sc_command {
    const char *name;
    const char *summary; /* one line, in `sidecar --help` */
    const char *usage;   /* options after "sidecar NAME" */
    const char *help;    /* longer description for `sidecar NAME --help` */
    /*
     * The long options it accepts, space-separated ("c" is -c/--config:
     * then a config is required, unless --reference is given).
     */
    const char *options;
    bool operands; /* accepts arguments after the options */
    /*
     * Runs the command.  cfg is the loaded config when the command takes -c
     * (NULL with --reference); the log is set up from it.
     */
    int (*run)(const struct sc_config *cfg, const struct sc_cli *cli);
};

extern const struct sc_command sc_cmd_run;
extern const struct sc_command sc_cmd_migrate;
extern const struct sc_command sc_cmd_check_config;
extern const struct sc_command sc_cmd_status;
extern const struct sc_command sc_cmd_watch;
extern const struct sc_command sc_cmd_reset;
extern const struct sc_command sc_cmd_retry;
extern const struct sc_command sc_cmd_redrive;
extern const struct sc_command sc_cmd_pin; /* these four: cmd_assign.c */
extern const struct sc_command sc_cmd_unpin;
extern const struct sc_command sc_cmd_move;
extern const struct sc_command sc_cmd_drain;
extern const struct sc_command sc_cmd_version;

/* "sidecar 0.1.0 (librdkafka 2.0.2, libpq 15, jansson 2.14, ...)" */
void sc_print_version(FILE *out);

#endif
