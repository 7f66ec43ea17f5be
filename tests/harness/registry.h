/*
 * registry - a Schema Registry stand-in for the tests (libmicrohttpd): the
 * two calls the sidecar makes, GET /schemas/ids/{id} and GET /subjects,
 * with HTTP basic authentication, over plain HTTP or TLS (reg_start_tls),
 * and the faults the tests need (an outage answering 503, garbage
 * answers).  It counts the requests per id, so tests can see the sidecar's
 * cache at work (a request whose TLS handshake fails is not counted: it
 * never reaches the handler).
 */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <stddef.h>
#include <stdint.h>

enum reg_mode {
    REG_SERVE,   /* answer as a registry does */
    REG_DOWN,    /* 503 to everything */
    REG_GARBAGE, /* 200 with an HTML page to everything */
};

struct reg;

/* Starts on a free port of 127.0.0.1; user NULL = no authentication. */
struct reg *reg_start(const char *user, const char *password);
/* The same over HTTPS with this certificate and key (PEM texts, copied). */
struct reg *reg_start_tls(const char *user, const char *password, const char *cert_pem,
                          const char *key_pem);
/* "http://127.0.0.1:PORT", or "https://..." (a buffer in the stand-in). */
const char *reg_url(const struct reg *r);
/* Registers schema (its JSON text) under id; type NULL = Avro (no schemaType member). */
void reg_add(struct reg *r, uint32_t id, const char *schema, const char *type);
void reg_set_mode(struct reg *r, enum reg_mode m);
/* GET /schemas/ids/{id} requests so far (answered anyhow), and those answered 401. */
long reg_requests(struct reg *r, uint32_t id);
long reg_unauthorized(struct reg *r);
void reg_stop(struct reg *r);

/* The "Order" schema of tests/harness/avro_encode.py (malloc'd JSON text). */
char *reg_order_schema(void);
/*
 * Orders first..first+count-1 encoded by python3-avro, each framed as the
 * Confluent wire format with schema id (malloc'd array of malloc'd buffers).
 */
void reg_orders(int64_t first, int64_t count, uint32_t id, char ***values, size_t **lens);
/* The JSON the sidecar must make of order i (as avro_encode.py builds it); static buffer. */
const char *reg_order_json(int64_t i);

#endif
