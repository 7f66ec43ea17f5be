/*
 * sc_pick.c - the cheaper of two ways, by measurement (see sc_pick.h).
 */
#include "base/sc_pick.h"

#include <string.h>

/* Weight of a new sample once a way is warm: about the last 4-8 samples count. */
#define SC_PICK_ALPHA 0.25

void sc_pick_init(struct sc_pick *p, uint32_t explore_every, int prefer, double margin)
{
    memset(p, 0, sizeof(*p));
    p->explore_every = explore_every < 2 ? 2 : explore_every;
    for (int c = 0; c < SC_PICK_CLASSES; c++)
        p->interval[c] = p->explore_every;
    p->prefer = prefer == 1 ? 1 : 0;
    p->margin = margin < 0 ? 0 : margin;
}

/* The cheaper way of a warm class: the preferred one unless the other is clearly cheaper. */
static int cheaper(const struct sc_pick *p, const struct sc_pick_way *w)
{
    int other = 1 - p->prefer;
    return w[other].ns_per_unit < w[p->prefer].ns_per_unit * (1.0 - p->margin) ? other : p->prefer;
}

int sc_pick_class(size_t n)
{
    int c = 0;
    while (n >= 4 && c < SC_PICK_CLASSES - 1) {
        n /= 4;
        c++;
    }
    return c;
}

int sc_pick_best(const struct sc_pick *p, size_t n)
{
    const struct sc_pick_way *w = p->way[sc_pick_class(n)];
    if (w[0].samples == 0 || w[1].samples == 0)
        return -1;
    return cheaper(p, w);
}

int sc_pick_way(struct sc_pick *p, size_t n)
{
    int c = sc_pick_class(n);
    const struct sc_pick_way *w = p->way[c];
    /* Warm-up: the preferred way SC_PICK_WARMUP times, then the other one once. */
    int other = 1 - p->prefer;
    if (w[p->prefer].samples < SC_PICK_WARMUP)
        return p->prefer;
    if (w[other].samples == 0)
        return other;
    int best = cheaper(p, w);
    if (++p->since[c] < p->interval[c])
        return best;
    p->since[c] = 0;
    return 1 - best;
}

void sc_pick_observe(struct sc_pick *p, int w, size_t n, int64_t ns)
{
    if (w < 0 || w >= SC_PICK_WAYS || n == 0 || ns < 0)
        return;
    int c = sc_pick_class(n);
    struct sc_pick_way *x = &p->way[c][w];
    int before = sc_pick_best(p, n);
    double v = (double)ns / (double)n;
    x->samples++;
    if (x->samples <= SC_PICK_WARMUP) /* a plain mean until warm */
        x->ns_per_unit += (v - x->ns_per_unit) / x->samples;
    else
        x->ns_per_unit += SC_PICK_ALPHA * (v - x->ns_per_unit);
    int after = sc_pick_best(p, n);
    if (before < 0 || after != before) {
        p->interval[c] = p->explore_every; /* a new choice: look at the other way often */
    } else if (w != before) {
        /* The other way, explored, is still the dearer one: look at it half as often. */
        uint32_t most = p->explore_every * SC_PICK_BACKOFF;
        p->interval[c] = p->interval[c] >= most / 2 ? most : p->interval[c] * 2;
    }
}
