/*
 * sc_parallel - runs a few blocking calls at once: the calling thread and
 * up to SC_PARALLEL_MAX - 1 helper threads take the items of one
 * sc_parallel_run() between them, and it returns when every item is done.
 * Made for calls that mostly wait in the kernel (the file sink's
 * fdatasync of several partitions' files: concurrent syncs of one
 * filesystem share its journal commits), not for CPU work.
 *
 * The helpers start at the first run that has two items or more, so an
 * owner that never needs them has none.  One owner thread runs it; the
 * items' calls must not touch each other's state.
 */
#ifndef SC_PARALLEL_H
#define SC_PARALLEL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#define SC_PARALLEL_MAX 4 /* calls at once, the caller's included */

struct sc_parallel {
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    pthread_t helpers[SC_PARALLEL_MAX - 1];
    int nhelpers; /* started */
    bool tried;   /* to start them */
    bool stop;
    /* The run in progress, under lock: items [next, n) are not taken yet, pending not
     * finished. */
    void (*fn)(void *item);
    char *items;
    size_t size, n, next, pending;
};

void sc_parallel_init(struct sc_parallel *pp);
/* Stops and joins the helpers. */
void sc_parallel_destroy(struct sc_parallel *pp);

/*
 * Calls fn on each of the n items (each size bytes, at items) and returns
 * when all calls have returned.  The calls run in no set order; with one
 * item, or if no helper could be started, all in the calling thread.
 */
void sc_parallel_run(struct sc_parallel *pp, void (*fn)(void *item), void *items, size_t size,
                     size_t n);

#endif
