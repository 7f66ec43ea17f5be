/*
 * sc_parallel.c - a run's items taken by the caller and its helpers (see sc_parallel.h).
 */
#include "base/sc_parallel.h"

#include "base/sc_log.h"

/* Takes and runs items of the current run until none is left; called and returns with the
 * lock held. */
static void take_items(struct sc_parallel *pp)
{
    while (pp->next < pp->n) {
        char *item = pp->items + pp->next++ * pp->size;
        void (*fn)(void *) = pp->fn;
        pthread_mutex_unlock(&pp->lock);
        fn(item);
        pthread_mutex_lock(&pp->lock);
        if (--pp->pending == 0)
            pthread_cond_signal(&pp->done);
    }
}

static void *helper_main(void *arg)
{
    struct sc_parallel *pp = arg;
    pthread_mutex_lock(&pp->lock);
    while (!pp->stop) {
        if (pp->next < pp->n)
            take_items(pp);
        else
            pthread_cond_wait(&pp->work, &pp->lock);
    }
    pthread_mutex_unlock(&pp->lock);
    return NULL;
}

void sc_parallel_init(struct sc_parallel *pp)
{
    *pp = (struct sc_parallel){0};
    pthread_mutex_init(&pp->lock, NULL);
    pthread_cond_init(&pp->work, NULL);
    pthread_cond_init(&pp->done, NULL);
}

void sc_parallel_destroy(struct sc_parallel *pp)
{
    pthread_mutex_lock(&pp->lock);
    pp->stop = true;
    pthread_cond_broadcast(&pp->work);
    pthread_mutex_unlock(&pp->lock);
    for (int i = 0; i < pp->nhelpers; i++)
        pthread_join(pp->helpers[i], NULL);
    pp->nhelpers = 0;
    pthread_mutex_destroy(&pp->lock);
    pthread_cond_destroy(&pp->work);
    pthread_cond_destroy(&pp->done);
}

static void start_helpers(struct sc_parallel *pp)
{
    while (pp->nhelpers < SC_PARALLEL_MAX - 1) {
        int rc = pthread_create(&pp->helpers[pp->nhelpers], NULL, helper_main, pp);
        if (rc != 0) {
            /* The calls still run, fewer at once. */
            sc_warn(NULL, "could not start a helper thread (%d running): error %d", pp->nhelpers,
                    rc);
            break;
        }
        pp->nhelpers++;
    }
}

void sc_parallel_run(struct sc_parallel *pp, void (*fn)(void *item), void *items, size_t size,
                     size_t n)
{
    if (n == 0)
        return;
    if (n >= 2 && !pp->tried) {
        pp->tried = true;
        start_helpers(pp);
    }
    pthread_mutex_lock(&pp->lock);
    pp->fn = fn;
    pp->items = items;
    pp->size = size;
    pp->n = n;
    pp->next = 0;
    pp->pending = n;
    /* One helper for each item besides the one the caller takes first. */
    for (size_t i = 1; i < n && i <= (size_t)pp->nhelpers; i++)
        pthread_cond_signal(&pp->work);
    take_items(pp);
    while (pp->pending > 0)
        pthread_cond_wait(&pp->done, &pp->lock);
    pp->n = pp->next = 0;
    pp->items = NULL;
    pthread_mutex_unlock(&pp->lock);
}
