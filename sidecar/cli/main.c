/*
 * main.c - the `sidecar` command line: parses arguments and dispatches to a
 * subcommand.  Nothing else lives here.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "sinks/sc_sink.h"

static void print_command_help(FILE *out, const struct sc_command *cmd)
{
    fprintf(out, "usage: sidecar %s %s\n\n%s\n", cmd->name, cmd->usage, cmd->summary);
    if (cmd->help && *cmd->help)
        fprintf(out, "\n%s", cmd->help);
}

static int usage_error(const struct sc_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Set when no subcommand was named and `run` is implied: errors must not blame "run". */
static bool implied_run;

static int usage_error(const struct sc_command *cmd, const char *fmt, ...)
{
    fprintf(stderr, implied_run ? "sidecar: " : "sidecar %s: ", cmd->name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (implied_run)
        fprintf(stderr,
                "\nWithout a subcommand, sidecar runs 'sidecar run %s'.\n"
                "Try 'sidecar --help' for the subcommands, 'sidecar run --help' for run.\n",
                cmd->usage);
    else
        fprintf(stderr, "\nusage: sidecar %s %s\nTry 'sidecar %s --help'.\n", cmd->name, cmd->usage,
                cmd->name);
    return SC_EXIT_USAGE;
}

/* The accepted long option nearest to an unknown one ("--partiton"), or NULL. */
static const char *nearest_option(const struct option *opts, const char *arg)
{
    if (strncmp(arg, "--", 2) != 0)
        return NULL;
    char name[64];
    snprintf(name, sizeof(name), "%.*s", (int)strcspn(arg + 2, "="), arg + 2);
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; opts[i].name; i++) {
        size_t d = sc_edit_distance(name, opts[i].name);
        if (d < best_d)
            best = opts[i].name, best_d = d;
    }
    return best;
}

enum {
    OPT_HELP = 'h',
    OPT_CONFIG = 'c',
    OPT_PIPELINE = 256,
    OPT_TOPIC,
    OPT_PARTITION,
    OPT_TO_OFFSET,
    OPT_FROM,
    OPT_ID,
    OPT_FORCE,
    OPT_JSON,
    OPT_REFERENCE,
    OPT_RESTART_SNAPSHOT,
    OPT_WRITE_OFFSET,
    OPT_ALL_ERRORED,
    OPT_ONLINE,
    OPT_WAIT_FOR_POSTGRES,
    OPT_INSTANCE,
    OPT_WAIT,
    OPT_UNDO,
};

/*
 * Parses the options every subcommand shares plus the ones cmd->options
 * names.  Unknown options and stray arguments are usage errors (exit 2).
 */
