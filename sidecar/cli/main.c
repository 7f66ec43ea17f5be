/*
 * main.c - the `sidecar` command line: parses arguments and dispatches to a
 * subcommand.  Nothing else lives here.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_migrate.h"

struct command {
    const char *name;
    const char *summary;
    const char *usage; /* options after "sidecar NAME" */
    const char *help;  /* longer description */
    int (*run)(int argc, char **argv, const struct command *cmd);
};

static const struct command commands[];

static void print_command_help(FILE *out, const struct command *cmd)
{
    fprintf(out, "usage: sidecar %s %s\n\n%s\n", cmd->name, cmd->usage, cmd->summary);
    if (cmd->help && *cmd->help)
        fprintf(out, "\n%s", cmd->help);
}

static int usage_error(const struct command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const struct command *cmd, const char *fmt, ...)
{
    fprintf(stderr, "sidecar %s: ", cmd->name);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: sidecar %s %s\nTry 'sidecar %s --help'.\n", cmd->name, cmd->usage,
            cmd->name);
    return SC_EXIT_USAGE;
}

/*
 * Parses the options every subcommand shares plus the extra ones in opts.
 * Unknown options and stray arguments are usage errors (exit 2).
 */
struct cli {
    const char *config;
    const char *pipeline;
    const char *topic;
    const char *partition;
    const char *to_offset;
    const char *from;
    const char *id;
    bool force;
    bool json;
    bool reference;
    bool restart_snapshot;
};

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
};

/* Is name one of the space-separated words of list? */
static bool word_in(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    return false;
}

static int parse_cli(int argc, char **argv, const struct command *cmd, const char *allowed,
                     struct cli *cli)
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
        {NULL, 0, NULL, 0},
    };
    /* Only the options this subcommand accepts are offered to getopt. */
    struct option opts[SC_ARRAY_LEN(all)];
    size_t n = 0;
    for (size_t i = 0; all[i].name; i++)
        if (all[i].val == OPT_HELP || (all[i].val == OPT_CONFIG && word_in(allowed, "c")) ||
            (all[i].val >= 256 && word_in(allowed, all[i].name)))
            opts[n++] = all[i];
    opts[n] = (struct option){NULL, 0, NULL, 0};

    memset(cli, 0, sizeof(*cli));
    cli->config = getenv("SIDECAR_CONFIG");
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, word_in(allowed, "c") ? "+hc:" : "+h", opts, NULL)) != -1) {
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
        case ':':
            return usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (word_in(allowed, "c") && !cli->config && !cli->reference)
        return usage_error(cmd, "%s", "a config file is required: -c FILE (or SIDECAR_CONFIG)");
    return SC_EXIT_OK;
}

/* Loads the config or prints its errors; returns NULL on failure. */
static struct sc_config *load_config(const char *path)
{
    char err[8192];
    struct sc_config *cfg = NULL;
    if (sc_config_load(path, &cfg, err, sizeof(err)) != 0) {
        fputs(err, stderr);
        if (err[0] && err[strlen(err) - 1] != '\n')
            fputc('\n', stderr);
        return NULL;
    }
    sc_log_setup((enum sc_log_level)cfg->log.level, (enum sc_log_format)cfg->log.format);
    return cfg;
}

/* Runs fn on the loaded config of a subcommand that takes only -c and the allowed options. */
static int with_config(int argc, char **argv, const struct command *cmd, const char *allowed,
                       int (*fn)(const struct sc_config *, const struct cli *))
{
    struct cli cli;
    int rc = parse_cli(argc, argv, cmd, allowed, &cli);
    if (rc != SC_EXIT_OK)
        return rc;
    struct sc_config *cfg = load_config(cli.config);
    if (!cfg)
        return SC_EXIT_USAGE;
    rc = fn(cfg, &cli);
    sc_config_free(cfg);
    return rc;
}

static int do_run(const struct sc_config *cfg, const struct cli *cli)
{
    (void)cli;
    return sc_cmd_run(cfg);
}

static int do_migrate(const struct sc_config *cfg, const struct cli *cli)
{
    (void)cli;
    return sc_cmd_migrate(cfg);
}

static int do_status(const struct sc_config *cfg, const struct cli *cli)
{
    return sc_cmd_status(cfg, cli->json);
}

static int do_watch(const struct sc_config *cfg, const struct cli *cli)
{
    return sc_cmd_watch(cfg, cli->from, cli->pipeline, cli->partition, cli->restart_snapshot);
}

