/*
 * fuzz_config.c - the configuration loader on arbitrary documents:
 * jansson parsing and our error positions, the key tables, ${VAR},
 * ${VAR:-default}, ${file:...} and $$ expansion, every value check.
 *
 * Loading reads files: ${file:PATH} in any string and pipelines[].sink
 * .ca_file.  A fuzzer must not read whatever it guesses (/etc/shadow; FIFOs
 * and devices are refused by sc_expand_read_regular_file() since fuzzing
 * found they blocked), so before loading, the input is parsed the way the
 * loader parses it and refused (-1) if any of those paths is outside FILES_DIR, a
 * directory this target fills with small known files.  The environment is
 * fixed too, so a seed means the same everywhere.
 *
 * A document that loads is also rendered back with sc_config_to_json(), the
 * code behind `sidecar check-config`, and everything is freed (LeakSanitizer
 * checks).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "config/sc_config.h"
#include "sinks/sc_sink.h"
#include "config/sc_expand.h"
#include "fuzz.h"

#define FILES_DIR "/tmp/sc-fuzz-config"

/* SC_FUZZ_VERBOSE=1 prints each input's outcome (for writing seeds). */
static bool verbose;

/* Writes FILES_DIR/name (through a rename, so concurrent fuzzers never see it half written). */
static void put_file(const char *name, const char *text, size_t len, off_t size)
{
    char path[256], tmp[256];
    snprintf(path, sizeof(path), "%s/%s", FILES_DIR, name);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%ld", FILES_DIR, name, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len || (size && ftruncate(fd, size) != 0) ||
        close(fd) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "fuzz_config: could not write file \"%s\": %s\n", path, strerror(errno));
        exit(1);
    }
}

