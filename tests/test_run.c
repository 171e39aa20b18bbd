/*
 * test_run.c — `uvmleasectl run` and `uvmleasectl ping`, end to end: the
 * built CLI ($UL_BUILD_DIR/client/uvmleasectl) against an in-process
 * broker.
 *
 * The commands that run under a lease are this test binary itself, started
 * with "--ul-helper MODE ...": a constructor runs the helper before
 * Criterion's main, so the helpers are C (exact O_EXCL semantics, exact
 * exit codes) without another executable to build.
 */
// ctest-timeout: 180
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_proto.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

#define UVM      "cafe0001@vm"
#define CONFLICT 75 /* uvmleasectl run's documented default */

/* ------------------------------------------------------------- helpers */

static void s_touch(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
}

static bool s_exists(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Write a small file atomically (readers never see it half-written). */
static void s_put(const char *dir, const char *name, const char *text)
{
    char tmp[512], p[512];
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(tmp, "w");
    if (!f)
        _exit(90);
    fputs(text, f);
    if (fclose(f) != 0 || rename(tmp, p) != 0)
        _exit(90);
}

static bool s_get(const char *dir, const char *name, char *out, size_t outsz)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    size_t n = fread(out, 1, outsz - 1, f);
    out[n] = '\0';
    fclose(f);
    return true;
}

static unsigned s_count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    unsigned n = 0;
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

static void s_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A process that exists and has not exited (zombies have exited). */
static bool s_alive(pid_t pid)
{
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

/*
 * Helper modes, all given DIR first (exit codes: 0 ok, 3 overlap seen,
 * 4 rendezvous missed, 5 the previous holder's command still ran, 6 no
 * fence, 90 I/O):
 *   excl DIR N        create DIR/marker with O_EXCL, hold it briefly,
 *                     remove it; DIR/done.N, DIR/fence.N
 *   rendezvous DIR N K  DIR/here.N, then wait (10 s at most) until K
 *                     here.* files exist
 *   hold DIR          DIR/cmd1.pid, then wait to be killed
 *   second DIR        check that the process in DIR/cmd1.pid is gone;
 *                     DIR/second.ran
 *   exit DIR N        exit N
 *   signal DIR N      die of signal N
 */
static int s_helper(int argc, char **argv)
{
    const char *mode = argv[2];
    const char *dir = argc > 3 ? argv[3] : ".";
    const char *fence = getenv("UVMLEASE_FENCE");
    char name[64];
    if (strcmp(mode, "exit") == 0)
        return argc > 4 ? atoi(argv[4]) : 92;
    if (strcmp(mode, "signal") == 0) {
        int sig = argc > 4 ? atoi(argv[4]) : SIGKILL;
        signal(sig, SIG_DFL);
        raise(sig);
        return 91;
    }
    if (!fence || strtoull(fence, NULL, 10) == 0)
        return 6;
    if (strcmp(mode, "excl") == 0) {
        char p[512];
        snprintf(p, sizeof p, "%s/marker", dir);
        int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            snprintf(name, sizeof name, "overlap.%s", argv[4]);
            s_touch(dir, name);
            return 3;
        }
        close(fd);
        snprintf(name, sizeof name, "fence.%s", argv[4]);
        s_put(dir, name, fence);
        /* Hold the marker long enough that an overlapping holder would
         * find it: this widens the window, it synchronises nothing. */
        s_nap_ms(30);
        unlink(p);
        snprintf(name, sizeof name, "done.%s", argv[4]);
        s_touch(dir, name);
        return 0;
    }
    if (strcmp(mode, "rendezvous") == 0) {
        snprintf(name, sizeof name, "here.%s", argv[4]);
        s_touch(dir, name);
        unsigned k = (unsigned)atoi(argv[5]);
        uint64_t deadline = ul_now_ms() + 10000;
        while (s_count_prefix(dir, "here.") < k) {
            if (ul_now_ms() > deadline)
                return 4;
            s_nap_ms(1);
        }
        return 0;
    }
    if (strcmp(mode, "hold") == 0) {
        char pid[32];
        snprintf(pid, sizeof pid, "%d", (int)getpid());
        s_put(dir, "cmd1.pid", pid);
        for (;;)
            pause();
    }
    if (strcmp(mode, "second") == 0) {
        char pid[32];
        if (!s_get(dir, "cmd1.pid", pid, sizeof pid))
            return 90;
        if (s_alive((pid_t)atoi(pid)))
            return 5;
        s_touch(dir, "second.ran");
        return 0;
    }
    return 92;
}

