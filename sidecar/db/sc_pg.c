/*
 * sc_pg.c - libpq helpers: DSN checking, masking and describing, connecting
 * with keepalives and a readable error, and error classification.
 *
 * A DSN is a secret (it may carry a password), so no message built here ever
 * contains one: parse errors from libpq are scrubbed of the DSN fragments
 * they quote, masking works on the raw text so everything but the secret is
 * kept byte for byte, and connection errors describe the target as
 * "host:port/dbname as user".
 */
#include "db/sc_pg.h"

#include <ctype.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sc_log.h"
#include "base/sc_util.h"

/* ---- DSN checking -------------------------------------------------------- */

/* Copies the first line of s into buf (trailing blanks cut); returns buf. */
static const char *first_line(const char *s, char *buf, size_t size)
{
    if (size == 0)
        return buf;
    size_t n = strcspn(s, "\r\n");
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    if (n >= size)
        n = size - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

/*
 * libpq's parse errors quote a piece of the DSN (the token after a missing
 * "=", a bad percent-escape, the whole URI), which may be a password and may
 * itself contain quotes.  In every message shape that piece is the last
 * quoted one, opened after `after ` or `: ` and closed by the last quote of
 * the line; the quoted bits before it are fixed syntax ("=", "]") or a
 * single offending character.  So the piece is replaced by "..." (or
 * dropped, with its ": ", when it ends the line), and the rest is kept.
 * Option names are kept whole: they are not secret and say what to fix.
 */
static void scrub_parse_error(const char *msg, char *buf, size_t size)
{
    char line[512];
    first_line(msg, line, sizeof(line));
    if (strncmp(line, "invalid connection option", 25) == 0 ||
        strncmp(line, "invalid URI query parameter", 27) == 0) {
        snprintf(buf, size, "%s", line);
        return;
    }
    const char *after = strstr(line, "after \""), *colon = strstr(line, ": \"");
    const char *open = after ? after + 6 : NULL;
    if (colon && (!open || colon + 2 < open))
        open = colon + 2;
    if (!open)
        open = strchr(line, '"'); /* a shape we do not know: hide from the first quote on */
    if (!open) {
        snprintf(buf, size, "%s", line);
        return;
    }
    const char *close = strrchr(line, '"');
    int keep = (int)(open - line);
    if (close == open || close[1] == '\0') {
        if (keep >= 2 && open[-2] == ':' && open[-1] == ' ')
            snprintf(buf, size, "%.*s", keep - 2, line);
        else
            snprintf(buf, size, "%.*s\"...\"", keep, line);
        return;
    }
    snprintf(buf, size, "%.*s\"...\"%s", keep, line, close + 1);
}

int sc_pg_dsn_check(const char *dsn, char *errbuf, size_t errsize)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn ? dsn : "", &err);
    if (opts) {
        PQconninfoFree(opts);
        return 0;
    }
    if (err)
        scrub_parse_error(err, errbuf, errsize);
    else
        snprintf(errbuf, errsize, "out of memory while parsing the DSN");
    PQfreemem(err);
    return -1;
}

/* ---- DSN masking --------------------------------------------------------- */

/* libpq's URI prefixes (compared case-sensitively, as libpq does). */
static size_t uri_prefix_length(const char *dsn)
{
    if (strncmp(dsn, "postgresql://", 13) == 0)
        return 13;
    if (strncmp(dsn, "postgres://", 11) == 0)
        return 11;
    return 0;
}

/*
 * Does a key hold a secret?  "password" and "sslpassword" do; anything
 * containing "pass" is treated alike so that a misspelt key ("passwd=",
 * rejected by libpq later) does not show its value either.
 */
static bool key_is_secret(const char *key, size_t len)
{
    for (size_t i = 0; i + 4 <= len; i++)
        if (strncasecmp(key + i, "pass", 4) == 0)
            return true;
    return false;
}

static void mark(bool *masked, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        masked[i] = true;
}

/*
 * key=value form, scanned with libpq's rules (conninfo_parse): blanks around
 * "=", values either bare (backslash escapes the next character) or in
 * single quotes (backslash escapes too).  From the first syntax error on,
 * everything is masked: libpq would reject the DSN anyway, and a stray
 * token there may be half of a password.
 */
