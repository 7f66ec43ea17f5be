/*
 * sc_conf_check.c - value checks shared by the key tables (see sc_conf_check.h).
 */
#include "config/sc_conf_check.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>

#include "base/sc_util.h"
#include "config/sc_conf.h"
#include "config/sc_expand.h"
#include "db/sc_pg.h"

bool sc_conf_is_ident(const char *s, size_t n)
{
    if (n == 0 || n > 63 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

void sc_conf_check_ident(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    char q[96];
    if (!sc_conf_is_ident(s, strlen(s)))
        sc_conf_error(ctx,
                      "must be an identifier of 1 to 63 letters, digits or \"_\", not starting "
                      "with a digit (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
}

void sc_conf_check_table_name(struct sc_conf_ctx *ctx, void *field)
{
    const char *s = *(char **)field;
    const char *dot = strchr(s, '.');
    bool ok =
        dot ? sc_conf_is_ident(s, (size_t)(dot - s)) && sc_conf_is_ident(dot + 1, strlen(dot + 1))
            : sc_conf_is_ident(s, strlen(s));
    char q[96];
    if (!ok)
        sc_conf_error(ctx,
                      "must be \"name\" or \"schema.name\", each part 1 to 63 letters, digits "
                      "or \"_\", not starting with a digit (got %s)",
                      sc_conf_quote(q, sizeof(q), s));
}

void sc_conf_check_dsn(struct sc_conf_ctx *ctx, void *field)
{
    char reason[512];
    if (sc_pg_dsn_check(*(char **)field, reason, sizeof(reason)) < 0)
        sc_conf_error(ctx, "invalid DSN: %s", reason);
}

char *sc_conf_mask_dsn(const char *dsn)
{
    return sc_pg_dsn_mask(dsn);
}

void sc_conf_check_url(struct sc_conf_ctx *ctx, void *field)
{
    const char *url = *(char **)field;
    size_t scheme = strncasecmp(url, "http://", 7) == 0    ? 7
                    : strncasecmp(url, "https://", 8) == 0 ? 8
                                                           : 0;
    /* The URL may carry credentials: never quoted here. */
    if (!scheme)
        sc_conf_error(ctx, "must start with http:// or https://");
    else if (!url[scheme] || strchr("/?#", url[scheme]))
        sc_conf_error(ctx, "must name a host after %.*s", (int)scheme, url);
    else
        for (const unsigned char *p = (const unsigned char *)url; *p; p++)
            if (*p <= ' ' || *p == 0x7F) {
                sc_conf_error(ctx, "must not contain spaces or control characters");
                break;
            }
}

/* https://user:PASSWORD@host/ -> https://user:****@host/ (a lone user part may be a token). */
char *sc_conf_mask_url(const char *url)
{
    const char *start = strstr(url, "://");
    if (!start)
        return sc_xstrdup(url);
    start += 3;
    size_t auth = strcspn(start, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < auth; i++)
        if (start[i] == '@')
            at = start + i;
    if (!at)
        return sc_xstrdup(url);
    const char *colon = memchr(start, ':', (size_t)(at - start));
    const char *cut = colon ? colon + 1 : start;
    return sc_xasprintf("%.*s****%s", (int)(cut - url), url, at);
}

/*
 * The markers OpenSSL's PEM reader takes a CA bundle's certificates from
 * (curl hands it the file as it is).  A DER file, a private key alone or an
 * empty file has none: curl would refuse it at the first connection, after
 * the config had passed.
 */
static bool has_pem_certificate(const char *data, size_t n)
{
    static const char *const markers[] = {"-----BEGIN CERTIFICATE-----",
                                          "-----BEGIN TRUSTED CERTIFICATE-----",
                                          "-----BEGIN X509 CERTIFICATE-----"};
    for (size_t i = 0; i < SC_ARRAY_LEN(markers); i++)
        if (memmem(data, n, markers[i], strlen(markers[i])))
            return true;
    return false;
}

void sc_conf_check_ca_bundle(struct sc_conf_ctx *ctx, void *field)
{
    const char *path = *(char **)field;
    char *data = NULL;
    size_t n = 0;
    char q[256];
    /* Reading (not access(2)) is the real test, and a CA bundle is small. */
    if (sc_expand_read_regular_file(path, 16 * 1024 * 1024, &data, &n) < 0)
        sc_conf_error(ctx, "cannot read file %s: %s", sc_conf_quote(q, sizeof(q), path),
                      errno == EFBIG    ? "larger than 16 MiB"
                      : errno == EINVAL ? "not a regular file"
                                        : strerror(errno));
    else if (!has_pem_certificate(data, n))
        sc_conf_error(ctx,
                      "file %s holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" "
                      "line): a CA bundle in PEM format is expected",
                      sc_conf_quote(q, sizeof(q), path));
    free(data);
}

bool sc_conf_key_is_secret(const char *name)
{
    static const char *const words[] = {
        "password", "passwd",        "secret",     "token",  "apikey",      "api_key",
        "api-key",  "authorization", "credential", "cookie", "private_key", "private-key",
    };
    static const char *const exact[] = {"sasl.oauthbearer.config", "ssl.key.pem", "ssl_key"};
    if (!name)
        return false;
    for (size_t i = 0; i < SC_ARRAY_LEN(exact); i++)
        if (strcasecmp(name, exact[i]) == 0)
            return true;
    for (size_t i = 0; i < SC_ARRAY_LEN(words); i++)
        if (strcasestr(name, words[i]))
            return true;
    return false;
}
