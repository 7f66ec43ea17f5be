/*
 * hx_proc.c - child processes (spawn, wait, run), temp directories, tmpfs
 * mounts and files, clocks and waiting for a condition; and what every part
 * of the harness shares: hx_fail() and the one-time process setup.
 * Whatever is started here is registered with the watchdog (see the NOTES
 * in hx_watchdog.c).
 */
#include "hx_proc.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hx_internal.h"

extern char **environ;

#define HX_MAX_OUTPUT (64u << 20) /* captured output beyond this is dropped */

/*
 * Aborts the test with a message. Also printed to stderr: a failure in an
 * unchecked fixture or a forked helper would otherwise be hard to see.
 */
void hx_fail(const char *fmt, ...)
{
    char msg[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "hx: %s\n", msg);
    fflush(stderr);
    ck_abort_msg("%s", msg);
    abort(); /* not reached: ck_abort_msg does not return */
}

static pthread_once_t hx_once = PTHREAD_ONCE_INIT;

static void hx_init_once(void)
{
    /*
     * A write to a pipe whose reader died (kafka-mock, a watchdog, a child's
     * stdin) must be an error to report, not a silent death of the test.
     * Children get SIGPIPE back to its default in hx_spawn_ex().
     */
    signal(SIGPIPE, SIG_IGN);
}

void hx_init(void)
{
    pthread_once(&hx_once, hx_init_once);
}

int64_t hx_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void hx_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

bool hx_wait_until(bool (*cond)(void *), void *arg, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;

    for (;;) {
        if (cond(arg))
            return true;
        if (hx_now_ms() >= deadline)
            return false;
        hx_sleep_ms(50);
    }
}

/* ---- process state helpers (also used by the watchdog) ------------------------- */

/*
 * Reads /proc/PID/stat: the state letter and the start time (clock ticks
 * since boot), which together with the pid identify one process for good.
 */
int proc_stat(pid_t pid, char *state, unsigned long long *starttime)
{
    char path[64], buf[1024];
    ssize_t n;
    int fd;
    char *p;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ')
        return -1;
    p += 2;
    if (state != NULL)
        *state = *p;
    if (starttime != NULL) {
        /* State is field 3, starttime field 22: skip 19 more fields. */
        for (int i = 0; i < 19 && p != NULL; i++) {
            p = strchr(p, ' ');
            if (p != NULL)
                p++;
        }
        if (p == NULL)
            return -1;
        *starttime = strtoull(p, NULL, 10);
    }
    return 0;
}

/*
 * Here PID 1 may not reap orphans: a dead orphan (a postmaster whose pg_ctl
 * exited, say) stays a zombie, and kill(pid, 0) still succeeds on it.
 */
bool hx_pid_alive(pid_t pid)
{
    char state;

    if (pid <= 0 || kill(pid, 0) != 0)
        return false;
    return proc_stat(pid, &state, NULL) == 0 && state != 'Z' && state != 'X';
}

