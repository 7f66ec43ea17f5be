/*
 * scx_chaos.c - the crash tests' kill loop (see scx_chaos.h).
 */
#include "scx_chaos.h"

#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void produce_seq(struct scx_chaos *c, int64_t first, int64_t count)
{
    hx_produce_seq(c->e->mock.bootstrap, c->topic, c->nparts, first, count);
}

void scx_chaos_init(struct scx_chaos *c, struct scx_env *e, struct scx_inst *in, int ninst,
                    int nparts)
{
    *c = (struct scx_chaos){.e = e,
                            .in = in,
                            .ninst = ninst,
                            .topic = "orders",
                            .produce = produce_seq,
                            .nparts = nparts,
                            .chunks = 10,
                            .per_chunk = 500,
                            .min_kills = 20};
}

/* The log scx_start() gives in (static buffer). */
static const char *inst_log(const struct scx_chaos *c, const struct scx_inst *in)
{
    static char log[700];
    snprintf(log, sizeof(log), "%s/%s.log", c->e->dir, in->name);
    return log;
}

/* Starts in (failpoints may be NULL), remembering how many leases its log shows already. */
static void inst_start(struct scx_chaos *c, struct scx_inst *in, const char *failpoints)
{
    in->leases_before = scx_log_count(inst_log(c, in), "lease acquired");
    in->pid = scx_start(c->e, in->cfg, in->name, failpoints);
}

/* Whether in has acquired a lease since it was started. */
static bool inst_working(const struct scx_chaos *c, const struct scx_inst *in)
{
    return scx_log_count(inst_log(c, in), "lease acquired") > in->leases_before;
}

/* A random instance, among those working when any is. */
static struct scx_inst *pick_victim(struct scx_chaos *c, bool *working)
{
    int idx[16], n = 0;
    for (int i = 0; i < c->ninst && n < 16; i++)
        if (inst_working(c, &c->in[i]))
            idx[n++] = i;
    *working = n > 0;
    return &c->in[n > 0 ? idx[rand() % n] : rand() % c->ninst];
}

void scx_chaos_start(struct scx_chaos *c, const struct scx_opts *o)
{
    for (int i = 0; i < c->ninst; i++)
        snprintf(c->in[i].cfg, sizeof(c->in[i].cfg), "%s", scx_config(c->e, c->in[i].name, o));
    c->pipeline = o->pipeline ? o->pipeline : "p1";
    scx_migrate(c->in[0].cfg);
    for (int i = 0; i < c->ninst; i++)
        inst_start(c, &c->in[i], c->in[i].failpoints);
}

void scx_chaos_restart_dead(struct scx_chaos *c, bool failpoints)
{
    for (int i = 0; i < c->ninst; i++) {
        struct scx_inst *in = &c->in[i];
        if (hx_pid_alive(in->pid))
            continue;
        hx_wait(in->pid, 1000);
        c->self_kills++;
        inst_start(c, in, failpoints ? in->failpoints : NULL);
    }
}

void scx_chaos_kill_one(struct scx_chaos *c)
{
    bool working;
    struct scx_inst *victim = pick_victim(c, &working);
    kill(victim->pid, SIGKILL);
    hx_wait(victim->pid, 5000);
    c->kills++;
    c->kills_working += working;
    usleep((useconds_t)(rand() % 800) * 1000);
    inst_start(c, victim, victim->failpoints);
}

void scx_chaos_kill(struct scx_chaos *c)
{
    int chunk = 0;
    while (chunk < c->chunks || c->kills + c->self_kills < c->min_kills) {
        if (chunk < c->chunks) {
            c->produce(c, c->produced, c->per_chunk);
            c->produced += c->per_chunk;
            chunk++;
        }
        usleep((useconds_t)(300 + rand() % 2200) * 1000);
        scx_chaos_restart_dead(c, true);
        scx_chaos_kill_one(c);
    }
}

void scx_chaos_settle(struct scx_chaos *c)
{
    bool done = false;
    for (int round = 0; round < 60 && !done; round++) {
        scx_chaos_restart_dead(c, false);
        done = scx_wait_committed(c->e->conn, c->pipeline, c->topic, c->nparts, c->produced, 5000);
    }
    if (!done) {
        for (int i = 0; i < c->ninst; i++)
            fprintf(stderr, "---- %s log:\n%s\n", c->in[i].name,
                    scx_log_tail(inst_log(c, &c->in[i]), 6000));
        char *cp = hx_pg_value(c->e->conn,
                               "SELECT string_agg(format('%s: committed %s pending %s..%s state %s "
                               "epoch %s', partition, committed_offset, pending_first_offset, "
                               "pending_last_offset, state, epoch), E'\\n' ORDER BY partition) "
                               "FROM sidecar.checkpoints",
                               0, NULL);
        fprintf(stderr, "---- checkpoints:\n%s\n", cp);
        free(cp);
    }
    ck_assert_msg(done, "not every partition reached offset %" PRId64 " in time", c->produced);
    for (int i = 0; i < c->ninst; i++)
        scx_stop(c->in[i].pid, 15000);
}

void scx_chaos_backlog(struct scx_chaos *c, int64_t count, const char *failpoints0)
{
    c->produce(c, c->produced, count);
    c->produced += count;
    c->backlog_rounds++;
    for (int i = 0; i < c->ninst; i++)
        inst_start(c, &c->in[i], i == 0 && failpoints0 ? failpoints0 : c->in[i].failpoints);
    scx_chaos_settle(c);
}

long long scx_chaos_replays(const struct scx_chaos *c)
{
    return hx_pg_int(c->e->conn, "SELECT count(*) FROM sidecar.events WHERE kind = 'replay'", 0,
                     NULL);
}

bool scx_chaos_replayed(struct scx_chaos *c, void *arg)
{
    (void)arg;
    return scx_chaos_replays(c) > 0;
}

bool scx_chaos_until(struct scx_chaos *c, bool (*seen)(struct scx_chaos *c, void *arg), void *arg,
                     int64_t count, const char *failpoints0)
{
    bool ok = seen(c, arg);
    while (!ok && c->backlog_rounds < SCX_CHAOS_MAX_ROUNDS) {
        scx_chaos_backlog(c, count, failpoints0);
        ok = seen(c, arg);
    }
    return ok;
}