static int parse_cli(int argc, char **argv, const struct sc_command *cmd, struct sc_cli *cli)
{
    static const struct option all[] = {
        {"help", no_argument, NULL, OPT_HELP},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"pipeline", required_argument, NULL, OPT_PIPELINE},
        {"topic", required_argument, NULL, OPT_TOPIC},
        {"partition", required_argument, NULL, OPT_PARTITION},
        {"to-offset", required_argument, NULL, OPT_TO_OFFSET},
        {"from", required_argument, NULL, OPT_FROM},
        {"id", required_argument, NULL, OPT_ID},
        {"force", no_argument, NULL, OPT_FORCE},
        {"json", no_argument, NULL, OPT_JSON},
        {"reference", no_argument, NULL, OPT_REFERENCE},
        {"restart-from-snapshot", no_argument, NULL, OPT_RESTART_SNAPSHOT},
        {"write-offset", required_argument, NULL, OPT_WRITE_OFFSET},
        {"all-errored", no_argument, NULL, OPT_ALL_ERRORED},
        {"online", no_argument, NULL, OPT_ONLINE},
        {"wait-for-postgres", no_argument, NULL, OPT_WAIT_FOR_POSTGRES},
        {"instance", required_argument, NULL, OPT_INSTANCE},
        {"wait", no_argument, NULL, OPT_WAIT},
        {"undo", no_argument, NULL, OPT_UNDO},
        {NULL, 0, NULL, 0},
    };
    const char *allowed = cmd->options;
    /* Only the options this subcommand accepts are offered to getopt. */
    struct option opts[SC_ARRAY_LEN(all)];
    size_t n = 0;
    for (size_t i = 0; all[i].name; i++)
        if (all[i].val == OPT_HELP || (all[i].val == OPT_CONFIG && sc_word_in(allowed, "c")) ||
            (all[i].val >= 256 && sc_word_in(allowed, all[i].name)))
            opts[n++] = all[i];
    opts[n] = (struct option){NULL, 0, NULL, 0};

    memset(cli, 0, sizeof(*cli));
    cli->config = getenv("SIDECAR_CONFIG");
    optind = 1;
    opterr = 0;
    int c;
    /* "+": stop at the first operand; ":": report a missing value as ':', not as unknown. */
    while ((c = getopt_long(argc, argv, sc_word_in(allowed, "c") ? "+:hc:" : "+:h", opts, NULL)) !=
           -1) {
        switch (c) {
        case OPT_HELP:
            print_command_help(stdout, cmd);
            exit(SC_EXIT_OK);
        case OPT_CONFIG:
            cli->config = optarg;
            break;
        case OPT_PIPELINE:
            cli->pipeline = optarg;
            break;
        case OPT_TOPIC:
            cli->topic = optarg;
            break;
        case OPT_PARTITION:
            cli->partition = optarg;
            break;
        case OPT_TO_OFFSET:
            cli->to_offset = optarg;
            break;
        case OPT_FROM:
            cli->from = optarg;
            break;
        case OPT_ID:
            cli->id = optarg;
            break;
        case OPT_FORCE:
            cli->force = true;
            break;
        case OPT_JSON:
            cli->json = true;
            break;
        case OPT_REFERENCE:
            cli->reference = true;
            break;
        case OPT_RESTART_SNAPSHOT:
            cli->restart_snapshot = true;
            break;
        case OPT_WRITE_OFFSET:
            cli->write_offset = optarg;
            break;
        case OPT_ALL_ERRORED:
            cli->all_errored = true;
            break;
        case OPT_ONLINE:
            cli->online = true;
            break;
        case OPT_WAIT_FOR_POSTGRES:
            cli->wait_for_postgres = true;
            break;
        case OPT_INSTANCE:
            cli->instance = optarg;
            break;
        case OPT_WAIT:
            cli->wait = true;
            break;
        case OPT_UNDO:
            cli->undo = true;
            break;
        case ':':
            return usage_error(cmd, "option '%s' needs a value%s", argv[optind - 1],
                               optopt == OPT_CONFIG ? " (the config file: -c FILE)" : "");
        default: {
            const char *arg = argv[optind - 1];
            const char *near = nearest_option(opts, arg);
            if (optopt && optopt < 256 && strncmp(arg, "--", 2) != 0)
                return usage_error(cmd, "unknown option '-%c'", optopt);
            if (near)
                return usage_error(cmd, "unknown option '%s' (did you mean '--%s'?)", arg, near);
            return usage_error(cmd, "unknown option '%s'", arg);
        }
        }
    }
    if (optind < argc && !cmd->operands)
        return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    cli->argc = argc - optind;
    cli->argv = argv + optind;
    if (sc_word_in(allowed, "c") && !cli->config && !cli->reference)
        return usage_error(cmd, "%s", "a config file is required: -c FILE (or SIDECAR_CONFIG)");
    return SC_EXIT_OK;
}

/* Loads the config or prints its errors; returns NULL on failure. */
static struct sc_config *load_config(const char *path)
{
    char err[8192];
    struct sc_config *cfg = NULL;
    if (sc_config_load(path, &sc_sinks, &cfg, err, sizeof(err)) != 0) {
        fputs(err, stderr);
        if (err[0] && err[strlen(err) - 1] != '\n')
            fputc('\n', stderr);
        return NULL;
    }
    sc_log_setup((enum sc_log_level)cfg->log.level, (enum sc_log_format)cfg->log.format);
    return cfg;
}

