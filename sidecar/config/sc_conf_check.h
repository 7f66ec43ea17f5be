/*
 * sc_conf_check - value checks and maskers that key tables of several
 * layers share (the sidecar's own keys in sc_config.c, each sink's keys in
 * sinks/): identifiers, DSNs, URLs, readable files, secret-looking names.
 *
 * A check reports through sc_conf_error() and never quotes a value that
 * could be a secret; a masker returns a malloc'd printable form.
 */
#ifndef SC_CONF_CHECK_H
#define SC_CONF_CHECK_H

#include <stdbool.h>
#include <stddef.h>

struct sc_conf_ctx;

/* A PostgreSQL identifier as the sidecar accepts it: [A-Za-z_][A-Za-z0-9_]{0,62}. */
bool sc_conf_is_ident(const char *s, size_t n);
/* STRING check: an identifier (see sc_conf_is_ident()). */
void sc_conf_check_ident(struct sc_conf_ctx *ctx, void *field);
/* STRING check: "name" or "schema.name", each an identifier. */
void sc_conf_check_table_name(struct sc_conf_ctx *ctx, void *field);

/* STRING check: a libpq connection string (key=value or URI); the DSN is never quoted. */
void sc_conf_check_dsn(struct sc_conf_ctx *ctx, void *field);
/* STRING masker: the DSN with its passwords as "****" (db/sc_pg.h: sc_pg_dsn_mask()). */
char *sc_conf_mask_dsn(const char *dsn);

/* STRING check: an http:// or https:// URL with a host, no spaces (never quoted). */
void sc_conf_check_url(struct sc_conf_ctx *ctx, void *field);
/* STRING masker: https://user:PASSWORD@host/ -> https://user:****@host/. */
char *sc_conf_mask_url(const char *url);

/* STRING check: a CA bundle for curl's CAINFO: a regular file that can be read now (at most
 * 16 MiB) and holds at least one PEM certificate. */
void sc_conf_check_ca_bundle(struct sc_conf_ctx *ctx, void *field);

/* Does a property or header name look like it holds a secret (password, token, ...)? */
bool sc_conf_key_is_secret(const char *name);

#endif
