/*
 * sc_assign.c - the lease-mode ownership judgement (see sc_assign.h).
 */
#include "protocol/sc_assign.h"

#include <stdlib.h>
#include <string.h>

#include "base/sc_util.h"

enum sc_handoff_reason sc_handoff_reason_parse(const char *s)
{
    if (!s)
        return SC_HANDOFF_NONE;
    if (strcmp(s, "balance") == 0)
        return SC_HANDOFF_BALANCE;
    if (strcmp(s, "move") == 0)
        return SC_HANDOFF_MOVE;
    if (strcmp(s, "pin") == 0)
        return SC_HANDOFF_PIN;
    return SC_HANDOFF_NONE;
}

const char *sc_handoff_reason_name(enum sc_handoff_reason r)
{
    switch (r) {
    case SC_HANDOFF_BALANCE:
        return "balance";
    case SC_HANDOFF_MOVE:
        return "move";
    case SC_HANDOFF_PIN:
        return "pin";
    case SC_HANDOFF_NONE:
        break;
    }
    return NULL;
}

static bool same(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* Index of id among the live instances, or -1. */
static int inst_index(const struct sc_assign_in *in, const char *id)
{
    for (size_t i = 0; id && i < in->ninsts; i++)
        if (strcmp(in->insts[i].id, id) == 0)
            return (int)i;
    return -1;
}

static bool eligible(const struct sc_assign_in *in, const char *id)
{
    int i = inst_index(in, id);
    return i >= 0 && in->insts[i].eligible;
}

/* The eligible instance a free partition is reserved for (a released handoff), or NULL. */
static const char *reserved_for(const struct sc_assign_in *in, const struct sc_assign_part *p)
{
    if (p->owner || !p->handoff_to || p->handoff_ms >= in->reservation_ms ||
        !eligible(in, p->handoff_to))
        return NULL;
    return p->handoff_to;
}

/* The eligible instance a partition is pinned to, or NULL (a pin to a dead one is void). */
static const char *pinned_to(const struct sc_assign_in *in, const struct sc_assign_part *p)
{
    return p->pinned_to && eligible(in, p->pinned_to) ? p->pinned_to : NULL;
}

/* FNV-1a over the instance id, the topic and the partition: the rendezvous score. */
static uint64_t rendezvous(const char *me, const struct sc_assign_part *p)
{
    uint64_t h = 1469598103934665603ULL;
    const char *parts[2] = {me, p->topic};
    for (int k = 0; k < 2; k++) {
        for (const unsigned char *s = (const unsigned char *)parts[k]; *s; s++)
            h = (h ^ *s) * 1099511628211ULL;
        h = (h ^ 0xff) * 1099511628211ULL;
    }
    uint32_t n = (uint32_t)p->partition;
    for (int k = 0; k < 4; k++)
        h = (h ^ ((n >> (8 * k)) & 0xff)) * 1099511628211ULL;
    return h;
}

void sc_assign_plan(const struct sc_assign_in *in, struct sc_assign_out *out)
{
    size_t np = in->nparts, ni = in->ninsts;
    for (size_t k = 0; k < np; k++) {
        out->act[k] = SC_ACT_NONE;
        out->target[k] = NULL;
    }
    out->eligible = 0;
    out->share = 0;
    out->owned = 0;
    out->steals = 0;
    for (size_t i = 0; i < ni; i++)
        out->eligible += in->insts[i].eligible;

    int me = inst_index(in, in->me);
    bool me_ok = me >= 0 && in->insts[me].eligible;

    /*
     * Effective counts: what each instance will hold once every handoff under way is done:
     * held, minus what it was asked for (or must give to a pin), plus what it asked for,
     * was reserved or is pinned to it.  Judging by these, nobody reacts to the gap a
     * handoff in progress opens for a moment.
     */
    int *eff = sc_xcalloc(ni ? ni : 1, sizeof(*eff));
    for (size_t k = 0; k < np; k++) {
        const struct sc_assign_part *p = &in->parts[k];
        int o = inst_index(in, p->owner);
        const char *pin = pinned_to(in, p);
        const char *to = pin                                            ? pin
                         : p->handoff_to && eligible(in, p->handoff_to) ? p->handoff_to
                                                                        : NULL;
        int t = p->owner ? inst_index(in, to) : inst_index(in, reserved_for(in, p));
        if (p->owner && (same(to, p->owner) || !to))
            t = -1;
        if (o >= 0 && t < 0)
            eff[o]++;
        if (t >= 0)
            eff[t]++;
    }

    /* 1. What I hold: hand over what is pinned or moved elsewhere, or everything while I am
     * draining; answer balance requests. */
    for (size_t k = 0; k < np; k++) {
        const struct sc_assign_part *p = &in->parts[k];
        if (!same(p->owner, in->me))
            continue;
        const char *pin = pinned_to(in, p);
        const char *to = p->handoff_to && !same(p->handoff_to, in->me) ? p->handoff_to : NULL;
        if (!me_ok) {
            out->act[k] = SC_ACT_RELEASE;
            out->target[k] = pin ? pin : to && eligible(in, to) ? to : NULL;
            continue;
        }
        if (pin && !same(pin, in->me)) {
            out->act[k] = SC_ACT_RELEASE; /* counted as leaving already */
            out->target[k] = pin;
            continue;
        }
        if (!to)
            continue;
        int t = inst_index(in, to);
        if (t < 0 || !in->insts[t].eligible) {
            out->act[k] = SC_ACT_REFUSE; /* gone or draining: it was not counted */
            continue;
        }
        if (!pin &&
            (p->reason == SC_HANDOFF_MOVE || p->reason == SC_HANDOFF_PIN || eff[me] >= eff[t])) {
            out->act[k] = SC_ACT_RELEASE;
            out->target[k] = to;
        } else {
            /* Pinned here, or granting every request would leave me below the requester
             * (several asked at once): keep it. */
            out->act[k] = SC_ACT_REFUSE;
            eff[me]++;
            eff[t]--;
        }
    }
    if (me >= 0)
        out->owned = eff[me];
    if (!me_ok) {
        free(eff);
        return;
    }

    int n = out->eligible, total = (int)np;
    int floor_share = total / n, share = (total + n - 1) / n;
    out->share = share;
    int mine = eff[me];

    /* 2. Take what is reserved or pinned for me, then free partitions: up to the floor of my
     * share, and one more while enough are left for the others to reach theirs. */
    size_t nfree = 0;
    size_t *cand = sc_xcalloc(np ? np : 1, sizeof(*cand));
    uint64_t *score = sc_xcalloc(np ? np : 1, sizeof(*score));
    for (size_t k = 0; k < np; k++) {
        const struct sc_assign_part *p = &in->parts[k];
        if (p->owner)
            continue;
        const char *res = reserved_for(in, p), *pin = pinned_to(in, p);
        if (same(res, in->me) || (!res && same(pin, in->me))) {
            out->act[k] = SC_ACT_TAKE; /* counted in mine already */
        } else if (!res && !pin) {
            cand[nfree] = k;
            score[nfree++] = rendezvous(in->me, p);
        }
    }
    /* Highest score first (insertion sort: stable and small). */
    for (size_t a = 1; a < nfree; a++) {
        size_t ck = cand[a];
        uint64_t cs = score[a];
        size_t b = a;
        for (; b > 0 && score[b - 1] < cs; b--) {
            cand[b] = cand[b - 1];
            score[b] = score[b - 1];
        }
        cand[b] = ck;
        score[b] = cs;
    }
    int deficit = 0; /* what the others still need to reach the floor */
    for (size_t i = 0; i < ni; i++)
        if ((int)i != me && in->insts[i].eligible && eff[i] < floor_share)
            deficit += floor_share - eff[i];
    size_t taken = 0;
    while (taken < nfree &&
           (mine < floor_share || (mine < share && (int)(nfree - taken) > deficit))) {
        out->act[cand[taken++]] = SC_ACT_TAKE;
        mine++;
    }
    bool free_left = taken < nfree;
    free(cand);
    free(score);

    /* 3. Nothing free: ask the most loaded for one while it holds two more than I do. */
    bool *done = sc_xcalloc(ni, sizeof(*done));
    while (!free_left) {
        int v = -1;
        for (size_t i = 0; i < ni; i++)
            if ((int)i != me && in->insts[i].eligible && !done[i] &&
                (v < 0 || eff[i] > eff[v] ||
                 (eff[i] == eff[v] && strcmp(in->insts[i].id, in->insts[v].id) < 0)))
                v = (int)i;
        if (v < 0 || eff[v] < mine + 2)
            break;
        size_t best = np;
        for (size_t k = 0; k < np; k++) {
            const struct sc_assign_part *p = &in->parts[k];
            if (!same(p->owner, in->insts[v].id) || p->handoff_to || pinned_to(in, p) ||
                out->act[k] != SC_ACT_NONE)
                continue;
            if (best == np || p->held_ms > in->parts[best].held_ms)
                best = k;
        }
        if (best == np) {
            done[v] = true; /* nothing of V's may move: try the next one */
            continue;
        }
        out->act[best] = SC_ACT_REQUEST;
        out->target[best] = in->insts[v].id;
        out->steals++;
        eff[v]--;
        mine++;
    }
    free(done);
    if (!in->may_steal)
        for (size_t k = 0; k < np; k++)
            if (out->act[k] == SC_ACT_REQUEST) {
                out->act[k] = SC_ACT_NONE;
                out->target[k] = NULL;
            }
    free(eff);
}