/* Parses the command line of cmd, loads its config if it takes one, and runs it. */
static int dispatch(int argc, char **argv, const struct sc_command *cmd)
{
    struct sc_cli cli;
    int rc = parse_cli(argc, argv, cmd, &cli);
    if (rc != SC_EXIT_OK)
        return rc;
    struct sc_config *cfg = NULL;
    if (sc_word_in(cmd->options, "c") && !cli.reference) {
        cfg = load_config(cli.config);
        if (!cfg)
            return SC_EXIT_USAGE;
    }
    rc = cmd->run(cfg, &cli);
    sc_config_free(cfg);
    return rc;
}

static int run_help(const struct sc_config *cfg, const struct sc_cli *cli);

static const struct sc_command cmd_help = {
    .name = "help",
    .summary = "Show help for a subcommand.",
    .usage = "[SUBCOMMAND]",
    .help = "",
    .options = "",
    .operands = true,
    .run = run_help,
};

static const struct sc_command *const commands[] = {
    &sc_cmd_run,   &sc_cmd_migrate, &sc_cmd_check_config, &sc_cmd_status, &sc_cmd_watch,
    &sc_cmd_reset, &sc_cmd_retry,   &sc_cmd_redrive,      &sc_cmd_pin,    &sc_cmd_unpin,
    &sc_cmd_move,  &sc_cmd_drain,   &sc_cmd_version,      &cmd_help,      NULL,
};

static void print_usage(FILE *out)
{
    fputs("usage: sidecar [SUBCOMMAND] [OPTIONS]\n\n"
          "Consumes Kafka partitions, checkpoints in PostgreSQL, and delivers each\n"
          "record exactly once in effect to a file, PostgreSQL table or HTTP endpoint.\n\n"
          "Subcommands (default: run):\n",
          out);
    for (const struct sc_command *const *c = commands; *c; c++)
        fprintf(out, "  %-13s %s\n", (*c)->name, (*c)->summary);
    fputs("\nCommon options:\n"
          "  -c, --config FILE  the JSON config (default: $SIDECAR_CONFIG)\n"
          "  -h, --help         help for a subcommand\n\n"
          "Exit codes: 0 ok, 1 runtime failure, 2 usage / invalid config / bad token.\n",
          out);
}

static const struct sc_command *find_command(const char *name)
{
    for (const struct sc_command *const *c = commands; *c; c++)
        if (strcmp((*c)->name, name) == 0)
            return *c;
    return NULL;
}

static int run_help(const struct sc_config *cfg, const struct sc_cli *cli)
{
    (void)cfg;
    if (cli->argc < 1) {
        print_usage(stdout);
        return SC_EXIT_OK;
    }
    if (cli->argc > 1)
        return usage_error(&cmd_help, "unexpected argument '%s'", cli->argv[1]);
    const struct sc_command *c = find_command(cli->argv[0]);
    if (!c)
        return usage_error(&cmd_help, "unknown subcommand '%s'", cli->argv[0]);
    print_command_help(stdout, c);
    return SC_EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        print_usage(stdout);
        return SC_EXIT_OK;
    }
    if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
        sc_print_version(stdout);
        return SC_EXIT_OK;
    }
    /* `sidecar -c FILE` means `sidecar run -c FILE`. */
    if (argc < 2 || argv[1][0] == '-') {
        if (argc < 2 && !getenv("SIDECAR_CONFIG")) {
            print_usage(stderr);
            return SC_EXIT_USAGE;
        }
        implied_run = true;
        return dispatch(argc, argv, &sc_cmd_run);
    }
    const struct sc_command *cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "sidecar: unknown subcommand '%s'\n", argv[1]);
        const char *best = NULL;
        for (const struct sc_command *const *c = commands; *c; c++)
            if (sc_edit_distance(argv[1], (*c)->name) <= 2)
                best = (*c)->name;
        if (best)
            fprintf(stderr, "Did you mean '%s'?\n", best);
        fputs("Run 'sidecar --help' for the list of subcommands.\n", stderr);
        return SC_EXIT_USAGE;
    }
    return dispatch(argc - 1, argv + 1, cmd);
}