static void files_setup(void)
{
    struct stat st;
    if (mkdir(FILES_DIR, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "fuzz_config: could not create \"%s\": %s\n", FILES_DIR, strerror(errno));
        exit(1);
    }
    /* Someone else's directory (or a symlink) in /tmp would decide what we read. */
    if (lstat(FILES_DIR, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077) != 0) {
        fprintf(stderr, "fuzz_config: \"%s\" is not a private directory of ours\n", FILES_DIR);
        exit(1);
    }
    put_file("secret", "s3cret\n", 7, 0);
    put_file("crlf", "s3cret\r\n", 8, 0);
    put_file("empty", "", 0, 0);
    put_file("nul", "a\0b\n", 4, 0);
    put_file("dollar", "${HOME}$$\n", 10, 0);
    put_file("dsn", "host=/nonexistent/sc-fuzz dbname=sidecar\n", 41, 0);
    put_file("ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 59, 0);
    /* One byte over the ${file:} limit, sparse: refused by its size, never read. */
    put_file("big", "", 0, SC_EXPAND_MAX_FILE + 1);
    if (mkdir(FILES_DIR "/dir", 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "fuzz_config: could not create \"%s/dir\": %s\n", FILES_DIR,
                strerror(errno));
        exit(1);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    files_setup();
    verbose = getenv("SC_FUZZ_VERBOSE") != NULL;
    /* The variables the seeds (the conf/ examples) use, set or unset the same way everywhere. */
    static const char *const unset[] = {
        "APP_TOKEN",           "APP_URL",
        "KAFKA_BOOTSTRAP",     "SIDECAR_ADMIN_LISTEN",
        "SIDECAR_ADMIN_TOKEN", "SIDECAR_DATA_DIR",
        "SIDECAR_LOG_LEVEL",   "SIDECAR_SHUTDOWN_TIMEOUT_MS",
    };
    for (size_t i = 0; i < sizeof(unset) / sizeof(unset[0]); i++)
        unsetenv(unset[i]);
    setenv("HOSTNAME", "fuzz-host", 1);
    setenv("SIDECAR_PG_DSN", "host=/nonexistent/sc-fuzz dbname=sidecar", 1);
    setenv("SC_FUZZ_EMPTY", "", 1);
    setenv("SC_FUZZ_NUM", "4", 1);
    setenv("SC_FUZZ_DURATION", "90s", 1);
    setenv("SC_FUZZ_TOKEN", "fuzz-token", 1);
    setenv("SC_FUZZ_FILE", FILES_DIR "/secret", 1);
    return 0;
}

/* Is path[0..len) a name directly inside FILES_DIR? */
static bool path_ok(const char *path, size_t len)
{
    const size_t plen = strlen(FILES_DIR "/");
    if (len <= plen || memcmp(path, FILES_DIR "/", plen) != 0)
        return false;
    const char *name = path + plen;
    size_t n = len - plen;
    if ((n == 1 && name[0] == '.') || (n == 2 && name[0] == '.' && name[1] == '.'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '.' && name[i] != '_' && name[i] != '-')
            return false;
    return true;
}

/*
 * Does expanding s read only files in FILES_DIR?  Every "${file:" starts a
 * file reference that ends at the next "}" (as in sc_expand()), unless it is
 * the variable form "${file:-default}"; "$${file:...}" is refused too,
 * which is stricter than needed.
 */
static bool expansion_ok(const char *s, size_t len)
{
    for (size_t i = 0; i + 7 <= len; i++) {
        if (memcmp(s + i, "${file:", 7) != 0)
            continue;
        const char *body = s + i + 7;
        const char *close = memchr(body, '}', len - i - 7);
        if (!close)
            return true; /* unterminated: an error before anything is read */
        size_t n = (size_t)(close - body);
        if (n == 0 || body[0] == '-')
            continue;
        if (!path_ok(body, n))
            return false;
    }
    return true;
}

/* Would loading j read only files in FILES_DIR? */
static bool reads_ok(const json_t *j)
{
    const char *key;
    json_t *v;
    size_t i;
    if (json_is_string(j))
        return expansion_ok(json_string_value(j), json_string_length(j));
    if (json_is_array(j)) {
        json_array_foreach(j, i, v)
        {
            if (!reads_ok(v))
                return false;
        }
    }
    if (json_is_object(j)) {
        json_object_foreach((json_t *)j, key, v)
        {
            /* ca_file is read after expansion: allow only a literal path here. */
            if (strcmp(key, "ca_file") == 0 && json_is_string(v) && json_string_length(v) > 0 &&
                (memchr(json_string_value(v), '$', json_string_length(v)) ||
                 !path_ok(json_string_value(v), json_string_length(v))))
                return false;
            if (!reads_ok(v))
                return false;
        }
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 256 * 1024)
        return -1;
    char *text = malloc(size + 1);
    if (!text)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';

    /* Parse exactly as load_text() does: up to the first NUL, after a byte order mark. */
    const char *doc = text;
    size_t len = strlen(text);
    if (len >= 3 && memcmp(doc, "\xEF\xBB\xBF", 3) == 0)
        doc += 3, len -= 3;
    json_error_t jerr;
    json_t *root = json_loadb(doc, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    bool ok = !root || reads_ok(root); /* unparsable: refused before any expansion */
    json_decref(root);
    if (!ok) {
        if (verbose)
            fprintf(stderr, "refused: reads a file outside %s\n", FILES_DIR);
        free(text);
        return -1;
    }

    struct sc_config *cfg = NULL;
    char err[4096] = "";
    if (sc_config_load_string("fuzz.json", text, &sc_sinks, &cfg, err, sizeof(err)) == 0) {
        FUZZ_CHECK(cfg != NULL, "loaded without a config");
        json_t *shown = sc_config_to_json(cfg);
        FUZZ_CHECK(shown != NULL, "sc_config_to_json failed");
        char *s = json_dumps(shown, JSON_COMPACT);
        FUZZ_CHECK(s != NULL, "the effective config does not serialise");
        if (verbose)
            fprintf(stderr, "loaded: %s\n", s);
        free(s);
        json_decref(shown);
        sc_config_free(cfg);
    } else {
        FUZZ_CHECK(cfg == NULL && err[0] != '\0', "failed without a message");
        if (verbose)
            fprintf(stderr, "%s", err);
    }
    free(text);
    return 0;
}