static int do_reset(const struct sc_config *cfg, const struct cli *cli)
{
    return sc_cmd_reset(cfg, cli->pipeline, cli->topic, cli->partition, cli->to_offset, cli->force);
}

static int do_redrive(const struct sc_config *cfg, const struct cli *cli)
{
    return sc_cmd_redrive(cfg, cli->pipeline, cli->id);
}

static int cmd_run(int argc, char **argv, const struct command *cmd)
{
    return with_config(argc, argv, cmd, "c", do_run);
}

static int cmd_migrate(int argc, char **argv, const struct command *cmd)
{
    return with_config(argc, argv, cmd, "c", do_migrate);
}

static int cmd_status(int argc, char **argv, const struct command *cmd)
{
    return with_config(argc, argv, cmd, "c json", do_status);
}

static int cmd_watch(int argc, char **argv, const struct command *cmd)
{
    return with_config(argc, argv, cmd, "c from pipeline partition restart-from-snapshot",
                       do_watch);
}

static int cmd_reset(int argc, char **argv, const struct command *cmd)
{
    return with_config(argc, argv, cmd, "c pipeline topic partition to-offset force", do_reset);
}

static int cmd_redrive(int argc, char **argv, const struct command *cmd)
{
    return with_config(argc, argv, cmd, "c pipeline id", do_redrive);
}

static int cmd_check_config(int argc, char **argv, const struct command *cmd)
{
    struct cli cli;
    int rc = parse_cli(argc, argv, cmd, "c reference", &cli);
    if (rc != SC_EXIT_OK)
        return rc;
    if (cli.reference) {
        char *md = sc_config_reference_markdown();
        fputs(md, stdout);
        free(md);
        return SC_EXIT_OK;
    }
    struct sc_config *cfg = load_config(cli.config);
    if (!cfg)
        return SC_EXIT_USAGE;
    json_t *j = sc_config_to_json(cfg);
    json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(j);
    fprintf(stderr, "%s: configuration is valid (%zu pipeline%s)\n", cli.config, cfg->npipelines,
            cfg->npipelines == 1 ? "" : "s");
    sc_config_free(cfg);
    return SC_EXIT_OK;
}

static int cmd_version(int argc, char **argv, const struct command *cmd)
{
    struct cli cli;
    int rc = parse_cli(argc, argv, cmd, "", &cli);
    if (rc != SC_EXIT_OK)
        return rc;
    sc_print_version(stdout);
    return SC_EXIT_OK;
}

static int cmd_help(int argc, char **argv, const struct command *cmd);