static void mark_kv_secrets(const char *dsn, bool *masked)
{
    size_t len = strlen(dsn);
    const char *p = dsn, *bad = NULL;
    while (*p) {
        if (isspace((unsigned char)*p)) {
            p++;
            continue;
        }
        const char *key = p;
        while (*p && *p != '=' && !isspace((unsigned char)*p))
            p++;
        size_t keylen = (size_t)(p - key);
        while (isspace((unsigned char)*p))
            p++;
        if (*p != '=') {
            bad = key; /* a key without a value: maybe a piece of a password */
            break;
        }
        p++;
        while (isspace((unsigned char)*p))
            p++;
        const char *val = p;
        if (*p == '\'') {
            for (p++; *p && *p != '\''; p++)
                if (*p == '\\' && p[1])
                    p++;
            if (*p != '\'') {
                bad = val; /* unterminated quote */
                break;
            }
            p++;
        } else {
            for (; *p && !isspace((unsigned char)*p); p++)
                if (*p == '\\' && p[1])
                    p++;
        }
        if (key_is_secret(key, keylen))
            mark(masked, (size_t)(val - dsn), (size_t)(p - dsn));
    }
    if (bad)
        mark(masked, (size_t)(bad - dsn), len);
}

/* Percent-decodes s[0..n) into buf (bounded); returns the decoded length. */
static size_t pct_decode(const char *s, size_t n, char *buf, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < size; i++) {
        if (s[i] == '%' && i + 2 < n && sc_hexval(s[i + 1]) >= 0 && sc_hexval(s[i + 2]) >= 0) {
            buf[o++] = (char)(sc_hexval(s[i + 1]) * 16 + sc_hexval(s[i + 2]));
            i += 2;
        } else {
            buf[o++] = s[i];
        }
    }
    if (size > 0)
        buf[o] = '\0';
    return o;
}

/*
 * URI form: the password of "user:password@" (found the way libpq finds it:
 * the credentials end at the first "@" before any "/") and the value of any
 * secret query parameter.
 */
static void mark_uri_secrets(const char *dsn, size_t prefix, bool *masked)
{
    const char *start = dsn + prefix;
    const char *p = start + strcspn(start, "@/");
    if (*p == '@') {
        const char *colon = memchr(start, ':', (size_t)(p - start));
        if (colon)
            mark(masked, (size_t)(colon + 1 - dsn), (size_t)(p - dsn));
    }
    /* Any "?" starts the query as far as masking goes: masking more is safe. */
    const char *q = strchr(start, '?');
    while (q && *q) {
        const char *param = q + 1;
        const char *end = param + strcspn(param, "&");
        const char *eq = memchr(param, '=', (size_t)(end - param));
        char key[64];
        size_t klen = pct_decode(param, (size_t)((eq ? eq : end) - param), key, sizeof(key));
        if (key_is_secret(key, klen))
            mark(masked, (size_t)((eq ? eq + 1 : param) - dsn), (size_t)(end - dsn));
        q = *end ? end : NULL;
    }
}

/* The textual masking: each secret value (and everything after a syntax error) as "****". */
static char *mask_text(const char *dsn)
{
    size_t len = strlen(dsn);
    bool *masked = sc_xcalloc(len + 1, sizeof(bool));
    size_t prefix = uri_prefix_length(dsn);
    if (prefix)
        mark_uri_secrets(dsn, prefix, masked);
    else
        mark_kv_secrets(dsn, masked);

    /* Each masked run becomes "****": at most 4 bytes per input byte. */
    char *out = sc_xmalloc(4 * len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (!masked[i]) {
            out[o++] = dsn[i++];
            continue;
        }
        memcpy(out + o, "****", 4);
        o += 4;
        while (i < len && masked[i])
            i++;
    }
    out[o] = '\0';
    free(masked);
    return out;
}

/* Does dsn parse with no password other than "****"? */
static bool fully_masked(const char *dsn)
{
    PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
    bool ok = opts != NULL;
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val && key_is_secret(o->keyword, strlen(o->keyword)) && strcmp(o->val, "****") != 0)
            ok = false;
    PQconninfoFree(opts);
    return ok;
}

/*
 * The masking is textual, to keep the DSN's form.  Should it ever miss
 * (libpq parses the text in a way the scan above did not foresee), the DSN
 * is rebuilt from libpq's own parse instead, which cannot miss.  A DSN
 * libpq rejects stays masked from its first syntax error on.
 */
