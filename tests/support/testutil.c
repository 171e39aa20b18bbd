/*
 * testutil.c — see testutil.h.
 */
#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uvmlease_broker.h"
#include "ul_sys.h"

void ut_tmpdir(const char *tag, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "/tmp/ul-test-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= outsz)
        cr_assert_fail("tmpdir name too long");
    if (!mkdtemp(out))
        cr_assert_fail("mkdtemp: %s", strerror(errno));
}

static int s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? 0 : 0;
}

void ut_rmrf(const char *path)
{
    if (path && *path)
        nftw(path, s_rm, 16, FTW_DEPTH | FTW_PHYS);
}

pid_t ut_fork(void)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        cr_assert_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
    }
    return pid;
}

int ut_wait(pid_t pid, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0 && errno != EINTR)
            return -1;
        if (ul_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

int ut_wait_code(pid_t pid, int timeout_ms)
{
    int st = ut_wait(pid, timeout_ms);
    if (st == -1)
        return -1;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 1000 + WTERMSIG(st);
    return -1;
}

bool ut_wait_until(bool (*pred)(void *ctx), void *ctx, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (pred(ctx))
            return true;
        if (ul_now_ms() >= deadline)
            return false;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

long ut_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t flen = strlen(field);
    long v = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            v = strtol(line + flen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static void s_quiet_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    (void)line;
}

uvmlease_broker *ut_broker_start(const uvmlease_broker_config *cfg, char *dir)
{
    uvmlease_broker_config c;
    if (cfg)
        c = *cfg;
    else
        uvmlease_broker_config_init(&c);
    ut_tmpdir("broker", dir, 256);
    c.runtime_dir = dir;
    if (!getenv("UL_TEST_VERBOSE") && !c.log_sink)
        c.log_sink = s_quiet_sink;
    uvmlease_broker *b = NULL;
    char err[256] = "";
    int rc = uvmlease_broker_start(&c, &b, NULL, err, sizeof err);
    if (rc != 0)
        cr_assert_fail("broker start failed: %d %s", rc, err);
    return b;
}

void ut_broker_stop(uvmlease_broker **b, const char *dir)
{
    uvmlease_broker_stop(b);
    ut_rmrf(dir);
}

void ut_build_path(const char *rel, char *out, size_t outsz)
{
    const char *bd = getenv("UL_BUILD_DIR");
    snprintf(out, outsz, "%s/%s", bd ? bd : ".", rel);
}
