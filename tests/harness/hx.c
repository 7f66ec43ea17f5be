/*
 * hx.c - the integration test harness: throwaway PostgreSQL clusters, the
 * kafka-mock child, producers of known records and child process helpers.
 *
 * NOTES on teardown
 *
 * A test may die at any point: an assertion, a crash, Check's timeout
 * (SIGKILL to the test's process group), or a SIGKILL from outside. Nothing
 * it started may outlive it: not a PostgreSQL server (which pg_ctl puts in
 * its own session, out of reach of any process-group kill), not a temp
 * directory, not a spawned sidecar.
 *
 * So each process that starts resources gets one watchdog process (created
 * lazily, one per pid). The watchdog holds the read end of a pipe; the write
 * end is O_CLOEXEC and stays in the owning process. Before a resource
 * exists, the owner registers it by writing one line to the pipe ("P dir"
 * for a PostgreSQL cluster, "D dir" for a directory, "K pid" for a child
 * process, "M dir" for a tmpfs mounted there; "F"/"U" forget one again). The watchdog reads until
 * EOF, which happens exactly when every holder of the write end is gone: then it kills the tracked
 * processes, stops the clusters (SIGQUIT to the postmaster, an immediate shutdown), unmounts the
 * tmpfs mounts and removes the directories.
 *
 * Who holds a write end decides lifetimes, and that matches Check:
 *  - exec'd children (pg_ctl, kafka-mock, the sidecar) never hold one
 *    (O_CLOEXEC), so they cannot keep a watchdog waiting;
 *  - Check runs each test in a fork()ed child, which inherits the runner's
 *    write ends: servers started by an unchecked fixture (in the runner)
 *    survive every test and are cleaned up when the runner exits;
 *  - a resource started inside a test registers with the test process's own
 *    watchdog (a new pid gets a new watchdog) and dies with that test;
 *  - the watchdog closes every inherited descriptor but its read end (or two
 *    watchdogs would keep each other's pipes open) and calls setsid(), so
 *    Check's kill of the test's process group does not take it down too.
 * On a normal exit (a test that passed or failed an assertion) an atexit
 * handler closes the write end and reaps the watchdog, so the cleanup is
 * finished before Check runs the next test; only a death without exit
 * handlers (a signal, Check's timeout) leaves it to run behind our back.
 * Messages are single write()s shorter than PIPE_BUF, hence atomic.
 */
#include "hx.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "seq_value.h"

extern char **environ;

#define HX_MAX_OUTPUT    (64u << 20) /* captured output beyond this is dropped */
#define HX_PG_START_MS   60000
#define HX_MOCK_REPLY_MS 30000

static void hx_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/*
 * Aborts the test with a message. Also printed to stderr: a failure in an
 * unchecked fixture or a forked helper would otherwise be hard to see.
 */
static void hx_fail(const char *fmt, ...)
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

static void hx_init(void)
{
    pthread_once(&hx_once, hx_init_once);
}

int64_t hx_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hx_sleep_ms(int ms)
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
static int proc_stat(pid_t pid, char *state, unsigned long long *starttime)
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