/* glibc passes main's arguments to constructors. */
__attribute__((constructor)) static void s_maybe_helper(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "--ul-helper") == 0)
        _exit(s_helper(argc, argv));
}

/* ------------------------------------------------------------- fixture */

static uvmlease_broker *s_broker;
static char s_bdir[256];
static const char *s_ep;
static char s_dir[256]; /* the helpers' shared directory */
static char s_ctl[512];
static char s_self[512];

static void setup(void)
{
    s_broker = ut_broker_start(NULL, s_bdir);
    s_ep = uvmlease_broker_endpoint(s_broker);
    ut_tmpdir("run", s_dir, sizeof s_dir);
    ut_build_path("client/uvmleasectl", s_ctl, sizeof s_ctl);
    cr_assert_eq(access(s_ctl, X_OK), 0, "no uvmleasectl at %s (set UL_BUILD_DIR)", s_ctl);
    ssize_t n = readlink("/proc/self/exe", s_self, sizeof s_self - 1);
    cr_assert_gt(n, 0);
    s_self[n] = '\0';
}

static void teardown(void)
{
    ut_broker_stop(&s_broker, s_bdir);
    ut_rmrf(s_dir);
}

TestSuite(run, .init = setup, .fini = teardown, .timeout = 60);

/* Start uvmleasectl with args (NULL-terminated), stderr to errfile if not
 * NULL, stdout to /dev/null unless out is given. */
static pid_t ctl_spawn(const char *errfile, const char *outfile, const char *const *args)
{
    const char *argv[32];
    int n = 0;
    argv[n++] = s_ctl;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = ut_fork();
    if (pid == 0) {
        int fd = open(outfile ? outfile : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0)
            dup2(fd, 1);
        if (errfile) {
            fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (fd >= 0)
                dup2(fd, 2);
        }
        execv(s_ctl, (char *const *)argv);
        _exit(120);
    }
    return pid;
}

/* `uvmleasectl --endpoint EP run --uvm UVM [--confidential] [extra...] --
 * SELF --ul-helper MODE s_dir [a] [b]` */
static pid_t run_helper(bool conf, const char *extra, const char *errfile, const char *mode,
                        const char *a, const char *b)
{
    const char *args[24];
    int n = 0;
    args[n++] = "--endpoint";
    args[n++] = s_ep;
    args[n++] = "run";
    args[n++] = "--uvm";
    args[n++] = UVM;
    if (conf)
        args[n++] = "--confidential";
    char extra_buf[128];
    if (extra) {
        /* space-separated extra options */
        snprintf(extra_buf, sizeof extra_buf, "%s", extra);
        for (char *t = strtok(extra_buf, " "); t; t = strtok(NULL, " "))
            args[n++] = t;
    }
    args[n++] = "--";
    args[n++] = s_self;
    args[n++] = "--ul-helper";
    args[n++] = mode;
    args[n++] = s_dir;
    if (a)
        args[n++] = a;
    if (b)
        args[n++] = b;
    args[n] = NULL;
    return ctl_spawn(errfile, NULL, args);
}

/* The broker's view: waiters queued on uvm, -1 if it cannot tell. */
static int waiters_on(const char *uvm)
{
    void *s = ut_dealer(s_ep);
    ul_request q;
    ul_reply rep;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    memset(&rep, 0, sizeof rep);
    int n = -1;
    if (ut_call(s, &q, &rep, 2000) == 0) {
        if (rep.err == 0 && rep.n_uvms == 1)
            n = (int)rep.uvms[0].waiter_count;
        else if (rep.err == UVMLEASE_EUNKNOWNUVM)
            n = 0;
        ul_reply_free(&rep);
    }
    ut_dealer_close(s);
    return n;
}

static bool s_one_waiter(void *p)
{
    return waiters_on((const char *)p) == 1;
}

static bool s_file_there(void *p)
{
    return s_exists(s_dir, (const char *)p);
}

static void wait_file(const char *name)
{
    cr_assert(ut_wait_until(s_file_there, (void *)name, 10000), "%s never appeared", name);
}

static void wait_one_waiter(void)
{
    cr_assert(ut_wait_until(s_one_waiter, (void *)UVM, 10000), "the second run never queued");
}

