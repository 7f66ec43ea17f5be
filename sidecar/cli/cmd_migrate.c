/*
 * cmd_migrate.c - `sidecar migrate`: applies the missing sql/ migrations
 * (db/sc_migrate.c) and says where the schema stands.
 */

#include <stdio.h>

#include <libpq-fe.h>

#include "base/sc_log.h"
#include "base/sc_util.h"
#include "cli/sc_cli.h"
#include "config/sc_config.h"
#include "db/sc_migrate.h"
#include "db/sc_pg.h"
#include "db/sc_pooling.h"

static int run_migrate(const struct sc_config *cfg, const struct sc_cli *cli)
{
    (void)cli;
    int result = SC_EXIT_FAILURE;
    char err[1024];
    const char *schema = cfg->postgres.schema;

    PGconn *conn = sc_pg_connect(cfg->postgres.dsn, "kafka-sidecar/migrate",
                                 cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (!conn) {
        fprintf(stderr, "sidecar migrate: %s\n", err);
        goto out;
    }
    /* Migrations hold a session advisory lock across transactions. */
    enum sc_pooling pooling = sc_pooling_check(cfg->postgres.dsn, "kafka-sidecar/migrate",
                                               cfg->postgres.connect_timeout_ms, err, sizeof(err));
    if (pooling == SC_POOLING_SHARED) {
        fprintf(stderr, "sidecar migrate: %s\n", err);
        goto out;
    }
    if (pooling == SC_POOLING_UNKNOWN)
        sc_warn(NULL, "%s", err);
    int applied = sc_migrate_apply(conn, schema, err, sizeof(err));
    if (applied < 0) {
        fprintf(stderr, "sidecar migrate: %s\n", err);
        goto out;
    }
    int version = sc_migrate_current_version(conn, schema, err, sizeof(err));
    if (version < 0) {
        fprintf(stderr, "sidecar migrate: %s\n", err);
        goto out;
    }
    if (applied > 0)
        printf("schema \"%s\" is at version %d (applied %d migration%s)\n", schema, version,
               applied, applied == 1 ? "" : "s");
    else
        printf("schema \"%s\" is up to date (version %d)\n", schema, version);
    if (version > sc_migrate_latest_version())
        sc_warn(NULL,
                "schema \"%s\" is at version %d, newer than this sidecar knows (%d): "
                "it was migrated by a newer release",
                schema, version, sc_migrate_latest_version());
    fflush(stdout);
    result = SC_EXIT_OK;
out:
    PQfinish(conn);
    return result;
}

const struct sc_command sc_cmd_migrate = {
    .name = "migrate",
    .summary = "Create or upgrade the checkpoint schema in PostgreSQL.",
    .usage = "-c FILE",
    .help = "Applies the missing sql/NNN_*.sql migrations in order, each in a transaction,\n"
            "under an advisory lock.  Safe to run repeatedly and concurrently.\n",
    .options = "c",
    .run = run_migrate,
};