static void rm_rf(const char *dir)
{
    nftw(dir, rm_rf_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The postmaster's pid from DIR/data/postmaster.pid, or -1. */
static pid_t pg_dir_postmaster(const char *dir)
{
    char path[600], buf[32];
    ssize_t n;
    int fd;
    long pid;

    snprintf(path, sizeof(path), "%s/data/postmaster.pid", dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    pid = strtol(buf, NULL, 10);
    return pid > 0 ? (pid_t)pid : -1;
}

/* Immediate shutdown of the cluster in dir (SIGQUIT, as pg_ctl -m immediate), then SIGKILL. */
static void pg_dir_kill(const char *dir)
{
    pid_t pid = pg_dir_postmaster(dir);
    char comm[64] = "", path[64];
    int fd;
    ssize_t n;

    if (!hx_pid_alive(pid))
        return;
    /* A stale postmaster.pid may name a recycled pid: only signal a postgres. */
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = read(fd, comm, sizeof(comm) - 1);
        comm[n > 0 ? n : 0] = '\0';
        close(fd);
    }
    if (strncmp(comm, "postgres", 8) != 0)
        return;
    kill(pid, SIGQUIT);
    for (int i = 0; i < 500 && hx_pid_alive(pid); i++)
        hx_sleep_ms(20);
    if (hx_pid_alive(pid)) {
        kill(pid, SIGKILL);
        for (int i = 0; i < 100 && hx_pid_alive(pid); i++)
            hx_sleep_ms(20);
    }
}

/* ---- the watchdog -------------------------------------------------------------- */

#define WD_MAX_DIRS   256
#define WD_MAX_PIDS   1024
#define WD_MAX_MOUNTS 16

struct wd_state {
    struct {
        char path[512];
        bool pg; /* a PostgreSQL cluster lives in path/data */
    } dirs[WD_MAX_DIRS];
    size_t ndirs;
    struct {
        pid_t pid;
        unsigned long long starttime;
    } pids[WD_MAX_PIDS];
    size_t npids;
    char mounts[WD_MAX_MOUNTS][512];
    size_t nmounts;
};

static void wd_apply(struct wd_state *s, char *line)
{
    char op = line[0];
    const char *arg = line[1] == ' ' ? line + 2 : "";

    switch (op) {
    case 'P':
    case 'D':
        if (s->ndirs < WD_MAX_DIRS && strlen(arg) < sizeof(s->dirs[0].path)) {
            snprintf(s->dirs[s->ndirs].path, sizeof(s->dirs[0].path), "%s", arg);
            s->dirs[s->ndirs++].pg = op == 'P';
        }
        break;
    case 'F':
        for (size_t i = 0; i < s->ndirs;) {
            if (strcmp(s->dirs[i].path, arg) == 0)
                s->dirs[i] = s->dirs[--s->ndirs];
            else
                i++;
        }
        break;
    case 'M':
        if (s->nmounts < WD_MAX_MOUNTS && strlen(arg) < sizeof(s->mounts[0]))
            snprintf(s->mounts[s->nmounts++], sizeof(s->mounts[0]), "%s", arg);
        break;
    case 'K': {
        pid_t pid = (pid_t)strtol(arg, NULL, 10);
        unsigned long long st;

        /* Already gone: nothing to kill later, and its pid may be reused. */
        if (pid > 0 && s->npids < WD_MAX_PIDS && proc_stat(pid, NULL, &st) == 0) {
            s->pids[s->npids].pid = pid;
            s->pids[s->npids++].starttime = st;
        }
        break;
    }
    case 'U': {
        pid_t pid = (pid_t)strtol(arg, NULL, 10);

        for (size_t i = 0; i < s->npids;) {
            if (s->pids[i].pid == pid)
                s->pids[i] = s->pids[--s->npids];
            else
                i++;
        }
        break;
    }
    default:
        break;
    }
}

static void wd_cleanup(struct wd_state *s)
{
    for (size_t i = 0; i < s->npids; i++) {
        unsigned long long st;

        /* Same pid and start time: still the process we were told about. */
        if (proc_stat(s->pids[i].pid, NULL, &st) == 0 && st == s->pids[i].starttime)
            kill(s->pids[i].pid, SIGKILL);
    }
    /* Before the directories they live in are removed; lazily, in case a file is open. */
    for (size_t i = 0; i < s->nmounts; i++)
        umount2(s->mounts[i], MNT_DETACH);
    for (size_t i = 0; i < s->ndirs; i++) {
        if (s->dirs[i].pg)
            pg_dir_kill(s->dirs[i].path);
        rm_rf(s->dirs[i].path);
    }
}

static void wd_main(int fd) __attribute__((noreturn));

static void wd_main(int fd)
{
    static struct wd_state s;
    char buf[8192];
    size_t len = 0;

    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        char *nl;

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* EOF: every owner of the write end is gone */
        len += (size_t)n;
        while ((nl = memchr(buf, '\n', len)) != NULL) {
            *nl = '\0';
            wd_apply(&s, buf);
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len);
        }
        if (len == sizeof(buf))
            len = 0; /* cannot happen with our short lines; never wedge */
    }
    wd_cleanup(&s);
    _exit(0);
}

/* The watchdogs this process can write to: its own and those inherited from ancestors. */
static struct hx_wd {
    pid_t owner; /* the process the watchdog guards */
    pid_t pid;
    int fd;
} hx_wds[16];
static size_t hx_nwds;
static pthread_mutex_t hx_wd_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * At a normal exit (a test that ends, passes or fails) the cleanup is done
 * before the process is gone rather than behind its back: close our write
 * ends and reap the watchdogs. Bounded, in case a forked child of ours that
 * never exec'd still holds a write end.
 */
