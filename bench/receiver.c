/*
 * bench-receiver - the cheapest HTTP endpoint the http sink can deliver to,
 * for bench/bench.py: it answers every POST/PUT with 200 and an empty body
 * and only counts what arrived (requests, body bytes, NDJSON lines), so the
 * benchmark measures the sidecar, not the receiver.  It keeps no bodies and
 * does not de-duplicate Idempotency-Keys (the tests' receiver does that).
 *
 *   bench-receiver [--port N]     prints "PORT" on the first stdout line,
 *                                 then serves until SIGTERM / SIGINT
 *   GET /stats                    {"requests":N,"bytes":N,"lines":N}
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <microhttpd.h>

static atomic_long n_requests, n_bytes, n_lines;
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *data,
                              size_t *data_size, void **state)
{
    (void)cls, (void)version;
    if (strcmp(method, "GET") == 0) {
        if (strcmp(url, "/stats") != 0)
            return reply(c, MHD_HTTP_NOT_FOUND, "");
        char buf[160];
        snprintf(buf, sizeof(buf), "{\"requests\":%ld,\"bytes\":%ld,\"lines\":%ld}\n",
                 atomic_load(&n_requests), atomic_load(&n_bytes), atomic_load(&n_lines));
        return reply(c, MHD_HTTP_OK, buf);
    }
    /* A body arrives in pieces: *state marks a request whose first call we saw. */
    static int started;
    if (*state == NULL) {
        *state = &started;
        return MHD_YES;
    }
    if (*data_size > 0) {
        long lines = 0;
        for (const char *p = data, *end = data + *data_size;
             (p = memchr(p, '\n', (size_t)(end - p))) != NULL; p++)
            lines++;
        atomic_fetch_add(&n_bytes, (long)*data_size);
        atomic_fetch_add(&n_lines, lines);
        *data_size = 0;
        return MHD_YES;
    }
    atomic_fetch_add(&n_requests, 1);
    return reply(c, MHD_HTTP_OK, "");
}

int main(int argc, char **argv)
{
    unsigned port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = (unsigned)strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: bench-receiver [--port N]\n");
            return 2;
        }
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* One thread per connection: the sidecar keeps one keep-alive connection per worker. */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
        (uint16_t)port, NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR, &addr,
        MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "bench-receiver: could not listen on port %u\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("%u\n", info ? info->port : port);
    fflush(stdout);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    while (!stop)
        pause();
    MHD_stop_daemon(d);
    fprintf(stderr, "bench-receiver: %ld requests, %ld bytes, %ld lines\n",
            atomic_load(&n_requests), atomic_load(&n_bytes), atomic_load(&n_lines));
    return 0;
}
