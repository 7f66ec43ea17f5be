/*
 * sc_crash.c - the fatal-signal log record (see sc_crash.h).
 */
#include "base/sc_crash.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "base/sc_log.h"

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV:
        return "SIGSEGV";
    case SIGBUS:
        return "SIGBUS";
    case SIGILL:
        return "SIGILL";
    case SIGFPE:
        return "SIGFPE";
    case SIGABRT:
        return "SIGABRT";
    default:
        return "?";
    }
}

/* Appends " module+0xoffset" for each frame; the handler's own frames are left out. */
static size_t put_frames(char *buf, size_t size, size_t len)
{
    void *frames[40];
    int n = backtrace(frames, (int)(sizeof(frames) / sizeof(frames[0])));
    for (int i = 2; i < n && len + 1 < size; i++) {
        Dl_info di;
        int w;
        if (dladdr(frames[i], &di) && di.dli_fname && di.dli_fbase) {
            const char *base = strrchr(di.dli_fname, '/');
            w = snprintf(buf + len, size - len, " %s+0x%lx", base ? base + 1 : di.dli_fname,
                         (unsigned long)((uintptr_t)frames[i] - (uintptr_t)di.dli_fbase));
        } else {
            w = snprintf(buf + len, size - len, " %p", frames[i]);
        }
        if (w < 0)
            break;
        len += (size_t)w;
    }
    return len < size ? len : size - 1;
}

static void on_fatal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    /* If anything below blocks on a lock the crashed thread held, die anyway. */
    signal(SIGALRM, SIG_DFL);
    alarm(3);
    char thread[17] = "";
    prctl(PR_GET_NAME, thread, 0, 0, 0);
    char origin[64] = "";
    if (si && si->si_code > 0) /* raised by the kernel: a fault at an address */
        snprintf(origin, sizeof(origin), " at address %p", si->si_addr);
    else if (si)
        snprintf(origin, sizeof(origin), " sent by pid %ld", (long)si->si_pid);
    char msg[1900];
    int w = snprintf(msg, sizeof(msg),
                     "fatal signal %d (%s) in thread \"%s\"%s: the process stops; its pending "
                     "checkpoints make the restart a replay, not a loss. Please report this "
                     "line. Backtrace (addr2line -f -e MODULE OFFSET):",
                     sig, signal_name(sig), thread, origin);
    size_t len = w > 0 ? (size_t)w : 0;
    if (len >= sizeof(msg))
        len = sizeof(msg) - 1;
    put_frames(msg, sizeof(msg), len);
    sc_error(NULL, "%s", msg);
    /* SA_RESETHAND restored the default action: the signal ends the process on return. */
    raise(sig);
}

void sc_crash_install(void)
{
    /* The first backtrace() loads libgcc: do it now, not in the handler. */
    void *warm[2];
    (void)backtrace(warm, 2);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
        sigaction(fatal_signals[i], &sa, NULL);
}