char *sc_pg_dsn_mask(const char *dsn)
{
    if (!dsn)
        return sc_xstrdup("");
    char *masked = mask_text(dsn);
    PQconninfoOption *opts = PQconninfoParse(dsn, NULL);
    if (!opts || fully_masked(masked)) {
        PQconninfoFree(opts);
        return masked;
    }
    free(masked);
    struct sc_buf b;
    sc_buf_init(&b, 0);
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        const char *v = key_is_secret(o->keyword, strlen(o->keyword)) ? "****" : o->val;
        if (sc_buf_printf(&b, "%s%s='", b.len ? " " : "", o->keyword) < 0)
            abort();
        for (; *v; v++)
            if (((*v == '\\' || *v == '\'') && sc_buf_putc(&b, '\\') < 0) ||
                sc_buf_putc(&b, *v) < 0)
                abort();
        if (sc_buf_putc(&b, '\'') < 0)
            abort();
    }
    PQconninfoFree(opts);
    if (sc_buf_putc(&b, '\0') < 0)
        abort();
    return b.data;
}

/* ---- DSN describing ------------------------------------------------------ */

/* The value of an explicitly given option, or NULL (empty counts as unset, as in libpq). */
static const char *opt_value(const PQconninfoOption *opts, const char *key)
{
    for (const PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, key) == 0)
            return o->val && *o->val ? o->val : NULL;
    return NULL;
}

static const char *env_value(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* libpq's default user: the effective OS user. */
static void os_user(char *buf, size_t size)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    if (getpwuid_r(geteuid(), &pw, tmp, sizeof(tmp), &res) == 0 && res)
        snprintf(buf, size, "%s", res->pw_name);
    else
        snprintf(buf, size, "?");
}

/* Appends "host:port" pairs for libpq's comma-separated host and port lists. */
static void describe_hosts(struct sc_buf *b, const char *hosts, const char *ports)
{
    size_t nports = 1;
    for (const char *p = ports; *p; p++)
        nports += *p == ',';
    const char *h = hosts, *pt = ports;
    for (size_t i = 0;; i++) {
        size_t hl = strcspn(h, ",");
        size_t pl = strcspn(pt, ",");
        const char *host = hl ? h : "localhost";
        int hlen = hl ? (int)hl : 9;
        bool v6 = memchr(host, ':', (size_t)hlen) != NULL && host[0] != '/';
        int rc = sc_buf_printf(b, "%s%s%.*s%s:%.*s", i ? "," : "", v6 ? "[" : "", hlen, host,
                               v6 ? "]" : "", pl ? (int)pl : 4, pl ? pt : "5432");
        (void)rc; /* the buffer is unbounded */
        if (h[hl] == '\0')
            break;
        h += hl + 1;
        if (nports > 1 && pt[pl] != '\0')
            pt += pl + 1;
    }
}

char *sc_pg_dsn_describe(const char *dsn)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn ? dsn : "", &err);
    PQfreemem(err);
    if (!opts)
        return sc_xstrdup("(invalid DSN)");

    const char *host = opt_value(opts, "host");
    if (!host)
        host = opt_value(opts, "hostaddr");
    if (!host)
        host = env_value("PGHOST");
    if (!host)
        host = env_value("PGHOSTADDR");
    if (!host)
        host = "localhost";
    const char *port = opt_value(opts, "port");
    if (!port)
        port = env_value("PGPORT");
    if (!port)
        port = "5432";
    char osuser[256];
    const char *user = opt_value(opts, "user");
    if (!user)
        user = env_value("PGUSER");
    if (!user) {
        os_user(osuser, sizeof(osuser));
        user = osuser;
    }
    const char *dbname = opt_value(opts, "dbname");
    if (!dbname)
        dbname = env_value("PGDATABASE");
    if (!dbname)
        dbname = user;

    struct sc_buf b;
    sc_buf_init(&b, 0);
    describe_hosts(&b, host, port);
    int rc = sc_buf_printf(&b, "/%s as %s", dbname, user);
    (void)rc;             /* the buffer is unbounded: only out-of-memory fails, and that aborts */
    b.data[b.len] = '\0'; /* sc_buf keeps room for it */
    PQconninfoFree(opts);
    return b.data;
}

/* ---- connecting ---------------------------------------------------------- */

/* Server notices go to our log instead of libpq's default (raw stderr). */
static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    char line[1024];
    first_line(message, line, sizeof(line));
    if (strncmp(line, "WARNING:", 8) == 0)
        sc_warn(NULL, "postgres: %s", line);
    else
        sc_debug(NULL, "postgres: %s", line);
}

