/*
 * check_budget.c - the memory budget's shares (pipeline/sc_budget.h), and
 * the librdkafka properties derived from them: a consumer can be created
 * from them, also when the user overrides some; and glibc's malloc arenas
 * under a small budget.
 */
#include <check.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "config/sc_config.h"
#include "pipeline/sc_budget.h"
#include "sinks/sc_sink.h"

static char err[4096];

static struct sc_config *load(int limit_mib, int workers)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "{\"postgres\": {\"dsn\": \"host=localhost dbname=app\"},"
             " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9092\"},"
             " \"memory\": {\"limit_mib\": %d},"
             " \"pipelines\": [{\"name\": \"p\", \"topics\": [\"t\"], \"workers\": %d,"
             "  \"sink\": {\"type\": \"file\", \"path\": \"/d/{partition}\"}}]}",
             limit_mib, workers);
    struct sc_config *cfg = NULL;
    ck_assert_msg(sc_config_load_string("t.json", text, &sc_sinks, &cfg, err, sizeof(err)) == 0,
                  "%s", err);
    return cfg;
}

static long long get(rd_kafka_conf_t *conf, const char *k)
{
    char v[64];
    size_t n = sizeof(v);
    ck_assert_int_eq(rd_kafka_conf_get(conf, k, v, &n), RD_KAFKA_CONF_OK);
    return strtoll(v, NULL, 10);
}

static void set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    ck_assert_int_eq(rd_kafka_conf_set(conf, k, v, err, sizeof(err)), RD_KAFKA_CONF_OK);
}

/* Creates (and destroys) a consumer from conf: NULL, or librdkafka's complaint in err. */
static const char *create(rd_kafka_conf_t *conf)
{
    set(conf, "bootstrap.servers", "127.0.0.1:9"); /* never connected to */
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return err;
    }
    rd_kafka_destroy(rk);
    return NULL;
}

/*
 * A fetch response lands on top of the queue limits, and costs up to ~12 x
 * its wire size in memory: fetch.max.bytes is sized so that this fits a
 * quarter of librdkafka's share.  The shares add up to no more than what
 * the budget covers.
 */
START_TEST(test_shares)
{
    const int limits[] = {32, 48, 64, 256, 4096};
    for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
        struct sc_config *cfg = load(limits[i], 2);
        struct sc_budget b;
        sc_budget_derive(cfg, &cfg->pipelines[0], &b);
        int64_t kafka = b.pipeline / 4;
        ck_assert_int_ge(b.fetch_max_bytes, 65536);
        if (b.fetch_max_bytes > 65536)
            ck_assert_msg(b.fetch_max_bytes * 12 <= kafka / 4,
                          "%d MiB: fetch.max.bytes %lld, 12 x that over a quarter of %lld",
                          limits[i], (long long)b.fetch_max_bytes, (long long)kafka);
        ck_assert_int_le(b.partition_fetch_bytes, b.fetch_max_bytes);
        /* the queues: the rest of librdkafka's share, counted at 400 bytes a message */
        ck_assert_int_le(2 * b.queued_messages * 400, kafka - kafka / 4 + 2 * 400);
        ck_assert_int_le(2 * b.worker_buffer + kafka, b.pipeline);
        ck_assert_int_le(b.batch_max_bytes, b.worker_buffer / 4);
        sc_config_free(cfg);
    }
    /* 64 MiB, the default: 50 MiB covered, librdkafka's share 12.5 MiB */
    struct sc_config *cfg = load(64, 2);
    struct sc_budget b;
    sc_budget_derive(cfg, &cfg->pipelines[0], &b);
    ck_assert_int_eq(b.pipeline, 50LL << 20);
    ck_assert_int_eq(b.fetch_max_bytes, (50LL << 20) / 4 / 4 / 12);
    sc_config_free(cfg);
}
END_TEST

/* Pipelines of the given sink types ("file", "http"), one worker each, under 64 MiB. */
static struct sc_config *load_sinks(const char *const *types, size_t n)
{
    char text[4096];
    int len = snprintf(text, sizeof(text),
                       "{\"postgres\": {\"dsn\": \"host=localhost dbname=app\"},"
                       " \"kafka\": {\"bootstrap.servers\": \"127.0.0.1:9092\"},"
                       " \"pipelines\": [");
    for (size_t i = 0; i < n; i++)
        len +=
            snprintf(text + len, sizeof(text) - (size_t)len,
                     "%s{\"name\": \"p%zu\", \"topics\": [\"t%zu\"], \"workers\": 1, \"sink\": %s}",
                     i ? ", " : "", i, i,
                     strcmp(types[i], "http") == 0
                         ? "{\"type\": \"http\", \"url\": \"http://127.0.0.1:8080/in\"}"
                         : "{\"type\": \"file\", \"path\": \"/d/{topic}/{partition}\"}");
    snprintf(text + len, sizeof(text) - (size_t)len, "]}");
    struct sc_config *cfg = NULL;
    ck_assert_msg(sc_config_load_string("t.json", text, &sc_sinks, &cfg, err, sizeof(err)) == 0,
                  "%s", err);
    return cfg;
}