static void wd_atexit(void)
{
    pid_t self = getpid();

    for (size_t i = 0; i < hx_nwds; i++) {
        if (hx_wds[i].owner != self || hx_wds[i].fd < 0)
            continue;
        close(hx_wds[i].fd);
        hx_wds[i].fd = -1;
        for (int t = 0; t < 400 && waitpid(hx_wds[i].pid, NULL, WNOHANG) == 0; t++)
            hx_sleep_ms(50);
    }
}

/* This process's watchdog, started on first use. */
static struct hx_wd *wd_self(void)
{
    static bool atexit_registered; /* inherited by fork, like the registration itself */
    pid_t self = getpid();
    int p[2];
    pid_t pid;

    for (size_t i = 0; i < hx_nwds; i++) {
        if (hx_wds[i].owner == self)
            return &hx_wds[i];
    }
    if (hx_nwds == sizeof(hx_wds) / sizeof(hx_wds[0]))
        hx_fail("too many nested processes with watchdogs");
    if (pipe2(p, O_CLOEXEC) != 0)
        hx_fail("could not create the watchdog pipe: %s", strerror(errno));
    pid = fork();
    if (pid < 0)
        hx_fail("could not fork the watchdog: %s", strerror(errno));
    if (pid == 0) {
        sigset_t all;
        /* Above stderr, so the dup2()s below cannot clobber it even if stdin was closed. */
        int rfd = p[0] > STDERR_FILENO ? p[0] : fcntl(p[0], F_DUPFD, STDERR_FILENO + 1);
        int null_fd = open("/dev/null", O_RDWR);

        setsid();
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGALRM, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        /* stdin/stdout to /dev/null; stderr stays for the record. */
        if (null_fd >= 0) {
            dup2(null_fd, STDIN_FILENO);
            dup2(null_fd, STDOUT_FILENO);
        }
        if (rfd > STDERR_FILENO + 1)
            close_range(STDERR_FILENO + 1, (unsigned)rfd - 1, 0);
        close_range((unsigned)rfd + 1, ~0u, 0);
        if (chdir("/") != 0) {
            /* not fatal: only keeps the watchdog out of directories it removes */
        }
        wd_main(rfd);
    }
    close(p[0]);
    if (!atexit_registered) {
        atexit(wd_atexit);
        atexit_registered = true;
    }
    hx_wds[hx_nwds] = (struct hx_wd){.owner = self, .pid = pid, .fd = p[1]};
    return &hx_wds[hx_nwds++];
}

static void wd_write(const struct hx_wd *wd, const char *op, const char *arg)
{
    char line[1024];
    int n = snprintf(line, sizeof(line), "%s %s\n", op, arg);

    if (wd->fd < 0)
        return; /* exiting: the watchdog is cleaning up already */
    if (n < 0 || (size_t)n >= sizeof(line))
        hx_fail("watchdog message too long: %s %s", op, arg);
    while (write(wd->fd, line, (size_t)n) < 0) {
        if (errno != EINTR)
            hx_fail("could not reach the watchdog (pid %d): %s", (int)wd->pid, strerror(errno));
    }
}

/* Registers a resource with this process's watchdog; returns its pid. */
static pid_t wd_register(const char *op, const char *arg)
{
    struct hx_wd *wd;

    hx_init();
    pthread_mutex_lock(&hx_wd_lock);
    wd = wd_self();
    wd_write(wd, op, arg);
    pthread_mutex_unlock(&hx_wd_lock);
    return wd->pid;
}

/* Forgets a resource; sent to the watchdog it was registered with (0: this process's). */
static void wd_forget(pid_t wd_pid, const char *op, const char *arg)
{
    pid_t self = getpid();

    pthread_mutex_lock(&hx_wd_lock);
    for (size_t i = 0; i < hx_nwds; i++) {
        if ((wd_pid != 0 && hx_wds[i].pid == wd_pid) || (wd_pid == 0 && hx_wds[i].owner == self))
            wd_write(&hx_wds[i], op, arg);
    }
    pthread_mutex_unlock(&hx_wd_lock);
}