PGconn *sc_pg_connect(const char *dsn, const char *app_name, int timeout_ms, char *errbuf,
                      size_t errsize)
{
    PGconn *conn = NULL;
    char *where = NULL;
    char reason[512];

    if (!dsn)
        dsn = "";
    if (sc_pg_dsn_check(dsn, reason, sizeof(reason)) != 0) {
        snprintf(errbuf, errsize, "could not connect to PostgreSQL: invalid DSN: %s", reason);
        goto out;
    }

    /*
     * Our settings come first and the DSN (expanded from "dbname") last, so
     * anything the DSN says explicitly wins over these defaults.
     */
    char timeout[16];
    const char *keys[8], *vals[8];
    int n = 0;
    if (app_name && *app_name) {
        keys[n] = "application_name";
        vals[n++] = app_name;
    }
    if (timeout_ms > 0) {
        snprintf(timeout, sizeof(timeout), "%d", timeout_ms / 1000 + (timeout_ms % 1000 != 0));
        keys[n] = "connect_timeout";
        vals[n++] = timeout;
    }
    keys[n] = "keepalives";
    vals[n++] = "1";
    keys[n] = "keepalives_idle";
    vals[n++] = "10";
    keys[n] = "keepalives_interval";
    vals[n++] = "5";
    keys[n] = "keepalives_count";
    vals[n++] = "3";
    keys[n] = "dbname";
    vals[n++] = dsn;
    keys[n] = NULL;
    vals[n] = NULL;

    conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        where = sc_pg_dsn_describe(dsn);
        snprintf(errbuf, errsize, "could not connect to PostgreSQL at %s: out of memory", where);
        goto out;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        where = sc_pg_dsn_describe(dsn);
        first_line(PQerrorMessage(conn), reason, sizeof(reason));
        snprintf(errbuf, errsize, "could not connect to PostgreSQL at %s: %s", where,
                 reason[0] ? reason : "unknown error");
        PQfinish(conn);
        conn = NULL;
        goto out;
    }
    PQsetNoticeProcessor(conn, notice_to_log, NULL);
out:
    free(where);
    return conn;
}

bool sc_pg_login_refused(const char *connect_error)
{
    static const char *const refusals[] = {
        "password authentication failed", /* md5 / scram: wrong password or user */
        "authentication failed",          /* ident, peer, cert, ldap, ... */
        "no pg_hba.conf entry",
        "no password supplied", /* fe_sendauth: the DSN has no password, the server wants one */
        "does not exist",       /* FATAL: role "x" / database "y" does not exist */
        "permission denied for database",
        "not permitted to log in",
    };
    if (!connect_error)
        return false;
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
        if (strstr(connect_error, refusals[i]))
            return true;
    return false;
}

/* ---- errors -------------------------------------------------------------- */

static bool is_error_status(ExecStatusType st)
{
    return st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR ||
           st == PGRES_PIPELINE_ABORTED;
}

enum sc_pg_errclass sc_pg_classify(PGconn *conn, const PGresult *res)
{
    if (!res)
        return SC_PG_RETRY;
    if (!is_error_status(PQresultStatus(res)))
        return SC_PG_OK;
    if (conn && PQstatus(conn) == CONNECTION_BAD)
        return SC_PG_RETRY;

    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    if (!state || !*state) {
        /* Made by libpq itself, not refused by the server: the link or the protocol failed,
         * whatever PQstatus() says yet.  libpq reports a failed send as the statement's
         * result ("server closed the connection unexpectedly") once it has read anything
         * that is not the answer, and marks the connection bad only when a read sees its
         * end (unit_check_pg_write_failure makes it happen).  chaos_check_random met it
         * during PostgreSQL restarts: taken as permanent, it stopped two partitions in the
         * error state.  As connection trouble, the outcome is unknown and read back. */
        return SC_PG_RETRY;
    }
    /* Conditions that pass: load, an operator, a restart.  A statement_timeout or a
     * pg_cancel_backend() says nothing about the statement itself, a server short of
     * disk, memory or connections recovers by itself, and a read-only server is a
     * standby that a failover is promoting or that a reconnection leaves behind. */
    static const char *const retriable[] = {
        "40000", /* transaction_rollback */
        "40001", /* serialization_failure */
        "40003", /* statement_completion_unknown */
        "40P01", /* deadlock_detected */
        "25006", /* read_only_sql_transaction */
        "26000", /* invalid_sql_statement_name: our prepared statement vanished (DISCARD ALL,
                    another server session behind a pooler): a new connection prepares it */
        "57014", /* query_canceled (statement_timeout, pg_cancel_backend) */
        "57P01", /* admin_shutdown */
        "57P02", /* crash_shutdown */
        "57P03", /* cannot_connect_now (starting up, recovering) */
        "53000", /* insufficient_resources */
        "53100", /* disk_full */
        "53200", /* out_of_memory */
        "53300", /* too_many_connections */
        "55P03", /* lock_not_available */
    };
    if (strncmp(state, "08", 2) == 0) /* connection_exception class */
        return SC_PG_RETRY;
    for (size_t i = 0; i < SC_ARRAY_LEN(retriable); i++)
        if (strcmp(state, retriable[i]) == 0)
            return SC_PG_RETRY;
    return SC_PG_PERMANENT;
}

