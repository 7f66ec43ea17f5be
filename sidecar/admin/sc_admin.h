/*
 * sc_admin - the admin HTTP endpoint (docs/operations.md): /healthz, /readyz,
 * /metrics and the /v1 JSON API, on 127.0.0.1 by default, with an optional
 * bearer token required on everything but /healthz.
 *
 * Served by libmicrohttpd with one thread per connection, a connection
 * limit and an idle timeout, so a slow or malformed client can never block
 * delivery, which runs on other threads and never waits for this module.
 */
#ifndef SC_ADMIN_H
#define SC_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

struct sc_config;
struct sc_admin;

/* What the endpoint asks the rest of the process. */
struct sc_admin_hooks {
    /* Is the process ready?  If not, a reason in why. */
    bool (*ready)(void *arg, char *why, size_t whysize);
    void *arg;
};

/*
 * Starts listening on cfg->admin.listen ("" = disabled: returns NULL with
 * err empty).  On failure returns NULL with the reason in err.
 */
struct sc_admin *sc_admin_start(const struct sc_config *cfg, const struct sc_admin_hooks *hooks,
                                char *err, size_t errsize);
/* The port actually bound (useful with port 0). */
int sc_admin_port(const struct sc_admin *a);
void sc_admin_stop(struct sc_admin *a);

#endif