static void wd_track_pid(pid_t pid)
{
    char arg[32];

    snprintf(arg, sizeof(arg), "%d", (int)pid);
    wd_register("K", arg);
}

static void wd_untrack_pid(pid_t pid)
{
    char arg[32];

    snprintf(arg, sizeof(arg), "%d", (int)pid);
    wd_forget(0, "U", arg);
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
static pid_t hx_spawn_ex(const char *const *argv, const char *const *env, const char *cwd,
                         int in_fd, int out_fd, bool keep_stderr, const char *log_path)
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
static int hx_run_ex(const char *const *argv, const char *const *env, const char *cwd,
                     const char *input, size_t input_len, int timeout_ms, char **output)
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

/* ---- PostgreSQL ------------------------------------------------------------------------ */

/* The bin directory of the newest installed PostgreSQL major version. */
static void pg_find_bindir(char *out, size_t size)
{
    glob_t g;
    long best = -1;

    if (glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, NULL, &g) != 0)
        hx_fail("no PostgreSQL server found (/usr/lib/postgresql/*/bin/pg_ctl)");
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *v = g.gl_pathv[i] + strlen("/usr/lib/postgresql/");
        long major = strtol(v, NULL, 10);

        if (major > best) {
            best = major;
            snprintf(out, size, "%.*s", (int)(strrchr(g.gl_pathv[i], '/') - g.gl_pathv[i]),
                     g.gl_pathv[i]);
        }
    }
    globfree(&g);
}