static bool s_file_has(const char *path, const char *needle)
{
    char buf[4096];
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* --------------------------------------------------------------- tests */

Test(run, three_confidential_runs_never_overlap)
{
    pid_t p[3];
    char idx[3][4];
    for (int i = 0; i < 3; i++) {
        snprintf(idx[i], sizeof idx[i], "%d", i);
        p[i] = run_helper(true, NULL, NULL, "excl", idx[i], NULL);
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ut_wait_code(p[i], 30000), 0, "run %d failed", i);
    cr_assert_eq(s_count_prefix(s_dir, "overlap."), 0, "two commands held the lease at once");
    cr_assert_eq(s_count_prefix(s_dir, "done."), 3, "all three commands ran");
    /* Three grants, three different fences. */
    uint64_t f[3];
    for (int i = 0; i < 3; i++) {
        char name[32], v[32];
        snprintf(name, sizeof name, "fence.%d", i);
        cr_assert(s_get(s_dir, name, v, sizeof v));
        f[i] = strtoull(v, NULL, 10);
    }
    cr_assert(f[0] != f[1] && f[1] != f[2] && f[0] != f[2]);
}

Test(run, standard_runs_do_overlap)
{
    /* Each command waits until all three are inside: only possible when
     * all three hold the (shared) lease at once. */
    pid_t p[3];
    char idx[3][4];
    for (int i = 0; i < 3; i++) {
        snprintf(idx[i], sizeof idx[i], "%d", i);
        p[i] = run_helper(false, NULL, NULL, "rendezvous", idx[i], "3");
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ut_wait_code(p[i], 30000), 0, "run %d missed the rendezvous", i);
}

Test(run, kill9_of_run_kills_its_command_and_only_then_hands_on)
{
    pid_t r1 = run_helper(true, NULL, NULL, "hold", NULL, NULL);
    wait_file("cmd1.pid");
    char v[32];
    cr_assert(s_get(s_dir, "cmd1.pid", v, sizeof v));
    pid_t cmd1 = (pid_t)atoi(v);
    int pfd = ul_pidfd_open(cmd1);
    cr_assert_geq(pfd, 0, "pidfd_open: %s", strerror(errno));

    pid_t r2 = run_helper(true, NULL, NULL, "second", NULL, NULL);
    wait_one_waiter();
    cr_assert_not(s_exists(s_dir, "second.ran"));

    uint64_t t0 = ul_now_ms();
    kill(r1, SIGKILL);
    cr_assert_eq(ut_wait_code(r1, 5000), 1000 + SIGKILL);
    struct pollfd pp = {.fd = pfd, .events = POLLIN};
    cr_assert_eq(poll(&pp, 1, 5000), 1, "the command outlived uvmleasectl");
    close(pfd);
    cr_assert_eq(ut_wait_code(r2, 10000), 0,
                 "the next run failed (5: it started while the first command still ran)");
    cr_assert(s_exists(s_dir, "second.ran"));
    cr_log_info("next command started %llu ms after kill -9",
                (unsigned long long)(ul_now_ms() - t0));
}

Test(run, no_lease_exits_with_the_reserved_code_and_names_the_holder)
{
    char err[600];
    snprintf(err, sizeof err, "%s/err", s_dir);
    pid_t r1 = run_helper(true, "--label holder-one", NULL, "hold", NULL, NULL);
    wait_file("cmd1.pid");

    uint64_t t0 = ul_now_ms();
    pid_t r2 = run_helper(true, "--timeout 100", err, "exit", "0", NULL);
    cr_assert_eq(ut_wait_code(r2, 10000), CONFLICT);
    uint64_t took = ul_now_ms() - t0;
    cr_assert_geq(took, 100);
    char want[64];
    snprintf(want, sizeof want, "held by pid %d", (int)r1);
    cr_assert(s_file_has(err, want), "the message names the holder's pid");
    cr_assert(s_file_has(err, "holder-one"), "the message names the holder's label");

    pid_t r3 = run_helper(true, "--timeout 0 --conflict-exit-code 9", err, "exit", "0", NULL);
    cr_assert_eq(ut_wait_code(r3, 10000), 9, "--conflict-exit-code is used");
    cr_assert(s_file_has(err, "lease is held"));

    kill(r1, SIGTERM); /* forwarded to the command, which dies of it */
    cr_assert_eq(ut_wait_code(r1, 10000), 128 + SIGTERM);
}

Test(run, sigterm_while_waiting_cancels_and_leaves_no_waiter)
{
    pid_t r1 = run_helper(true, NULL, NULL, "hold", NULL, NULL);
    wait_file("cmd1.pid");
    char err[600];
    snprintf(err, sizeof err, "%s/err", s_dir);
    pid_t r2 = run_helper(true, NULL, err, "exit", "0", NULL);
    wait_one_waiter();
    kill(r2, SIGTERM);
    cr_assert_eq(ut_wait_code(r2, 5000), CONFLICT);
    cr_assert(s_file_has(err, "interrupted by SIGTERM"));
    cr_assert_eq(waiters_on(UVM), 0, "the cancelled waiter left the queue");

    kill(r1, SIGINT); /* forwarded: the command dies of SIGINT */
    cr_assert_eq(ut_wait_code(r1, 10000), 128 + SIGINT);
    pid_t r3 = run_helper(true, "--timeout 0", NULL, "exit", "0", NULL);
    cr_assert_eq(ut_wait_code(r3, 10000), 0, "the lease is free again");
}

Test(run, exit_status_signals_and_fence_pass_through)
{
    cr_assert_eq(ut_wait_code(run_helper(true, NULL, NULL, "exit", "7", NULL), 10000), 7);
    cr_assert_eq(ut_wait_code(run_helper(false, NULL, NULL, "exit", "0", NULL), 10000), 0);
    char sig[8];
    snprintf(sig, sizeof sig, "%d", SIGKILL);
    cr_assert_eq(ut_wait_code(run_helper(true, NULL, NULL, "signal", sig, NULL), 10000),
                 128 + SIGKILL);
    /* excl fails with 6 unless UVMLEASE_FENCE is a positive number. */
    cr_assert_eq(ut_wait_code(run_helper(true, NULL, NULL, "excl", "0", NULL), 10000), 0);

    const char *missing[] = {"--endpoint",       s_ep, "run", "--uvm", UVM, "--",
                             "/nonexistent/cmd", NULL};
    cr_assert_eq(ut_wait_code(ctl_spawn("/dev/null", NULL, missing), 10000), 127);
}

Test(run, no_broker_exits_with_the_reserved_code)
{
    char ep[400];
    snprintf(ep, sizeof ep, "ipc://%s/none.sock", s_dir);
    const char *args[] = {"--endpoint", ep, "run", "--uvm", UVM, "--", "/bin/true", NULL};
    cr_assert_eq(ut_wait_code(ctl_spawn("/dev/null", NULL, args), 10000), CONFLICT);
    const char *ping[] = {"ping", "--endpoint", ep, NULL};
    cr_assert_eq(ut_wait_code(ctl_spawn("/dev/null", NULL, ping), 10000), 1);
}

Test(run, ping_answers_with_the_broker_facts)
{
    char out[600];
    snprintf(out, sizeof out, "%s/out", s_dir);
    const char *args[] = {"--json", "ping", "--endpoint", s_ep, NULL};
    cr_assert_eq(ut_wait_code(ctl_spawn(NULL, out, args), 10000), 0);
    char want[64];
    snprintf(want, sizeof want, "{\"pid\":%d,", (int)getpid());
    cr_assert(s_file_has(out, want), "JSON names the broker's pid");
    char inst[32];
    snprintf(inst, sizeof inst, "\"%016" PRIx64 "\"", uvmlease_broker_instance(s_broker));
    cr_assert(s_file_has(out, inst), "and its instance");
    const char *text[] = {"--endpoint", s_ep, "ping", NULL};
    cr_assert_eq(ut_wait_code(ctl_spawn(NULL, out, text), 10000), 0);
    cr_assert(s_file_has(out, "broker pid"));
}

Test(run, usage_errors_exit_2)
{
    const char *no_uvm[] = {"--endpoint", s_ep, "run", "--", "/bin/true", NULL};
    const char *no_dashes[] = {"--endpoint", s_ep, "run", "--uvm", UVM, "/bin/true", NULL};
    const char *bad_uvm[] = {"run", "--uvm", "a b", "--", "/bin/true", NULL};
    const char *bad_timeout[] = {"run", "--uvm", UVM, "--timeout", "-5", "--", "/bin/true", NULL};
    const char *unknown[] = {"frobnicate", NULL};
    const char *nothing[] = {NULL};
    const char *bad_ep[] = {"--endpoint", "tcp://127.0.0.1:1", "ping", NULL};
    const char *const *usage[] = {no_uvm,  no_dashes, bad_uvm, bad_timeout,
                                  unknown, nothing,   bad_ep};
    for (size_t i = 0; i < sizeof usage / sizeof usage[0]; i++)
        cr_assert_eq(ut_wait_code(ctl_spawn("/dev/null", NULL, usage[i]), 10000), 2, "case %zu", i);
}