/*
 * What a sink type takes once per process (the HTTP sink's libcurl) is set
 * aside with the fixed part, once however many pipelines use the type: the
 * HTTP sink's peak went 1-2 MiB over a 32 MiB budget without it
 * (docs/benchmarks.md#sink-fixed-part).
 */
START_TEST(test_sink_fixed_part)
{
    const int64_t MiB = 1LL << 20;
    const char *file[] = {"file"}, *one_http[] = {"http"}, *two_http[] = {"http", "http"},
               *mixed[] = {"file", "http", "file"};
    struct sc_config *cfg = load_sinks(file, 1);
    ck_assert_int_eq(sc_budget_fixed(cfg), SC_BUDGET_FIXED);
    struct sc_budget b;
    sc_budget_derive(cfg, &cfg->pipelines[0], &b);
    ck_assert_int_eq(b.pipeline, 64 * MiB - SC_BUDGET_FIXED);
    sc_config_free(cfg);

    cfg = load_sinks(one_http, 1);
    int64_t http = sc_sink_class_of(&cfg->pipelines[0].sink)->fixed_bytes;
    ck_assert_int_ge(http, 2 * MiB); /* curl_global_init() alone, measured */
    ck_assert_int_eq(sc_budget_fixed(cfg), SC_BUDGET_FIXED + http);
    sc_budget_derive(cfg, &cfg->pipelines[0], &b);
    ck_assert_int_eq(b.pipeline, 64 * MiB - SC_BUDGET_FIXED - http);
    sc_config_free(cfg);

    cfg = load_sinks(two_http, 2);
    ck_assert_int_eq(sc_budget_fixed(cfg), SC_BUDGET_FIXED + http);
    sc_config_free(cfg);

    /* three pipelines of one worker each: a third of what is covered for each */
    cfg = load_sinks(mixed, 3);
    ck_assert_int_eq(sc_budget_fixed(cfg), SC_BUDGET_FIXED + http);
    sc_budget_derive(cfg, &cfg->pipelines[2], &b);
    ck_assert_int_eq(b.pipeline, (64 * MiB - SC_BUDGET_FIXED - http) / 3);
    sc_config_free(cfg);
}
END_TEST

/* What sc_budget_apply() sets makes a consumer: message.max.bytes goes down with the fetches. */
START_TEST(test_apply_makes_a_consumer)
{
    struct sc_config *cfg = load(64, 2);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert_int_eq(sc_budget_apply(cfg, &cfg->pipelines[0], conf, err, sizeof(err)), 0);
    struct sc_budget b;
    sc_budget_derive(cfg, &cfg->pipelines[0], &b);
    ck_assert_int_eq(get(conf, "fetch.max.bytes"), b.fetch_max_bytes);
    ck_assert_int_eq(get(conf, "message.max.bytes"), b.fetch_max_bytes);
    /* a response larger than fetch.max.bytes (a batch larger than it) is still received */
    ck_assert_int_ge(get(conf, "receive.message.max.bytes"), 100000000);
    ck_assert_int_eq(sc_budget_reconcile(conf, false, false, err, sizeof(err)), 0);
    const char *e = create(conf);
    ck_assert_msg(e == NULL, "%s", e ? e : "");
    sc_config_free(cfg);
}
END_TEST

/*
 * The user's properties win; the other of the pair follows, so that
 * librdkafka does not refuse a property the user never set.
 */