/* A port that was free a moment ago; start_server retries if someone took it meanwhile. */
static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) != 0)
        hx_fail("could not find a free port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

/* The last lines of the server log, for failure messages. */
static void pg_log_tail(const struct hx_pg *pg, char *out, size_t size)
{
    char path[600];
    size_t len;
    char *log;

    snprintf(path, sizeof(path), "%s/pg.log", pg->dir);
    log = hx_read_file(path, &len);
    if (log == NULL) {
        snprintf(out, size, "(no server log)");
        return;
    }
    snprintf(out, size, "%s", len > 1500 ? log + len - 1500 : log);
    free(log);
}

/*
 * Runs a PostgreSQL program from bindir, as the postgres user when we are
 * root (initdb and pg_ctl refuse to run as root), with the cluster directory
 * as working directory (root's cwd may not be readable by postgres).
 */
static int pg_run(const struct hx_pg *pg, const char *prog, const char *const *args, char **output)
{
    const char *argv[32];
    char path[400];
    size_t n = 0;

    if (geteuid() == 0) {
        argv[n++] = "runuser";
        argv[n++] = "-u";
        argv[n++] = "postgres";
        argv[n++] = "--";
    }
    snprintf(path, sizeof(path), "%s/%s", pg->bindir, prog);
    argv[n++] = path;
    for (size_t i = 0; args[i] != NULL && n < sizeof(argv) / sizeof(argv[0]) - 1; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return hx_run_ex(argv, NULL, pg->dir, NULL, 0, HX_PG_START_MS + 30000, output);
}

/* The paths and server options of a cluster; the same for every start. */
struct pg_paths {
    char data[600];
    char log[600];
    char opts[1024];
};

static void pg_paths(const struct hx_pg *pg, struct pg_paths *p)
{
    snprintf(p->data, sizeof(p->data), "%s/data", pg->dir);
    snprintf(p->log, sizeof(p->log), "%s/pg.log", pg->dir);
    /*
     * fsync=off: a throwaway cluster; data still survives a server crash
     * (the OS keeps it), which is all the crash tests need. The socket dir
     * is private so parallel clusters never collide on /var/run/postgresql.
     */
    snprintf(p->opts, sizeof(p->opts),
             "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 "
             "-c shared_buffers=64MB",
             pg->port, pg->dir);
}

/* pg_ctl start; 0 or the exit code, with pg_ctl's output in *output. */
static int pg_ctl_start(struct hx_pg *pg, char **output)
{
    struct pg_paths p;

    pg_paths(pg, &p);
    return pg_run(pg, "pg_ctl",
                  (const char *const[]){"start", "-w", "-t", "60", "-D", p.data, "-l", p.log, "-o",
                                        p.opts, NULL},
                  output);
}

void hx_pg_start(struct hx_pg *pg)
{
    char data[600], tail[1600];
    char *out = NULL;
    int rc = -1;

    memset(pg, 0, sizeof(*pg));
    pg_find_bindir(pg->bindir, sizeof(pg->bindir));
    snprintf(pg->dir, sizeof(pg->dir), "/tmp/hx-pg-XXXXXX");
    if (mkdtemp(pg->dir) == NULL)
        hx_fail("could not create a temp directory: %s", strerror(errno));
    /* Registered before anything runs in it: a crash from here on is cleaned up. */
    pg->watchdog = wd_register("P", pg->dir);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");

        if (pw == NULL)
            hx_fail("running as root but there is no postgres user to run the server as");
        if (chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0)
            hx_fail("could not chown \"%s\" to postgres: %s", pg->dir, strerror(errno));
    }
    snprintf(data, sizeof(data), "%s/data", pg->dir);
    rc = pg_run(pg, "initdb",
                (const char *const[]){"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                      "--locale=C", "--no-sync", "--no-instructions", NULL},
                &out);
    if (rc != 0)
        hx_fail("initdb in %s failed (exit %d): %s", data, rc, out);
    free(out);

    /* The free port may be taken between probing and binding: try a few. */
    for (int attempt = 0; attempt < 5; attempt++) {
        pg->port = free_port();
        out = NULL;
        rc = pg_ctl_start(pg, &out);
        if (rc == 0)
            break;
        if (attempt < 4)
            free(out);
    }
    if (rc != 0) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("could not start PostgreSQL in %s (pg_ctl exit %d): %s\nserver log:\n%s", pg->dir,
                rc, out, tail);
    }
    free(out);
    snprintf(pg->dsn, sizeof(pg->dsn), "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             pg->port);
}

static void pg_ctl_stop(struct hx_pg *pg, const char *mode, bool must)
{
    char data[600], tail[1600];
    char *out = NULL;
    int rc;

    snprintf(data, sizeof(data), "%s/data", pg->dir);
    rc =
        pg_run(pg, "pg_ctl",
               (const char *const[]){"stop", "-w", "-t", "60", "-m", mode, "-D", data, NULL}, &out);
    if (rc != 0 && must) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("pg_ctl stop -m %s in %s failed (exit %d): %s\nserver log:\n%s", mode, pg->dir, rc,
                out, tail);
    }
    free(out);
}

void hx_pg_stop(struct hx_pg *pg)
{
    if (pg->dir[0] == '\0')
        return;
    /* The server may already be down (an outage test): not an error here. */
    if (pg_dir_postmaster(pg->dir) > 0)
        pg_ctl_stop(pg, "fast", false);
    pg_dir_kill(pg->dir); /* in case the clean stop failed */
    rm_rf(pg->dir);
    wd_forget(pg->watchdog, "F", pg->dir);
    memset(pg, 0, sizeof(*pg));
}

void hx_pg_server_stop(struct hx_pg *pg, bool immediate)
{
    pg_ctl_stop(pg, immediate ? "immediate" : "fast", true);
}

void hx_pg_server_start(struct hx_pg *pg)
{
    char tail[1600];
    char *out = NULL;
    int rc = pg_ctl_start(pg, &out);

    if (rc != 0) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("could not restart PostgreSQL on port %d (pg_ctl exit %d): %s\nserver log:\n%s",
                pg->port, rc, out, tail);
    }
    free(out);
}

void hx_pg_restart(struct hx_pg *pg, bool immediate)
{
    struct pg_paths p;
    char tail[1600];
    char *out = NULL;
    int rc;

    pg_paths(pg, &p);
    rc = pg_run(pg, "pg_ctl",
                (const char *const[]){"restart", "-w", "-t", "60", "-m",
                                      immediate ? "immediate" : "fast", "-D", p.data, "-l", p.log,
                                      "-o", p.opts, NULL},
                &out);
    if (rc != 0) {
        pg_log_tail(pg, tail, sizeof(tail));
        hx_fail("pg_ctl restart failed (exit %d): %s\nserver log:\n%s", rc, out, tail);
    }
    free(out);
}

pid_t hx_pg_pid(const struct hx_pg *pg)
{
    pid_t pid = pg->dir[0] ? pg_dir_postmaster(pg->dir) : -1;

    return hx_pid_alive(pid) ? pid : -1;
}

