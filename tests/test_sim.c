// ctest-timeout: 180
/*
 * test_sim.c — the bring-up model end to end: the fake guest on its own
 * (it is the oracle, so it is tested first), then simulated shims against
 * an in-process broker: no reset with the broker across a randomized
 * matrix while the same load without it does reset, and a shim killed in
 * the middle of a step, with and without quarantine.
 *
 * Set UL_SIM_SEED to replay a matrix; UL_SIM_KEEP to keep the guests' and
 * shims' logs; UL_TEST_VERBOSE to see them on stderr instead.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

TestSuite(guest, .timeout = 60);
TestSuite(sim, .timeout = 120);

#define UVM_C "c0ffee0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef01@vm"
#define UVM_S "5ta0da0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef02@vm"

/* ---- child processes with a line on a pipe ------------------------------ */

typedef struct child {
    pid_t pid;
    int out;        /* read end of the child's stdout */
    char line[512]; /* its machine-readable line, once read */
} child;

/* Run bin with argv, stdout into a pipe, stderr into log (or inherited
 * when UL_TEST_VERBOSE is set). */
static void s_spawn(child *c, char *const argv[], const char *log)
{
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    c->line[0] = '\0';
    c->pid = ut_fork();
    if (c->pid == 0) {
        dup2(p[1], 1);
        if (!getenv("UL_TEST_VERBOSE") && log) {
            int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
            if (fd >= 0)
                dup2(fd, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    c->out = p[0];
}

/* Read the first line starting with tag from the child's stdout. */
static bool s_read_line(child *c, const char *tag, int timeout_ms)
{
    char buf[512];
    size_t got = 0;
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = ul_now_ms();
        if (now >= deadline)
            return false;
        struct pollfd p = {.fd = c->out, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        char ch;
        ssize_t r = read(c->out, &ch, 1);
        if (r <= 0)
            return false;
        if (ch != '\n') {
            if (got + 1 < sizeof buf)
                buf[got++] = ch;
            continue;
        }
        buf[got] = '\0';
        got = 0;
        if (strncmp(buf, tag, strlen(tag)) == 0) {
            snprintf(c->line, sizeof c->line, "%s", buf);
            return true;
        }
    }
}

/* The value of " key=N" in a machine-readable line, or -1. */
static long s_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    if (!p)
        return -1;
    return strtol(p + strlen(pat), NULL, 10);
}

/* Remove a test's directory, unless UL_SIM_KEEP asks to keep the logs. */
static void s_rmdir(const char *dir)
{
    if (getenv("UL_SIM_KEEP"))
        fprintf(stderr, "test_sim: logs kept in %s\n", dir);
    else
        ut_rmrf(dir);
}

/* ---- the fake guest ------------------------------------------------------ */

typedef struct guest {
    child ch;
    char sock[300];
    char log[300];
} guest;

static bool s_exists(void *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void s_guest_start(guest *g, const char *dir, const char *name, bool confidential)
{
    char bin[512];
    ut_build_path("sim/fake_guest", bin, sizeof bin);
    snprintf(g->sock, sizeof g->sock, "%s/%s.sock", dir, name);
    snprintf(g->log, sizeof g->log, "%s/%s.log", dir, name);
    char *argv[8] = {bin, "--uvm", (char *)name, "--verbose"};
    int n = 4;
    if (confidential)
        argv[n++] = "--confidential";
    argv[n++] = g->sock;
    argv[n] = NULL;
    s_spawn(&g->ch, argv, g->log);
    /* The guest renames its socket into place once it listens. */
    cr_assert(ut_wait_until(s_exists, g->sock, 10000), "fake guest %s did not start", name);
}

static int s_gconnect(const guest *g)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(g->sock), sizeof a.sun_path);
    memcpy(a.sun_path, g->sock, strlen(g->sock) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect %s: %s", g->sock,
                 strerror(errno));
    return fd;
}

static void s_gsend(int fd, const char *bytes, size_t n)
{
    cr_assert_eq(send(fd, bytes, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Read one reply line ("" when the guest closed the connection). */
static void s_grecv(int fd, char *out, size_t outsz)
{
    size_t got = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 10000), 1, "no reply from the guest");
        char ch;
        ssize_t r = read(fd, &ch, 1);
        if (r <= 0 || ch == '\n')
            break;
        if (got + 1 < outsz)
            out[got++] = ch;
    }
    out[got] = '\0';
}

static void s_gcall(int fd, const char *cmd, char *out, size_t outsz)
{
    char line[400];
    int n = snprintf(line, sizeof line, "%s\n", cmd);
    s_gsend(fd, line, (size_t)n);
    s_grecv(fd, out, outsz);
}

/* Send cmd and expect the reply want. */
static void s_gexpect(int fd, const char *cmd, const char *want)
{
    char r[600];
    s_gcall(fd, cmd, r, sizeof r);
    cr_assert_str_eq(r, want, "'%s' -> '%s', expected '%s'", cmd, r, want);
}

/* One field of the guest's live counters. */
static long s_gstat(const guest *g, const char *key)
{
    int fd = s_gconnect(g);
    char r[600];
    s_gcall(fd, "stats", r, sizeof r);
    close(fd);
    cr_assert(strncmp(r, "stats ", 6) == 0, "stats reply '%s'", r);
    return s_field(r, key);
}

/* Stop the guest and keep its final line in g->ch.line. */
static void s_guest_stop(guest *g)
{
    int fd = s_gconnect(g);
    s_gexpect(fd, "stop", "ok");
    close(fd);
    cr_assert(s_read_line(&g->ch, "GUEST ", 10000), "no GUEST line");
    cr_assert_eq(ut_wait_code(g->ch.pid, 10000), 0);
    close(g->ch.out);
    cr_log_info("%s", g->ch.line);
}

static long s_g(const guest *g, const char *key)
{
    return s_field(g->ch.line, key);
}

/* ---- the fake guest alone ------------------------------------------------ */

Test(guest, confidential_overlap_resets_and_keeps_serving)
{
    char dir[256];
    ut_tmpdir("guest", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "conf", true);

    int a = s_gconnect(&g), b = s_gconnect(&g), c = s_gconnect(&g);
    s_gexpect(a, "begin a 0", "ok");
    s_gexpect(a, "step cim-mount 5", "ok");
    s_gexpect(b, "begin b 0", "reset");
    /* a was between steps: its next command learns of the reset. */
    s_gexpect(a, "step scratch-attach 5", "reset");
    char r[64];
    s_grecv(b, r, sizeof r);
    cr_assert_str_eq(r, "", "the failed bring-up's connection must close");
    cr_assert_eq(s_gstat(&g, "resets"), 1);
    cr_assert_eq(s_gstat(&g, "open"), 0);

    /* A step in flight is answered "reset" at once, not after its time. */
    s_gexpect(c, "begin c 0", "ok");
    s_gsend(c, "step cim-mount 5000\n", 20);
    uint64_t t = ul_now_ms();
    int d = s_gconnect(&g);
    s_gexpect(d, "begin d 0", "reset");
    s_grecv(c, r, sizeof r);
    cr_assert_str_eq(r, "reset");
    cr_assert_lt(ul_now_ms() - t, 2500);

    /* Still serving: one bring-up alone completes. */
    int e = s_gconnect(&g);
    s_gexpect(e, "begin e 0", "ok");
    s_gexpect(e, "step cim-mount 1", "ok");
    s_gexpect(e, "end", "ok");
    s_gexpect(e, "end", "error no open bring-up on this connection");
    close(a);
    close(b);
    close(c);
    close(d);
    close(e);

    s_guest_stop(&g);
    cr_assert_eq(s_g(&g, "confidential"), 1);
    cr_assert_eq(s_g(&g, "begun"), 5);
    cr_assert_eq(s_g(&g, "completed"), 1);
    cr_assert_eq(s_g(&g, "resets"), 2);
    cr_assert_eq(s_g(&g, "failed"), 4);
    cr_assert_eq(s_g(&g, "overlaps"), 2);
    cr_assert_eq(s_g(&g, "fence_errors"), 0);
    s_rmdir(dir);
}

Test(guest, standard_never_resets)
{
    char dir[256];
    ut_tmpdir("guest", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "std", false);
    int fd[3];
    for (int i = 0; i < 3; i++) {
        char cmd[64];
        fd[i] = s_gconnect(&g);
        snprintf(cmd, sizeof cmd, "begin c%d 7", i); /* shared leases may share a fence */
        s_gexpect(fd[i], cmd, "ok");
    }
    for (int i = 0; i < 3; i++)
        s_gsend(fd[i], "step cim-mount 20\n", 18);
    for (int i = 0; i < 3; i++) {
        char r[64];
        s_grecv(fd[i], r, sizeof r);
        cr_assert_str_eq(r, "ok");
    }
    for (int i = 0; i < 3; i++) {
        s_gexpect(fd[i], "end", "ok");
        close(fd[i]);
    }
    s_guest_stop(&g);
    cr_assert_eq(s_g(&g, "confidential"), 0);
    cr_assert_eq(s_g(&g, "resets"), 0);
    cr_assert_eq(s_g(&g, "completed"), 3);
    cr_assert_eq(s_g(&g, "max_open"), 3);
    cr_assert_eq(s_g(&g, "overlaps"), 2);
    cr_assert_eq(s_g(&g, "fence_errors"), 0);
    s_rmdir(dir);
}

static void s_one_bringup(const guest *g, const char *id, uint64_t fence)
{
    char cmd[128];
    int fd = s_gconnect(g);
    snprintf(cmd, sizeof cmd, "begin %s %" PRIu64, id, fence);
    s_gexpect(fd, cmd, "ok");
    s_gexpect(fd, "end", "ok");
    close(fd);
}

Test(guest, fence_going_backwards_is_flagged)
{
    char dir[256];
    ut_tmpdir("guest", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "fence", true);
    s_one_bringup(&g, "a", 5);
    s_one_bringup(&g, "b", 5); /* equal: flagged */
    s_one_bringup(&g, "c", 3); /* lower: flagged */
    s_one_bringup(&g, "d", 0); /* no lease: not checked */
    s_one_bringup(&g, "e", 6);
    cr_assert_eq(s_gstat(&g, "fence_errors"), 2);
    s_guest_stop(&g);
    cr_assert_eq(s_g(&g, "fence_errors"), 2);
    cr_assert_eq(s_g(&g, "completed"), 5);
    cr_assert_eq(s_g(&g, "resets"), 0);
    s_rmdir(dir);
}

typedef struct open_ctx {
    const guest *g;
    long want;
} open_ctx;

static bool s_open_is(void *arg)
{
    open_ctx *o = arg;
    return s_gstat(o->g, "open") == o->want;
}

Test(guest, step_runs_out_after_client_death)
{
    char dir[256];
    ut_tmpdir("guest", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "orphan", true);

    /* The client goes while its 800 ms step runs: a bring-up that begins
     * right after collides with the step still in flight. */
    int a = s_gconnect(&g);
    s_gexpect(a, "begin a 1", "ok");
    s_gsend(a, "step cim-mount 800\n", 19);
    close(a);
    int b = s_gconnect(&g);
    s_gexpect(b, "begin b 2", "reset");
    close(b);
    cr_assert_eq(s_gstat(&g, "resets"), 1);

    /* Left alone, the orphaned step ends the bring-up only when it has run
     * its whole duration. */
    int c = s_gconnect(&g);
    s_gexpect(c, "begin c 3", "ok");
    uint64_t t = ul_now_ms(); /* before the guest can have started the step */
    s_gsend(c, "step scratch-attach 300\n", 24);
    close(c);
    cr_assert_eq(s_gstat(&g, "open"), 1);
    open_ctx o = {&g, 0};
    cr_assert(ut_wait_until(s_open_is, &o, 5000));
    cr_assert_geq(ul_now_ms() - t, 300, "the orphaned step ended after %" PRIu64 " ms",
                  ul_now_ms() - t);
    s_one_bringup(&g, "d", 4);

    /* A client gone between steps ends its bring-up at once. */
    int e = s_gconnect(&g);
    s_gexpect(e, "begin e 5", "ok");
    close(e);
    cr_assert(ut_wait_until(s_open_is, &o, 5000));
    s_one_bringup(&g, "f", 6);

    s_guest_stop(&g);
    cr_assert_eq(s_g(&g, "resets"), 1);
    cr_assert_eq(s_g(&g, "aborted"), 2);
    cr_assert_eq(s_g(&g, "completed"), 2);
    cr_assert_eq(s_g(&g, "fence_errors"), 0);
    s_rmdir(dir);
}

Test(guest, bad_input_gets_errors_not_a_crash)
{
    char dir[256];
    ut_tmpdir("guest", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "bad", true);
    int fd = s_gconnect(&g);
    char r[600];
    static const char *const bad[] = {
        "hello",
        "",
        "begin",
        "begin a",
        "begin a b",
        "begin a -1",
        "begin a 99999999999999999999999",
        "begin a 1 extra",
        "step cim-mount 5",
        "end",
        "a b c d e f",
        "begin a\t1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s_gcall(fd, bad[i], r, sizeof r);
        cr_assert(strncmp(r, "error ", 6) == 0, "'%s' -> '%s'", bad[i], r);
    }
    s_gexpect(fd, "begin a 1", "ok");
    s_gcall(fd, "step x 600001", r, sizeof r);
    cr_assert(strncmp(r, "error ", 6) == 0, "%s", r);
    s_gcall(fd, "begin again 2", r, sizeof r);
    cr_assert(strncmp(r, "error ", 6) == 0, "%s", r);
    s_gsend(fd, "step nul\0x 1\n", 13);
    s_grecv(fd, r, sizeof r);
    cr_assert(strncmp(r, "error ", 6) == 0, "%s", r);
    /* Pipelined commands, split across writes, are answered in order. */
    s_gsend(fd, "step a 1\nst", 11);
    s_gsend(fd, "ep b 1\r\nend\n", 12);
    for (int i = 0; i < 3; i++) {
        s_grecv(fd, r, sizeof r);
        cr_assert_str_eq(r, "ok");
    }
    close(fd);

    /* A line that never ends: error, then the connection is closed. */
    fd = s_gconnect(&g);
    char big[2048];
    memset(big, 'x', sizeof big);
    s_gsend(fd, big, sizeof big);
    s_grecv(fd, r, sizeof r);
    cr_assert_str_eq(r, "error line too long");
    s_grecv(fd, r, sizeof r);
    cr_assert_str_eq(r, "");
    close(fd);

    /* More connections than the guest keeps: the extra ones are refused,
     * the guest keeps serving. */
    static int many[300];
    for (int i = 0; i < 300; i++)
        many[i] = s_gconnect(&g);
    for (int i = 0; i < 300; i++)
        close(many[i]);
    s_one_bringup(&g, "after", 3);

    s_guest_stop(&g);
    cr_assert_geq(s_g(&g, "bad_input"), 15);
    cr_assert_eq(s_g(&g, "completed"), 2);
    cr_assert_eq(s_g(&g, "resets"), 0);
    s_rmdir(dir);
}

Test(guest, sigterm_prints_counts)
{
    char dir[256];
    ut_tmpdir("guest", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "term", false);
    s_one_bringup(&g, "a", 0);
    kill(g.ch.pid, SIGTERM);
    cr_assert(s_read_line(&g.ch, "GUEST ", 10000));
    cr_assert_eq(ut_wait_code(g.ch.pid, 10000), 0);
    cr_assert_eq(s_g(&g, "completed"), 1);
    cr_assert(!s_exists(g.sock), "the guest leaves its socket behind");
    close(g.ch.out);
    s_rmdir(dir);
}

/* ---- simulated shims ----------------------------------------------------- */

/* What the broker logged, counted from its log sink (its own thread). */
typedef struct logcount {
    atomic_int grants, phases, released, holder_exit;
} logcount;

static void s_count_sink(void *ctx, ul_log_level level, const char *line)
{
    logcount *lc = ctx;
    (void)level;
    if (strstr(line, " msg=grant "))
        atomic_fetch_add(&lc->grants, 1);
    else if (strstr(line, " msg=phase "))
        atomic_fetch_add(&lc->phases, 1);
    else if (strstr(line, " msg=release ") && strstr(line, " reason=released"))
        atomic_fetch_add(&lc->released, 1);
    else if (strstr(line, " msg=release ") && strstr(line, " reason=holder-exit"))
        atomic_fetch_add(&lc->holder_exit, 1);
    if (getenv("UL_TEST_VERBOSE"))
        fprintf(stderr, "broker: %s\n", line);
}

static uvmlease_broker *s_counted_broker(uint64_t quarantine_ms, logcount *lc, char *bdir)
{
    memset(lc, 0, sizeof *lc);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.quarantine_ms = quarantine_ms;
    cfg.log_sink = s_count_sink;
    cfg.log_ctx = lc;
    return ut_broker_start(&cfg, bdir);
}

typedef struct shim_args {
    const char *guest_sock;
    const char *endpoint; /* NULL: --no-broker */
    const char *uvm;
    bool confidential;
    const char *containers;
    unsigned step_ms, jitter_ms;
    uint64_t seed;
    const char *prefix;
    const char *extra[8]; /* more options, NULL-terminated */
} shim_args;

static void s_shim_start(child *c, const shim_args *a, const char *log)
{
    char bin[512], step[32], jit[32], seed[32];
    ut_build_path("sim/sim_shim", bin, sizeof bin);
    snprintf(step, sizeof step, "%u", a->step_ms);
    snprintf(jit, sizeof jit, "%u", a->jitter_ms);
    snprintf(seed, sizeof seed, "%" PRIu64, a->seed);
    char *argv[40] = {bin,
                      "--guest",
                      (char *)a->guest_sock,
                      "--uvm",
                      (char *)a->uvm,
                      "--containers",
                      (char *)a->containers,
                      "--step-ms",
                      step,
                      "--jitter-ms",
                      jit,
                      "--seed",
                      seed,
                      "--label-prefix",
                      (char *)a->prefix,
                      "--verbose"};
    int n = 16;
    if (a->confidential)
        argv[n++] = "--confidential";
    if (a->endpoint) {
        argv[n++] = "--endpoint";
        argv[n++] = (char *)a->endpoint;
    } else {
        argv[n++] = "--no-broker";
    }
    for (int i = 0; i < 8 && a->extra[i]; i++)
        argv[n++] = (char *)a->extra[i];
    argv[n] = NULL;
    s_spawn(c, argv, log);
}

/* Wait for the shim's SHIM line and exit code. */
static int s_shim_wait(child *c)
{
    cr_assert(s_read_line(c, "SHIM ", 60000), "no SHIM line from pid %d", (int)c->pid);
    int code = ut_wait_code(c->pid, 10000);
    close(c->out);
    cr_log_info("%s (exit %d)", c->line, code);
    return code;
}

static uint64_t s_seed(void)
{
    const char *e = getenv("UL_SIM_SEED");
    if (e && *e)
        return strtoull(e, NULL, 10);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
}

static uint32_t s_pick(uint64_t *st, uint32_t lo, uint32_t hi)
{
    *st = *st * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
    return lo + (uint32_t)((*st >> 33) % (hi - lo + 1));
}

/* "AxnanoserverBxmount-host" with A+B in 1..3, at least min in total. */
static int s_pick_containers(uint64_t *st, char *out, size_t outsz, int min)
{
    int nano, mount;
    do {
        nano = (int)s_pick(st, 0, 3);
        mount = (int)s_pick(st, 0, 2);
    } while (nano + mount < min || nano + mount > 4);
    if (nano && mount)
        snprintf(out, outsz, "%dxnanoserver,%dxmount-host", nano, mount);
    else if (nano)
        snprintf(out, outsz, "%dxnanoserver", nano);
    else
        snprintf(out, outsz, "%dxmount-host", mount);
    return nano + mount;
}

#define S_ROUNDS    3
#define S_MAX_SHIMS 3

Test(sim, matrix_no_reset_with_broker_and_resets_without)
{
    uint64_t seed = s_seed();
    fprintf(stderr, "test_sim matrix: seed %" PRIu64 " (replay with UL_SIM_SEED=%" PRIu64 ")\n",
            seed, seed);
    uint64_t st = seed;
    char bdir[256], dir[256];
    uvmlease_broker *b = ut_broker_start(NULL, bdir);
    const char *ep = uvmlease_broker_endpoint(b);
    ut_tmpdir("sim", dir, sizeof dir);

    long total_with = 0, total_resets_without = 0;
    for (int round = 0; round < S_ROUNDS; round++) {
        int nshims = (int)s_pick(&st, 2, S_MAX_SHIMS);
        unsigned step_ms = s_pick(&st, 5, 25), jitter = s_pick(&st, 0, 10);
        char spec[S_MAX_SHIMS][64], prefix[S_MAX_SHIMS][32], name[32], log[300];
        int want = 0;
        /* The control needs two bring-ups in one process so the barrier
         * makes them overlap: the first shim always has two or more. */
        for (int i = 0; i < nshims; i++)
            want += s_pick_containers(&st, spec[i], sizeof spec[i], i == 0 ? 2 : 1);

        /* With the broker: one confidential UVM, several shims at once,
         * and one standard UVM in parallel. */
        guest gc, gs;
        snprintf(name, sizeof name, "with-%d", round);
        s_guest_start(&gc, dir, name, true);
        snprintf(name, sizeof name, "std-%d", round);
        s_guest_start(&gs, dir, name, false);
        child sh[S_MAX_SHIMS + 1];
        for (int i = 0; i < nshims; i++) {
            snprintf(prefix[i], sizeof prefix[i], "r%d-s%d", round, i);
            shim_args a = {.guest_sock = gc.sock,
                           .endpoint = ep,
                           .uvm = UVM_C,
                           .confidential = true,
                           .containers = spec[i],
                           .step_ms = step_ms,
                           .jitter_ms = jitter,
                           .seed = seed + (uint64_t)i,
                           .prefix = prefix[i]};
            snprintf(log, sizeof log, "%s/shim-%s.log", dir, prefix[i]);
            s_shim_start(&sh[i], &a, log);
        }
        shim_args sa = {.guest_sock = gs.sock,
                        .endpoint = ep,
                        .uvm = UVM_S,
                        .containers = "2xnanoserver,1xmount-host",
                        .step_ms = step_ms,
                        .seed = seed,
                        .prefix = "std"};
        snprintf(log, sizeof log, "%s/shim-std-%d.log", dir, round);
        s_shim_start(&sh[nshims], &sa, log);
        long done = 0;
        for (int i = 0; i < nshims; i++) {
            cr_assert_eq(s_shim_wait(&sh[i]), 0, "round %d shim %d (%s): %s", round, i, spec[i],
                         sh[i].line);
            done += s_field(sh[i].line, "completed");
        }
        cr_assert_eq(s_shim_wait(&sh[nshims]), 0, "standard UVM shim: %s", sh[nshims].line);
        s_guest_stop(&gc);
        s_guest_stop(&gs);
        cr_log_info("round %d: %d shim(s) %s%s%s%s%s, step %u ms + 0..%u", round, nshims, spec[0],
                    nshims > 1 ? " " : "", nshims > 1 ? spec[1] : "", nshims > 2 ? " " : "",
                    nshims > 2 ? spec[2] : "", step_ms, jitter);
        cr_assert_eq(s_g(&gc, "resets"), 0, "seed %" PRIu64 " round %d: %s", seed, round,
                     gc.ch.line);
        cr_assert_eq(s_g(&gc, "fence_errors"), 0, "%s", gc.ch.line);
        cr_assert_eq(s_g(&gc, "max_open"), 1, "%s", gc.ch.line);
        cr_assert_eq(s_g(&gc, "begun"), want, "%s", gc.ch.line);
        cr_assert_eq(s_g(&gc, "completed"), want, "%s", gc.ch.line);
        cr_assert_eq(done, want);
        cr_assert_eq(s_g(&gs, "resets"), 0);
        cr_assert_eq(s_g(&gs, "completed"), 3);
        total_with += want;

        /* The control: the same load on a fresh guest without the broker.
         * Only the first shim is run: its containers start on one barrier. */
        guest gn;
        snprintf(name, sizeof name, "without-%d", round);
        s_guest_start(&gn, dir, name, true);
        shim_args na = {.guest_sock = gn.sock,
                        .uvm = UVM_C,
                        .confidential = true,
                        .containers = spec[0],
                        .step_ms = step_ms < 15 ? 15 : step_ms,
                        .jitter_ms = jitter,
                        .seed = seed,
                        .prefix = "nobroker"};
        child nc;
        snprintf(log, sizeof log, "%s/shim-nobroker-%d.log", dir, round);
        s_shim_start(&nc, &na, log);
        cr_assert_eq(s_shim_wait(&nc), 1, "without the broker every bring-up completed: %s",
                     nc.line);
        s_guest_stop(&gn);
        cr_assert_geq(s_g(&gn, "resets"), 1, "seed %" PRIu64 " round %d control: %s", seed, round,
                      gn.ch.line);
        cr_assert_geq(s_field(nc.line, "reset"), 1, "%s", nc.line);
        total_resets_without += s_g(&gn, "resets");
    }
    fprintf(stderr,
            "test_sim matrix: seed %" PRIu64 ": %ld bring-ups with the broker, 0 resets; "
            "%ld resets without\n",
            seed, total_with, total_resets_without);
    ut_broker_stop(&b, bdir);
    s_rmdir(dir);
}

Test(sim, standard_uvm_bringups_run_in_parallel)
{
    char bdir[256], dir[256], log[300];
    logcount lc;
    uvmlease_broker *b = s_counted_broker(0, &lc, bdir);
    ut_tmpdir("sim", dir, sizeof dir);
    guest g;
    s_guest_start(&g, dir, "std", false);
    /* Steps long enough that three containers released by one barrier
     * cannot miss each other. */
    shim_args a = {.guest_sock = g.sock,
                   .endpoint = uvmlease_broker_endpoint(b),
                   .uvm = UVM_S,
                   .containers = "2xnanoserver,1xmount-host",
                   .step_ms = 60,
                   .seed = 1,
                   .prefix = "par"};
    child c;
    snprintf(log, sizeof log, "%s/shim.log", dir);
    s_shim_start(&c, &a, log);
    cr_assert_eq(s_shim_wait(&c), 0, "%s", c.line);
    s_guest_stop(&g);
    cr_assert_eq(s_g(&g, "completed"), 3);
    cr_assert_eq(s_g(&g, "resets"), 0);
    cr_assert_geq(s_g(&g, "max_open"), 2, "standard bring-ups were serialized: %s", g.ch.line);
    ut_broker_stop(&b, bdir);
    /* Every bring-up was leased, reported each of its steps (4 for a
     * nanoserver, 5 with the host mount) and released normally. */
    cr_assert_eq(atomic_load(&lc.grants), 3);
    cr_assert_eq(atomic_load(&lc.phases), 4 + 4 + 5);
    cr_assert_eq(atomic_load(&lc.released), 3);
    cr_assert_eq(atomic_load(&lc.holder_exit), 0);
    s_rmdir(dir);
}

typedef struct begun_ctx {
    const guest *g;
    long want;
} begun_ctx;

static bool s_begun_at_least(void *arg)
{
    begun_ctx *o = arg;
    return s_gstat(o->g, "begun") >= o->want;
}

/*
 * A shim dies 150 ms into an 800 ms step while a second shim waits for the
 * lease. Returns the guest's final line in g (the caller checks it) and the
 * waiting shim's SHIM line in next.
 */
static void s_killed_shim(uint64_t quarantine_ms, guest *g, child *next, const char *dir,
                          char *bdir)
{
    logcount lc;
    uvmlease_broker *b = s_counted_broker(quarantine_ms, &lc, bdir);
    const char *ep = uvmlease_broker_endpoint(b);
    char log[300];
    s_guest_start(g, dir, quarantine_ms ? "quarantine" : "no-quarantine", true);

    shim_args da = {.guest_sock = g->sock,
                    .endpoint = ep,
                    .uvm = UVM_C,
                    .confidential = true,
                    .containers = "1xnanoserver",
                    .step_ms = 10,
                    .seed = 1,
                    .prefix = "dying",
                    .extra = {"--step", "cim-mount=800", "--die-in-step", "cim-mount",
                              "--die-after-ms", "150"}};
    child dying;
    snprintf(log, sizeof log, "%s/shim-dying.log", dir);
    s_shim_start(&dying, &da, log);
    begun_ctx o = {g, 1};
    cr_assert(ut_wait_until(s_begun_at_least, &o, 10000), "the dying shim never began");

    shim_args na = {.guest_sock = g->sock,
                    .endpoint = ep,
                    .uvm = UVM_C,
                    .confidential = true,
                    .containers = "1xnanoserver",
                    .step_ms = 10,
                    .seed = 2,
                    .prefix = "next"};
    snprintf(log, sizeof log, "%s/shim-next.log", dir);
    s_shim_start(next, &na, log);
    cr_assert_eq(ut_wait_code(dying.pid, 10000), 1000 + SIGKILL);
    close(dying.out);
    s_shim_wait(next);

    /* Whatever happened to the next one, the UVM is not wedged: a third
     * shim gets the lease and completes. */
    shim_args ta = na;
    ta.prefix = "third";
    ta.containers = "2xnanoserver";
    child third;
    snprintf(log, sizeof log, "%s/shim-third.log", dir);
    s_shim_start(&third, &ta, log);
    cr_assert_eq(s_shim_wait(&third), 0, "the UVM is wedged: %s", third.line);
    cr_assert_eq(s_field(third.line, "completed"), 2);
    s_guest_stop(g);
    ut_broker_stop(&b, bdir);
    cr_assert_eq(atomic_load(&lc.holder_exit), 1, "the dead shim's lease was not released");
    cr_assert_eq(atomic_load(&lc.grants), 4);
}

Test(sim, killed_shim_quarantine_zero_collides)
{
    char dir[256], bdir[256];
    ut_tmpdir("sim", dir, sizeof dir);
    guest g;
    child next;
    s_killed_shim(0, &g, &next, dir, bdir);
    /* The lease passed on at the death, 650 ms before the dead shim's step
     * ran out: the next bring-up met it in the guest. */
    cr_assert_eq(s_field(next.line, "reset"), 1, "%s", next.line);
    cr_assert_eq(s_g(&g, "resets"), 1, "%s", g.ch.line);
    cr_assert_eq(s_g(&g, "fence_errors"), 0, "%s", g.ch.line);
    cr_assert_eq(s_g(&g, "completed"), 2, "%s", g.ch.line);
    s_rmdir(dir);
}

Test(sim, killed_shim_quarantine_covers_the_step)
{
    char dir[256], bdir[256];
    ut_tmpdir("sim", dir, sizeof dir);
    guest g;
    child next;
    s_killed_shim(1000, &g, &next, dir, bdir);
    cr_assert_eq(s_field(next.line, "completed"), 1, "%s", next.line);
    cr_assert_eq(s_field(next.line, "reset"), 0, "%s", next.line);
    /* It waited out the quarantine, not just the dead holder. */
    cr_assert_geq(s_field(next.line, "max_wait_ms"), 800, "%s", next.line);
    cr_assert_eq(s_g(&g, "resets"), 0, "%s", g.ch.line);
    cr_assert_eq(s_g(&g, "aborted"), 1, "%s", g.ch.line);
    cr_assert_eq(s_g(&g, "completed"), 3, "%s", g.ch.line);
    cr_assert_eq(s_g(&g, "fence_errors"), 0, "%s", g.ch.line);
    s_rmdir(dir);
}

Test(sim, shim_usage_and_missing_broker)
{
    char bin[512], dir[256], sock[300], log[300];
    ut_build_path("sim/sim_shim", bin, sizeof bin);
    ut_tmpdir("sim", dir, sizeof dir);
    snprintf(log, sizeof log, "%s/shim.log", dir);
    snprintf(sock, sizeof sock, "%s/none.sock", dir);
    static const char *const bad[][4] = {
        {"--containers", "2xwindows", NULL},
        {"--containers", "0xnanoserver", NULL},
        {"--step-ms", "-1", NULL},
        {"--step", "cim-mount", NULL},
        {"--bogus", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *argv[8] = {bin, "--guest", sock};
        int n = 3;
        for (int k = 0; bad[i][k]; k++)
            argv[n++] = (char *)bad[i][k];
        argv[n] = NULL;
        child c;
        s_spawn(&c, argv, log);
        cr_assert_eq(ut_wait_code(c.pid, 10000), 2, "%s %s", bad[i][0], bad[i][1] ? bad[i][1] : "");
        close(c.out);
    }
    {
        char *argv[] = {bin, NULL};
        child c;
        s_spawn(&c, argv, log);
        cr_assert_eq(ut_wait_code(c.pid, 10000), 2, "--guest is required");
        close(c.out);
    }
    /* No broker at the endpoint: a clear failure within the library's
     * connect bound, not a hang. */
    char ep[320];
    snprintf(ep, sizeof ep, "ipc://%s/nobody.sock", dir);
    char *argv[] = {bin, "--guest", sock, "--endpoint", ep, "--confidential", NULL};
    child c;
    s_spawn(&c, argv, log);
    uint64_t t = ul_now_ms();
    cr_assert_eq(ut_wait_code(c.pid, 10000), 1);
    cr_assert_lt(ul_now_ms() - t, 2000 + 3000);
    close(c.out);
    s_rmdir(dir);
}