START_TEST(test_user_overrides)
{
    struct sc_config *cfg = load(64, 2);

    /* message.max.bytes raised: fetch.max.bytes follows it up */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert_int_eq(sc_budget_apply(cfg, &cfg->pipelines[0], conf, err, sizeof(err)), 0);
    set(conf, "message.max.bytes", "1000000");
    rd_kafka_conf_t *copy = rd_kafka_conf_dup(conf);
    const char *e = create(copy); /* what reconciling is for */
    ck_assert_ptr_nonnull(e);
    ck_assert_msg(strstr(e, "fetch.max.bytes"), "%s", e);
    ck_assert_int_eq(sc_budget_reconcile(conf, false, true, err, sizeof(err)), 0);
    ck_assert_int_eq(get(conf, "fetch.max.bytes"), 1000000);
    e = create(conf);
    ck_assert_msg(e == NULL, "%s", e ? e : "");

    /* fetch.max.bytes lowered below the budget's: message.max.bytes follows it down */
    conf = rd_kafka_conf_new();
    ck_assert_int_eq(sc_budget_apply(cfg, &cfg->pipelines[0], conf, err, sizeof(err)), 0);
    set(conf, "fetch.max.bytes", "70000");
    ck_assert_int_eq(sc_budget_reconcile(conf, true, false, err, sizeof(err)), 0);
    ck_assert_int_eq(get(conf, "fetch.max.bytes"), 70000);
    ck_assert_int_eq(get(conf, "message.max.bytes"), 70000);
    e = create(conf);
    ck_assert_msg(e == NULL, "%s", e ? e : "");

    /* both set, and in conflict: left as they are, librdkafka names the problem */
    conf = rd_kafka_conf_new();
    ck_assert_int_eq(sc_budget_apply(cfg, &cfg->pipelines[0], conf, err, sizeof(err)), 0);
    set(conf, "fetch.max.bytes", "70000");
    set(conf, "message.max.bytes", "80000");
    ck_assert_int_eq(sc_budget_reconcile(conf, true, true, err, sizeof(err)), 0);
    ck_assert_int_eq(get(conf, "fetch.max.bytes"), 70000);
    e = create(conf);
    ck_assert_ptr_nonnull(e);
    ck_assert_msg(strstr(e, "fetch.max.bytes") && strstr(e, "message.max.bytes"), "%s", e);

    sc_config_free(cfg);
}
END_TEST

static pthread_barrier_t all_allocated;
#define NTHREADS 4
static void *volatile held[NTHREADS]; /* volatile: the compiler may not drop the malloc */

static void *allocate(void *arg)
{
    int *i = arg;
    held[*i] = malloc(1000);
    pthread_barrier_wait(&all_allocated); /* all threads hold memory at once */
    free(held[*i]);
    return NULL;
}

/* The malloc arenas in use after sc_budget_malloc_init under a budget of limit_mib and four
 * threads allocating at once (malloc_info lists one <heap> per arena). */
static int arenas_after_threads(int limit_mib)
{
    struct sc_config *cfg = load(limit_mib, 1);
    sc_budget_malloc_init(cfg);
    sc_config_free(cfg);
    pthread_t t[NTHREADS];
    int ids[NTHREADS];
    pthread_barrier_init(&all_allocated, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        ids[i] = i;
        ck_assert_int_eq(pthread_create(&t[i], NULL, allocate, &ids[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&all_allocated);
    char *info = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&info, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(malloc_info(0, f), 0);
    fclose(f);
    int heaps = 0;
    for (const char *p = info; (p = strstr(p, "<heap nr=")) != NULL; p++)
        heaps++;
    free(info);
    return heaps;
}

/* Under a budget below 64 MiB threads share one glibc arena: the arenas glibc would give them
 * keep freed memory apart, which took the http sink 2-3 MiB over a 32 MiB budget. */
START_TEST(test_one_malloc_arena_under_small_budget)
{
    int heaps = arenas_after_threads(32);
    ck_assert_msg(heaps == 1, "%d malloc arenas after 4 threads allocated under 32 MiB", heaps);
}
END_TEST

/* From 64 MiB on glibc keeps its arena per thread (faster for the http sink).  Under
 * AddressSanitizer glibc's malloc is not the one in use: nothing to count. */
START_TEST(test_arena_per_thread_from_64_mib)
{
    int heaps = arenas_after_threads(64);
#if defined(__SANITIZE_ADDRESS__)
    (void)heaps;
#else
    ck_assert_msg(heaps > 1, "%d malloc arena after 4 threads allocated under 64 MiB", heaps);
#endif
}
END_TEST

int main(void)
{
    Suite *s = suite_create("budget");
    TCase *tc = tcase_create("budget");
    tcase_add_test(tc, test_shares);
    tcase_add_test(tc, test_apply_makes_a_consumer);
    tcase_add_test(tc, test_user_overrides);
    tcase_add_test(tc, test_sink_fixed_part);
    tcase_add_test(tc, test_one_malloc_arena_under_small_budget);
    tcase_add_test(tc, test_arena_per_thread_from_64_mib);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