/* Removes a directory tree; errors are ignored (best effort, used in cleanup). */
static int rm_rf_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void rm_rf(const char *dir)
{
    nftw(dir, rm_rf_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- processes -------------------------------------------------------------------- */

const char *hx_sidecar_bin(void)
{
    return HX_SIDECAR_BIN;
}

const char *hx_mock_bin(void)
{
    return HX_MOCK_BIN;
}

const char *hx_produce_bin(void)
{
    return HX_PRODUCE_BIN;
}

/* environ with env's "K=V" entries replacing or adding K, and bare "K" entries removing K. */
static char **env_merge(const char *const *env)
{
    size_t n = 0, extra = 0, k = 0;
    char **out;

    while (environ[n] != NULL)
        n++;
    while (env != NULL && env[extra] != NULL)
        extra++;
    out = calloc(n + extra + 1, sizeof(*out));
    if (out == NULL)
        hx_fail("out of memory");
    for (size_t i = 0; i < n; i++) {
        bool replaced = false;

        for (size_t j = 0; j < extra && !replaced; j++) {
            size_t klen = strcspn(env[j], "=");

            replaced = strncmp(environ[i], env[j], klen) == 0 && environ[i][klen] == '=';
        }
        if (!replaced)
            out[k++] = environ[i];
    }
    for (size_t j = 0; j < extra; j++) {
        if (strchr(env[j], '=') != NULL)
            out[k++] = (char *)env[j];
    }
    out[k] = NULL;
    return out;
}

/*
 * posix_spawnp with stdin from in_fd (-1: /dev/null) and stdout to out_fd
 * (-1: appended to log_path, NULL: /dev/null); stderr goes where stdout
 * goes unless keep_stderr. The child starts with default signal
 * dispositions and an empty mask: SIG_IGN (our SIGPIPE) would otherwise be
 * inherited across exec.
 */
pid_t hx_spawn_ex(const char *const *argv, const char *const *env, const char *cwd, int in_fd,
                  int out_fd, bool keep_stderr, const char *log_path)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, def;
    char **envp;
    pid_t pid;
    int rc;

    hx_init();
    if (argv == NULL || argv[0] == NULL)
        hx_fail("hx_spawn: empty argv");
    posix_spawn_file_actions_init(&fa);
    if (cwd != NULL)
        posix_spawn_file_actions_addchdir_np(&fa, cwd);
    if (in_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, in_fd, STDIN_FILENO);
    else
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    if (out_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
    else
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log_path ? log_path : "/dev/null",
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (!keep_stderr)
        posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    /*
     * Not every descriptor is O_CLOEXEC (Check's own message file, a test's
     * pipe): the child gets stdin, stdout and stderr only.
     */
    posix_spawn_file_actions_addclosefrom_np(&fa, STDERR_FILENO + 1);

    posix_spawnattr_init(&attr);
    sigemptyset(&none);
    sigfillset(&def);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &def);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    envp = env_merge(env);
    rc = posix_spawnp(&pid, argv[0], &fa, &attr, (char *const *)argv, envp);
    free(envp);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        hx_fail("could not run %s: %s", argv[0], strerror(rc));
    wd_track_pid(pid);
    return pid;
}

pid_t hx_spawn(const char *const *argv, const char *const *env, const char *log_path)
{
    return hx_spawn_ex(argv, env, NULL, -1, -1, false, log_path);
}

static int exit_code(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

int hx_wait(pid_t pid, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    int status, nap = 1;

    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid) {
            wd_untrack_pid(pid);
            return exit_code(status);
        }
        if (r < 0 && errno != EINTR)
            hx_fail("hx_wait(%d): %s", (int)pid, strerror(errno));
        if (timeout_ms >= 0 && hx_now_ms() >= deadline)
            return -1;
        /* Short naps first: most waits end within milliseconds. */
        hx_sleep_ms(nap);
        if (nap < 50)
            nap *= 2;
    }
}