void hx_pg_create_db(struct hx_pg *pg, const char *name, char *dsn, size_t dsn_size)
{
    PGconn *conn = hx_pg_connect(pg->dsn);
    char *ident = PQescapeIdentifier(conn, name, strlen(name));
    char sql[512];

    if (ident == NULL)
        hx_fail("bad database name \"%s\": %s", name, PQerrorMessage(conn));
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", ident);
    PQfreemem(ident);
    hx_pg_exec(conn, sql);
    PQfinish(conn);
    /* libpq conninfo quoting: a name with spaces or quotes still works. */
    {
        char quoted[256];
        size_t q = 0;

        for (const char *c = name; *c != '\0' && q < sizeof(quoted) - 3; c++) {
            if (*c == '\'' || *c == '\\')
                quoted[q++] = '\\';
            quoted[q++] = *c;
        }
        quoted[q] = '\0';
        snprintf(dsn, dsn_size, "host=127.0.0.1 port=%d user=postgres dbname='%s'", pg->port,
                 quoted);
    }
}

PGconn *hx_pg_connect(const char *dsn)
{
    PGconn *conn = PQconnectdb(dsn);

    if (PQstatus(conn) != CONNECTION_OK) {
        char msg[1024];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        PQfinish(conn);
        hx_fail("could not connect to \"%s\": %s", dsn, msg);
    }
    return conn;
}

void hx_pg_exec(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[1024];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        PQclear(res);
        hx_fail("SQL failed: %.300s: %s", sql, msg);
    }
    PQclear(res);
}

char *hx_pg_value(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
    PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    char *v = NULL;

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[1024];

        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        PQclear(res);
        hx_fail("query failed: %.300s: %s", sql, msg);
    }
    if (PQnfields(res) != 1 || PQntuples(res) > 1) {
        int rows = PQntuples(res), cols = PQnfields(res);

        PQclear(res);
        hx_fail("query gave %d rows of %d columns, expected one value: %.300s", rows, cols, sql);
    }
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        v = strdup(PQgetvalue(res, 0, 0));
        if (v == NULL)
            hx_fail("out of memory");
    }
    PQclear(res);
    return v;
}

long long hx_pg_int(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
    char *v = hx_pg_value(conn, sql, nparams, params), *end;
    long long n;

    if (v == NULL)
        hx_fail("query gave NULL (or no row), expected an integer: %.300s", sql);
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0' || end == v) {
        char copy[64];

        snprintf(copy, sizeof(copy), "%s", v);
        free(v);
        hx_fail("query gave \"%s\", expected an integer: %.300s", copy, sql);
    }
    free(v);
    return n;
}

/* ---- kafka-mock ------------------------------------------------------------------------ */

/*
 * Reads one line from fd within timeout_ms, byte by byte: the mock writes
 * exactly one line per command, and reading past it would steal the next.
 * Returns 0, or -1 on EOF, -2 on timeout.
 */
static int read_line(int fd, char *buf, size_t size, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    size_t n = 0;

    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - hx_now_ms();
        ssize_t r;
        char c;

        if (left <= 0)
            return -2;
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        r = read(fd, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        if (c == '\n')
            break;
        if (n + 1 < size)
            buf[n++] = c;
    }
    buf[n] = '\0';
    return 0;
}

void hx_mock_start(struct hx_mock *m, int brokers, const char *const *topics, size_t ntopics)
{
    const char *argv[8 + 2 * 64];
    char nbrokers[16];
    int in_p[2], out_p[2];
    size_t n = 0;
    int rc;

    memset(m, 0, sizeof(*m));
    if (ntopics > 64)
        hx_fail("hx_mock_start: at most 64 topics");
    snprintf(nbrokers, sizeof(nbrokers), "%d", brokers);
    argv[n++] = hx_mock_bin();
    argv[n++] = "--brokers";
    argv[n++] = nbrokers;
    for (size_t i = 0; i < ntopics; i++) {
        argv[n++] = "--topic";
        argv[n++] = topics[i];
    }
    argv[n] = NULL;
    if (pipe2(in_p, O_CLOEXEC) != 0 || pipe2(out_p, O_CLOEXEC) != 0)
        hx_fail("could not create a pipe: %s", strerror(errno));
    /* The mock's stderr stays ours: its complaints show in the test output, not in replies. */
    m->pid = hx_spawn_ex(argv, NULL, NULL, in_p[0], out_p[1], true, NULL);
    close(in_p[0]);
    close(out_p[1]);
    m->in_fd = in_p[1];
    m->out_fd = out_p[0];
    rc = read_line(m->out_fd, m->bootstrap, sizeof(m->bootstrap), HX_MOCK_REPLY_MS);
    if (rc != 0 || strchr(m->bootstrap, ':') == NULL) {
        int code = hx_wait(m->pid, 5000);

        hx_fail("kafka-mock did not print its bootstrap address (%s, exit %d)",
                rc == -2 ? "timeout" : "it exited", code);
    }
}

