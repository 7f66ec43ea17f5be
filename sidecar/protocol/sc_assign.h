/*
 * sc_assign - who should own which partition in lease mode ("assignment":
 * "lease"): the judgement each instance makes after every renewal, as a pure
 * function of what PostgreSQL said (docs/design.md §10).
 *
 * Every live, non-draining lease-mode instance that sees partitions in the
 * metadata is *eligible* (lease_tick() says which); with N of them
 * and P partitions, the fair share is ceil(P/N).  Counts are *effective*:
 * what each instance will hold once the handoffs under way are done (held,
 * minus what it was asked for or must give to a pin, plus what it asked for
 * or was reserved), so nobody reacts to the gap a handoff opens for a moment.
 * An instance
 *   - hands over, after its batch in flight, what an operator pinned to or
 *     moved to another eligible instance, and everything while draining;
 *   - grants a balance request of instance T unless that would leave it
 *     below T (several asked at once), else refuses it;
 *   - takes what is reserved or pinned for it, then free partitions (no live
 *     lease, not reserved or pinned for someone else): up to floor(P/N), and
 *     one more while enough stay free for the others to reach the floor,
 *     preferring those whose rendezvous hash with its id ranks highest (so
 *     instances rarely race for the same ones);
 *   - when nothing is free, asks the most loaded eligible instance V for its
 *     longest-held partition while V holds at least two more than it does.
 * "Two more" is the hysteresis: a move always narrows a gap, so nothing
 * ping-pongs; at rest every eligible instance holds floor(P/N) or
 * ceil(P/N) partitions (pins aside), and a starting or stopping instance
 * moves only what it must.  tests/unit/check_assign.c proves it for
 * N = 1..5 and P = 1..64, with instances acting one after the other and
 * all at once from the same stale view.
 *
 * @locality any thread; no I/O.
 */
#ifndef SC_ASSIGN_H
#define SC_ASSIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Why a handoff was asked for (leases.handoff_reason). */
enum sc_handoff_reason {
    SC_HANDOFF_NONE,
    SC_HANDOFF_BALANCE, /* an instance below its share asked */
    SC_HANDOFF_MOVE,    /* move_partition() */
    SC_HANDOFF_PIN,     /* pin_partition() */
};

/* A live instance of the pipeline. */
struct sc_assign_inst {
    const char *id;
    bool eligible; /* lease mode and not draining */
};

/* A partition of the pipeline's topics, as the lease table has it. */
struct sc_assign_part {
    const char *topic;
    int32_t partition;
    const char *owner;      /* the live holder, NULL when free, expired or released */
    const char *pinned_to;  /* pin_partition(), or NULL */
    const char *handoff_to; /* owner live: a request; else a reservation; NULL: none */
    enum sc_handoff_reason reason;
    int64_t handoff_ms; /* age of the request or reservation */
    int64_t held_ms;    /* how long the owner has held it */
};

struct sc_assign_in {
    const char *me;
    const struct sc_assign_inst *insts; /* every live instance, me included */
    size_t ninsts;
    const struct sc_assign_part *parts; /* every partition of the pipeline's topics */
    size_t nparts;
    int64_t reservation_ms; /* a reservation older than this is void (the lease TTL) */
    bool may_steal;         /* hysteresis: ask others only when this is set */
};

enum sc_assign_act {
    SC_ACT_NONE,
    SC_ACT_TAKE,    /* acquire it */
    SC_ACT_REQUEST, /* ask its owner (target) to hand it over */
    SC_ACT_RELEASE, /* hand it over (to target, or to anyone when NULL) */
    SC_ACT_REFUSE,  /* decline the handoff request on it */
};

struct sc_assign_out {
    enum sc_assign_act *act; /* nparts entries, filled in */
    const char **target;     /* nparts entries, filled in */
    int eligible;            /* N */
    int share;               /* ceil(P/N), 0 when this instance is not eligible */
    int owned;               /* partitions this instance holds once its releases are done */
    int steals;              /* requests it wants to make (made only with may_steal) */
};

/* The plan for in->me (see the top of this file).  Deterministic. */
void sc_assign_plan(const struct sc_assign_in *in, struct sc_assign_out *out);

/* "balance", "move", "pin" -> the reason (NONE for anything else), and back. */
enum sc_handoff_reason sc_handoff_reason_parse(const char *s);
const char *sc_handoff_reason_name(enum sc_handoff_reason r);

#endif
