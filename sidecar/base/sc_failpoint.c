/*
 * sc_failpoint.c - test-only crash points (see sc_failpoint.h).
 */
#include "base/sc_failpoint.h"

#ifdef SC_FAILPOINTS

#include <signal.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/sc_log.h"
#include "base/sc_util.h"

struct failpoint {
    char name[48];
    char action[16];
    int arg;
    double probability; /* < 0: not used */
    long nth;           /* 0: not used */
    atomic_long passes;
};

static struct failpoint points[16];
static int npoints;

void sc_failpoint_init(void)
{
    const char *env = getenv("SIDECAR_FAILPOINTS");
    if (!env || !*env)
        return;
    char *copy = sc_xstrdup(env), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && npoints < (int)SC_ARRAY_LEN(points);
         tok = strtok_r(NULL, ",", &save)) {
        struct failpoint *fp = &points[npoints];
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = '\0';
        snprintf(fp->name, sizeof(fp->name), "%s", tok);
        char *act = eq + 1;
        fp->probability = -1;
        char *trig = strpbrk(act, "@#");
        if (trig) {
            if (*trig == '@')
                fp->probability = strtod(trig + 1, NULL);
            else
                fp->nth = strtol(trig + 1, NULL, 10);
            *trig = '\0';
        }
        char *colon = strchr(act, ':');
        if (colon) {
            fp->arg = (int)strtol(colon + 1, NULL, 10);
            *colon = '\0';
        }
        snprintf(fp->action, sizeof(fp->action), "%s", act);
        npoints++;
        sc_warn(NULL, "failpoint armed: %s=%s", fp->name, fp->action);
    }
    free(copy);
}

static struct failpoint *find(const char *name)
{
    for (int i = 0; i < npoints; i++)
        if (strcmp(points[i].name, name) == 0)
            return &points[i];
    return NULL;
}

bool sc_failpoint_is_armed(const char *name)
{
    return npoints > 0 && find(name) != NULL;
}

bool sc_failpoint_hit(const char *name)
{
    if (npoints == 0)
        return false;
    struct failpoint *fp = find(name);
    if (!fp)
        return false;
    long pass = atomic_fetch_add(&fp->passes, 1) + 1;
    if (fp->nth > 0 && pass != fp->nth)
        return false;
    if (fp->probability >= 0 && (double)sc_rand(1000000) / 1e6 >= fp->probability)
        return false;
    sc_warn(NULL, "failpoint %s fired: %s", name, fp->action);
    if (strcmp(fp->action, "kill") == 0)
        raise(SIGKILL);
    else if (strcmp(fp->action, "stop") == 0)
        raise(SIGSTOP);
    else if (strcmp(fp->action, "segv") == 0)
        raise(SIGSEGV);
    else if (strcmp(fp->action, "exit") == 0)
        _exit(99);
    else if (strcmp(fp->action, "sleep") == 0)
        sc_sleep_ms(fp->arg, NULL);
    return strcmp(fp->action, "fail") == 0;
}

#endif