int hx_mock_cmd(struct hx_mock *m, char *reply, size_t reply_size, const char *fmt, ...)
{
    char line[4096], answer[4096];
    va_list ap;
    int n, rc;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(line) - 1 || memchr(line, '\n', (size_t)n) != NULL)
        hx_fail("hx_mock_cmd: bad command \"%.100s\"", line);
    line[n++] = '\n';
    for (ssize_t off = 0, w; off < n; off += w) {
        w = write(m->in_fd, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            w = 0;
        else if (w < 0)
            hx_fail("kafka-mock is gone (writing \"%.*s\"): %s", n - 1, line, strerror(errno));
    }
    rc = read_line(m->out_fd, answer, sizeof(answer), HX_MOCK_REPLY_MS);
    if (rc != 0)
        hx_fail("kafka-mock gave no reply to \"%.*s\" (%s)", n - 1, line,
                rc == -2 ? "timeout after 30 s" : "it exited");
    if (strncmp(answer, "ok", 2) == 0 && (answer[2] == '\0' || answer[2] == ' ')) {
        if (reply != NULL && reply_size > 0)
            snprintf(reply, reply_size, "%s", answer[2] ? answer + 3 : "");
        return 0;
    }
    if (strncmp(answer, "error: ", 7) == 0) {
        if (reply != NULL && reply_size > 0)
            snprintf(reply, reply_size, "%s", answer + 7);
        return -1;
    }
    hx_fail("kafka-mock answered \"%s\" to \"%.*s\"", answer, n - 1, line);
}

void hx_mock_stop(struct hx_mock *m)
{
    char answer[64];

    if (m->pid <= 0)
        return;
    /* quit, then EOF on its stdin: either one ends it. */
    if (write(m->in_fd, "quit\n", 5) == 5)
        read_line(m->out_fd, answer, sizeof(answer), 5000);
    close(m->in_fd);
    close(m->out_fd);
    if (hx_wait(m->pid, 10000) == -1) {
        kill(m->pid, SIGKILL);
        hx_wait(m->pid, -1);
    }
    memset(m, 0, sizeof(*m));
}

/* ---- producing ----------------------------------------------------------------------- */

struct hx_dr {
    long long delivered, failed;
    char first_error[256];
};

static void hx_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct hx_dr *dr = opaque;

    (void)rk;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        dr->delivered++;
    } else if (dr->failed++ == 0) {
        snprintf(dr->first_error, sizeof(dr->first_error), "%s [%" PRId32 "]: %s",
                 rd_kafka_topic_name(msg->rkt), msg->partition, rd_kafka_err2str(msg->err));
    }
}