static const struct command commands[] = {
    {"run", "Consume the configured pipelines and deliver them to their sinks.", "-c FILE",
     "Runs until SIGTERM/SIGINT: then stops fetching, commits in-flight batches,\n"
     "releases its leases and exits 0.  A second signal exits at once (safe: a\n"
     "pending checkpoint makes that a replay, never a loss).\n",
     cmd_run},
    {"migrate", "Create or upgrade the checkpoint schema in PostgreSQL.", "-c FILE",
     "Applies the missing sql/NNN_*.sql migrations in order, each in a transaction,\n"
     "under an advisory lock.  Safe to run repeatedly and concurrently.\n",
     cmd_migrate},
    {"check-config", "Validate a config file and print the effective config.",
     "-c FILE | --reference",
     "Prints the configuration with defaults filled in and secrets masked.\n"
     "--reference prints every key with its type, default and range (Markdown).\n",
     cmd_check_config},
    {"status", "Show every partition: owner, epoch, committed offset, lag, pending.",
     "-c FILE [--json]",
     "A table of <schema>.partition_status: lease owner and epoch (LEASE live or\n"
     "expired), the committed offset (the next offset to deliver), LAG (from the\n"
     "owner's last watermark sample; - until sampled), the pending batch and how\n"
     "long it has been pending, the state, whether it is paused, and the error.\n"
     "--json prints the same rows as a JSON array of objects, with every column.\n",
     cmd_status},
    {"watch", "Print checkpoint events as they commit, one JSON object per line.",
     "-c FILE [--from TOKEN] [--pipeline P] [--partition TOPIC:N] [--restart-from-snapshot]",
     "Without --from, first prints the current checkpoints (\"kind\":\"snapshot\"),\n"
     "then every event as its transaction commits, forever.  Every line carries\n"
     "\"token\": pass it to --from to resume exactly after that line (with the same\n"
     "--pipeline / --partition).  Events are never missed or repeated, also across\n"
     "PostgreSQL reconnects, which happen by themselves.\n"
     "\n"
     "Exit codes: 0 on SIGINT / SIGTERM; 2 for a malformed token, a token issued for\n"
     "another filter, or an expired one (its events were compacted away: add\n"
     "--restart-from-snapshot to start again from the current checkpoints).\n",
     cmd_watch},
    {"reset", "Move a partition's checkpoint (clears an error state).",
     "-c FILE --pipeline P --topic T --partition N --to-offset X|earliest|latest [--force]",
     "Sets the partition's committed offset (the next offset to deliver) to X, or\n"
     "to Kafka's earliest (log start) or latest (log end) offset; drops a pending\n"
     "batch (it is not replayed), clears the error state and writes a 'reset'\n"
     "event.  Same as SELECT * FROM <schema>.reset_checkpoint(...) in psql.\n"
     "Refuses (exit 1) while another instance holds a live lease on the partition\n"
     "unless --force is given; a running owner picks the change up by itself.\n"
     "\n"
     "Output already written stays; delivery continues from X at the sink's\n"
     "committed_write_offset, so moving back re-delivers records:\n"
     "  file:     bytes already written stay; new output continues at\n"
     "            committed_write_offset (moving back appends the records again).\n"
     "  http:     re-sent batches carry the same Idempotency-Key for the same\n"
     "            offsets, so a de-duplicating receiver ignores re-sent ranges\n"
     "            (batch boundaries can differ: de-duplicate by offset to be safe).\n"
     "  postgres: re-delivered rows hit existing keys: with mode insert they become\n"
     "            dead letters; use upsert or insert_ignore, or delete the rows first.\n"
     "  stdout:   printed again.\n"
     "Moving forward skips records: they are never delivered.\n",
     cmd_reset},
    {"redrive", "Re-send dead-lettered records through the pipeline's sink.",
     "-c FILE --pipeline P [--id N]",
     "Sends the pipeline's dead letters with status 'new' (or only --id N) again,\n"
     "each record alone under its own Idempotency-Key, and marks the delivered ones\n"
     "status 'redriven'.  Failures stay 'new' with attempts + 1 and the new error.\n"
     "Exit 0 when all went through, 1 when some failed or a server was unreachable.\n",
     cmd_redrive},
    {"version", "Print the version and the library versions.", "", "", cmd_version},
    {"help", "Show help for a subcommand.", "[SUBCOMMAND]", "", cmd_help},
    {NULL, NULL, NULL, NULL, NULL},
};

static void print_usage(FILE *out)
{
    fputs("usage: sidecar [SUBCOMMAND] [OPTIONS]\n\n"
          "Consumes Kafka partitions, checkpoints in PostgreSQL, and delivers each\n"
          "record exactly once in effect to a file, PostgreSQL table or HTTP endpoint.\n\n"
          "Subcommands (default: run):\n",
          out);
    for (const struct command *c = commands; c->name; c++)
        fprintf(out, "  %-13s %s\n", c->name, c->summary);
    fputs("\nCommon options:\n"
          "  -c, --config FILE  the JSON config (default: $SIDECAR_CONFIG)\n"
          "  -h, --help         help for a subcommand\n\n"
          "Exit codes: 0 ok, 1 runtime failure, 2 usage / invalid config / bad token.\n",
          out);
}

static const struct command *find_command(const char *name)
{
    for (const struct command *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static int cmd_help(int argc, char **argv, const struct command *cmd)
{
    if (argc < 2) {
        print_usage(stdout);
        return SC_EXIT_OK;
    }
    const struct command *c = find_command(argv[1]);
    if (!c)
        return usage_error(cmd, "unknown subcommand '%s'", argv[1]);
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
        return cmd_run(argc, argv, find_command("run"));
    }
    const struct command *cmd = find_command(argv[1]);
    if (!cmd) {
        fprintf(stderr, "sidecar: unknown subcommand '%s'\n", argv[1]);
        const char *best = NULL;
        for (const struct command *c = commands; c->name; c++)
            if (sc_edit_distance(argv[1], c->name) <= 2)
                best = c->name;
        if (best)
            fprintf(stderr, "Did you mean '%s'?\n", best);
        fputs("Run 'sidecar --help' for the list of subcommands.\n", stderr);
        return SC_EXIT_USAGE;
    }
    return cmd->run(argc - 1, argv + 1, cmd);
}
