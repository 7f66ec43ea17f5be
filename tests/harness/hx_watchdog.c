/*
 * hx_watchdog.c - tears down whatever the harness started (PostgreSQL
 * clusters, temp directories, tmpfs mounts, child processes), even when the
 * test process is killed.
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
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hx_internal.h"

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
pid_t wd_register(const char *op, const char *arg)
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
void wd_forget(pid_t wd_pid, const char *op, const char *arg)
{
    pid_t self = getpid();

    pthread_mutex_lock(&hx_wd_lock);
    for (size_t i = 0; i < hx_nwds; i++) {
        if ((wd_pid != 0 && hx_wds[i].pid == wd_pid) || (wd_pid == 0 && hx_wds[i].owner == self))
            wd_write(&hx_wds[i], op, arg);
    }
    pthread_mutex_unlock(&hx_wd_lock);
}

void wd_track_pid(pid_t pid)
{
    char arg[32];

    snprintf(arg, sizeof(arg), "%d", (int)pid);
    wd_register("K", arg);
}

void wd_untrack_pid(pid_t pid)
{
    char arg[32];

    snprintf(arg, sizeof(arg), "%d", (int)pid);
    wd_forget(0, "U", arg);
}