/* Runs argv with input on stdin (NULL: /dev/null), capturing stdout+stderr. */
int hx_run_ex(const char *const *argv, const char *const *env, const char *cwd, const char *input,
              size_t input_len, int timeout_ms, char **output)
{
    int out_p[2], in_p[2] = {-1, -1};
    char *buf = NULL;
    size_t len = 0, cap = 0, written = 0;
    int64_t deadline = hx_now_ms() + timeout_ms;
    bool timed_out = false;
    pid_t pid;
    int rc;

    if (pipe2(out_p, O_CLOEXEC) != 0 || (input != NULL && pipe2(in_p, O_CLOEXEC) != 0))
        hx_fail("could not create a pipe: %s", strerror(errno));
    pid = hx_spawn_ex(argv, env, cwd, in_p[0], out_p[1], false, NULL);
    close(out_p[1]);
    if (in_p[0] >= 0)
        close(in_p[0]);
    if (in_p[1] >= 0 && input_len == 0) {
        close(in_p[1]);
        in_p[1] = -1;
    }
    if (in_p[1] >= 0)
        fcntl(in_p[1], F_SETFL, O_NONBLOCK);

    /* Feed stdin and drain stdout together: either side may fill its pipe first. */
    for (;;) {
        struct pollfd pfd[2] = {{.fd = out_p[0], .events = POLLIN},
                                {.fd = in_p[1], .events = POLLOUT}};
        int64_t left = timeout_ms >= 0 ? deadline - hx_now_ms() : 1000;
        int n;

        if (left <= 0) {
            timed_out = true;
            break;
        }
        n = poll(pfd, in_p[1] >= 0 ? 2 : 1, (int)(left < 1000 ? left : 1000));
        if (n < 0 && errno != EINTR)
            hx_fail("poll: %s", strerror(errno));
        if (n <= 0)
            continue;
        if (in_p[1] >= 0 && (pfd[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(in_p[1], input + written, input_len - written);

            if (w > 0)
                written += (size_t)w;
            if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == input_len) {
                close(in_p[1]); /* done, or the child stopped reading: EOF either way */
                in_p[1] = -1;
            }
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r;

            if (cap - len < 65536 && cap < HX_MAX_OUTPUT + 65536) {
                cap = cap ? cap * 2 : 65536;
                buf = realloc(buf, cap + 1);
                if (buf == NULL)
                    hx_fail("out of memory");
            }
            r = read(out_p[0], buf + len, cap - len > 65536 ? 65536 : cap - len);
            if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
                break;
            if (r > 0 && len + (size_t)r <= HX_MAX_OUTPUT)
                len += (size_t)r;
        }
    }
    close(out_p[0]);
    if (in_p[1] >= 0)
        close(in_p[1]);
    if (timed_out) {
        kill(pid, SIGKILL);
        hx_wait(pid, -1);
        rc = -1;
    } else {
        rc = hx_wait(pid, timeout_ms >= 0 ? (int)(deadline - hx_now_ms() + 1000) : -1);
        if (rc == -1) {
            kill(pid, SIGKILL);
            hx_wait(pid, -1);
        }
    }
    if (output != NULL) {
        if (buf == NULL && (buf = malloc(1)) == NULL)
            hx_fail("out of memory");
        buf[len] = '\0';
        *output = buf;
    } else {
        free(buf);
    }
    return rc;
}

int hx_run(const char *const *argv, const char *const *env, int timeout_ms, char **output)
{
    return hx_run_ex(argv, env, NULL, NULL, 0, timeout_ms, output);
}

int hx_run_input(const char *const *argv, const char *const *env, const char *input,
                 size_t input_len, int timeout_ms, char **output)
{
    return hx_run_ex(argv, env, NULL, input ? input : "", input_len, timeout_ms, output);
}

/* ---- files --------------------------------------------------------------------------- */

const char *hx_tmpdir(void)
{
    char tmpl[] = "/tmp/hx-XXXXXX";
    char *dir;

    if (mkdtemp(tmpl) == NULL)
        hx_fail("could not create a temp directory: %s", strerror(errno));
    /* Readable by the postgres user too, e.g. for server-side COPY in a test. */
    chmod(tmpl, 0755);
    wd_register("D", tmpl);
    /* Handed out with static lifetime: kept in a table that lives until exit, so leak
     * checkers see it as reachable. */
    static char dirs[64][sizeof(tmpl)];
    static int ndirs;
    if (ndirs == 64)
        hx_fail("hx_tmpdir: more than 64 temp directories in one process");
    dir = dirs[ndirs++];
    memcpy(dir, tmpl, sizeof(tmpl));
    return dir;
}

void hx_mount_tmpfs(const char *dir, const char *size)
{
    char opts[128];

    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        hx_fail("could not create %s: %s", dir, strerror(errno));
    snprintf(opts, sizeof(opts), "size=%s,mode=0755", size);
    wd_register("M", dir); /* first: the watchdog must unmount it even if we die right after */
    if (mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, opts) != 0)
        hx_fail("could not mount a %s tmpfs at %s: %s (this test needs root, as CI runs it)", size,
                dir, strerror(errno));
}

void hx_tmpfs_resize(const char *dir, const char *size)
{
    char opts[128];

    snprintf(opts, sizeof(opts), "size=%s,mode=0755", size);
    if (mount("tmpfs", dir, "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV, opts) != 0)
        hx_fail("could not resize the tmpfs at %s to %s: %s", dir, size, strerror(errno));
}

void hx_write_file(const char *path, const char *fmt, ...)
{
    va_list ap;
    FILE *f = fopen(path, "we");
    int rc;

    if (f == NULL)
        hx_fail("could not create file \"%s\": %s", path, strerror(errno));
    va_start(ap, fmt);
    rc = vfprintf(f, fmt, ap);
    va_end(ap);
    if (fclose(f) != 0 || rc < 0)
        hx_fail("could not write file \"%s\": %s", path, strerror(errno));
}

char *hx_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf;
    size_t n = 0;

    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) != 0)
        hx_fail("could not stat file \"%s\": %s", path, strerror(errno));
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL)
        hx_fail("out of memory");
    /* The file may grow while we read (a sink writing it): read what stat saw. */
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            hx_fail("could not read file \"%s\": %s", path, strerror(errno));
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}