static rd_kafka_t *hx_producer(const char *bootstrap, const char *compression, struct hx_dr *dr)
{
    const char *props[][2] = {
        {"bootstrap.servers", bootstrap},
        {"acks", "all"},
        {"linger.ms", "5"},
        {"compression.type", compression},
        {"queue.buffering.max.messages", "1000000"},
        /* Fail within a test's patience rather than librdkafka's default 5 minutes. */
        {"message.timeout.ms", "60000"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char errstr[512];
    rd_kafka_t *rk;

    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++) {
        if (rd_kafka_conf_set(conf, props[i][0], props[i][1], errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK)
            hx_fail("producer config %s: %s", props[i][0], errstr);
    }
    rd_kafka_conf_set_dr_msg_cb(conf, hx_on_delivery);
    rd_kafka_conf_set_opaque(conf, dr);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL)
        hx_fail("could not create a producer: %s", errstr);
    return rk;
}

/*
 * Checks that topic has at least min_partitions. Asks for all topics:
 * naming an unknown topic in a Metadata request makes the mock create it
 * with 4 partitions, which would hide a typo in a test.
 */
static void hx_check_topic(rd_kafka_t *rk, const char *topic, int32_t min_partitions)
{
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, &md, 30000);
    int n = -1;

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        hx_fail("could not fetch metadata: %s", rd_kafka_err2str(err));
    for (int i = 0; i < md->topic_cnt; i++) {
        if (strcmp(md->topics[i].topic, topic) == 0)
            n = md->topics[i].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    if (n < 0)
        hx_fail("topic \"%s\" does not exist (create it with kafka-mock)", topic);
    if (n < min_partitions)
        hx_fail("topic \"%s\" has %d partitions, need %" PRId32, topic, n, min_partitions);
}

static void hx_producev(rd_kafka_t *rk, const char *topic, int32_t partition, const void *key,
                        size_t key_len, const void *value, size_t value_len,
                        rd_kafka_headers_t *hdrs, int64_t timestamp)
{
    rd_kafka_resp_err_t err;

    /* A full local queue only means the brokers are slower than us: serve reports, retry. */
    do {
        err = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
            RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_TIMESTAMP(timestamp),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
    } while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && rd_kafka_poll(rk, 10) >= 0);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        hx_fail("could not produce to %s [%" PRId32 "]: %s", topic, partition,
                rd_kafka_err2str(err));
}

/* Waits for every delivery report and aborts unless all n records were acknowledged. */
static void hx_producer_finish(rd_kafka_t *rk, struct hx_dr *dr, long long n)
{
    while (rd_kafka_outq_len(rk) > 0)
        rd_kafka_flush(rk, 1000);
    rd_kafka_destroy(rk);
    if (dr->failed > 0 || dr->delivered != n)
        hx_fail("%lld of %lld records were not delivered; first error: %s", n - dr->delivered, n,
                dr->first_error[0] ? dr->first_error : "(none)");
}

void hx_produce(const char *bootstrap, const struct hx_record *recs, size_t n)
{
    struct hx_dr dr = {0};
    rd_kafka_t *rk = hx_producer(bootstrap, "none", &dr);

    for (size_t i = 0; i < n; i++) {
        bool seen = false;

        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(recs[j].topic, recs[i].topic) == 0;
        if (!seen) {
            int32_t max = 0;

            for (size_t j = i; j < n; j++) {
                if (strcmp(recs[j].topic, recs[i].topic) == 0 && recs[j].partition + 1 > max)
                    max = recs[j].partition + 1;
            }
            hx_check_topic(rk, recs[i].topic, max);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct hx_record *r = &recs[i];
        rd_kafka_headers_t *hdrs = NULL;

        if (r->partition < 0)
            hx_fail("hx_produce: record %zu has no explicit partition", i);
        if (r->nheaders > 0) {
            hdrs = rd_kafka_headers_new(r->nheaders);
            for (size_t h = 0; h < r->nheaders; h++)
                rd_kafka_header_add(hdrs, r->headers[h].name, -1, r->headers[h].value,
                                    r->headers[h].value ? (ssize_t)r->headers[h].len : 0);
        }
        hx_producev(rk, r->topic, r->partition, r->key, r->key_len, r->value, r->value_len, hdrs,
                    r->timestamp);
        rd_kafka_poll(rk, 0);
    }
    hx_producer_finish(rk, &dr, (long long)n);
}

void hx_produce_seq(const char *bootstrap, const char *topic, int partitions, int64_t first_seq,
                    int64_t count)
{
    struct hx_dr dr = {0};
    rd_kafka_t *rk = hx_producer(bootstrap, "lz4", &dr);
    char key[32], value[512];

    hx_check_topic(rk, topic, partitions);
    for (int64_t seq = first_seq; seq < first_seq + count; seq++) {
        for (int32_t p = 0; p < partitions; p++) {
            int klen = snprintf(key, sizeof(key), "k%" PRId64, seq);
            int vlen = seq_value_format(value, sizeof(value), topic, p, seq);

            hx_producev(rk, topic, p, key, (size_t)klen, value, (size_t)vlen, NULL, 0);
        }
        if (seq % 1000 == 0)
            rd_kafka_poll(rk, 0);
    }
    hx_producer_finish(rk, &dr, (long long)count * partitions);
}

const char *hx_seq_value(const char *topic, int32_t partition, int64_t seq, char *buf, size_t size)
{
    seq_value_format(buf, size, topic, partition, seq);
    return buf;
}
