/*
 * sc_pick - chooses the cheaper of two ways of doing the same job by what
 * each has cost lately, measured, for jobs of about the same size.
 *
 * Used by the postgres sink to choose per batch between binary COPY (least
 * server CPU per row, three round trips) and a pipelined INSERT (one round
 * trip, more CPU per row): which one wins depends on the batch size, the
 * connection's round-trip time and how loaded the server is, so it is
 * measured on the connection rather than configured.
 *
 * Jobs fall into size classes (units 1-3, 4-15, 16-63, ... a factor of 4
 * each).  Per class and way it keeps the cost per unit (an exponentially
 * weighted mean).  A class first takes the preferred way SC_PICK_WARMUP
 * times and the other one once; after that it takes the preferred way unless the other one
 * costs less by more than margin (so that noise in the measurements, such
 * as a server checkpoint during a few jobs, does not flip the choice), and
 * now and then the other one, so that an estimate which went stale (the
 * server got busier, the network slower) is corrected: first every
 * explore_every-th job of the class; each time the other way proves dearer
 * again, half as often, down to every SC_PICK_BACKOFF * explore_every-th
 * job; when the choice changes, every explore_every-th again.  (Exploring
 * the dearer way costs what it costs: with the postgres sink, 1 batch in 64
 * through the pipelined INSERT was 2-3 % more server CPU per row.)  Failed
 * or atypical jobs are simply not observed.
 *
 * @locality one thread (the owner of the struct); no locking.
 */
#ifndef SC_PICK_H
#define SC_PICK_H

#include <stddef.h>
#include <stdint.h>

#define SC_PICK_WAYS    2
#define SC_PICK_CLASSES 8
#define SC_PICK_WARMUP  2
#define SC_PICK_BACKOFF 16

struct sc_pick_way {
    double ns_per_unit; /* weighted mean; meaningless while samples == 0 */
    uint32_t samples;
};

struct sc_pick {
    struct sc_pick_way way[SC_PICK_CLASSES][SC_PICK_WAYS];
    uint32_t since[SC_PICK_CLASSES];    /* jobs of the class since it last explored */
    uint32_t interval[SC_PICK_CLASSES]; /* explores every interval-th job */
    uint32_t explore_every;             /* >= 2: the first interval */
    int prefer;                         /* the way taken unless the other is clearly cheaper */
    double margin;                      /* "clearly": by more than this fraction */
};

void sc_pick_init(struct sc_pick *p, uint32_t explore_every, int prefer, double margin);
/* The size class of a job of n units (n >= 1). */
int sc_pick_class(size_t n);
/* The way (0 or 1) to do a job of n units now. */
int sc_pick_way(struct sc_pick *p, size_t n);
/* A job of n units done way w took ns nanoseconds. */
void sc_pick_observe(struct sc_pick *p, int w, size_t n, int64_t ns);
/* The way currently believed cheaper for n units (-1 while a way has no samples). */
int sc_pick_best(const struct sc_pick *p, size_t n);

#endif