const char *sc_pg_sqlstate_name(const char *state)
{
    static const struct {
        const char *code, *name;
    } names[] = {
        {"23502", "not_null_violation"},    {"23503", "foreign_key_violation"},
        {"23505", "unique_violation"},      {"23514", "check_violation"},
        {"23P01", "exclusion_violation"},   {"42501", "insufficient_privilege"},
        {"42601", "syntax_error"},          {"42703", "undefined_column"},
        {"42704", "undefined_object"},      {"42883", "undefined_function"},
        {"42P01", "undefined_table"},       {"3F000", "invalid_schema_name"},
        {"P0001", "raise_exception"},       {"25006", "read_only_sql_transaction"},
        {"40001", "serialization_failure"}, {"40P01", "deadlock_detected"},
        {"53300", "too_many_connections"},  {"55P03", "lock_not_available"},
        {"57014", "query_canceled"},
    };
    static const struct {
        const char *cls, *name;
    } classes[] = {
        {"08", "connection exception"},
        {"22", "data exception"},
        {"23", "integrity constraint violation"},
        {"25", "invalid transaction state"},
        {"28", "invalid authorization"},
        {"40", "transaction rollback"},
        {"42", "syntax error or access rule violation"},
        {"53", "insufficient resources"},
        {"54", "program limit exceeded"},
        {"55", "object not in prerequisite state"},
        {"57", "operator intervention"},
        {"P0", "PL/pgSQL error"},
        {"XX", "internal error"},
    };
    if (!state || !*state)
        return "no SQLSTATE: connection trouble";
    for (size_t i = 0; i < SC_ARRAY_LEN(names); i++)
        if (strcmp(state, names[i].code) == 0)
            return names[i].name;
    for (size_t i = 0; i < SC_ARRAY_LEN(classes); i++)
        if (strncmp(state, classes[i].cls, 2) == 0)
            return classes[i].name;
    return "unknown class";
}

const char *sc_pg_errmsg(PGconn *conn, const PGresult *res, char *buf, size_t size)
{
    const char *msg = NULL;
    if (res) {
        msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (!msg || !*msg)
            msg = PQresultErrorMessage(res);
        if ((!msg || !*msg) && !is_error_status(PQresultStatus(res)))
            msg = "no error";
    }
    if ((!msg || !*msg) && conn)
        msg = PQerrorMessage(conn);
    if (!msg || !*msg)
        msg = res ? "unknown error" : "no result from the server";
    return first_line(msg, buf, size);
}

char *sc_pg_quote_ident(const char *ident)
{
    if (!ident)
        ident = "";
    size_t n = 2;
    for (const char *p = ident; *p; p++)
        n += *p == '"' ? 2 : 1;
    char *out = sc_xmalloc(n + 1);
    char *o = out;
    *o++ = '"';
    for (const char *p = ident; *p; p++) {
        if (*p == '"')
            *o++ = '"';
        *o++ = *p;
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

char *sc_pg_with_schema(const char *sql, const char *schema_q)
{
    struct sc_buf b;
    sc_buf_init(&b, 0);
    size_t ql = strlen(schema_q);
    for (const char *p = sql; *p;) {
        if (p[0] == '{' && p[1] == 'S' && p[2] == '}') {
            (void)!sc_buf_append(&b, schema_q, ql);
            p += 3;
        } else {
            (void)!sc_buf_putc(&b, *p++);
        }
    }
    (void)!sc_buf_putc(&b, '\0');
    return b.data;
}

int sc_pg_read_failed(PGconn *conn, const PGresult *res, const char *what, char *err,
                      size_t errsize)
{
    char msg[512];
    sc_pg_errmsg(conn, res, msg, sizeof(msg));
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    bool missing = state && (strcmp(state, "42P01") == 0 || strcmp(state, "42883") == 0 ||
                             strcmp(state, "3F000") == 0);
    snprintf(err, errsize, "%s: %s%s", what, msg,
             missing ? " (is the schema migrated? run `sidecar migrate`)" : "");
    return sc_pg_classify(conn, res) == SC_PG_RETRY ? SC_READ_RETRY : SC_READ_FAILED;
}
