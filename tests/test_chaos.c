// ctest-timeout: 120
/*
 * test_chaos.c — the real uvmleased killed with SIGKILL and started again
 * over and over while workers keep bringing up two confidential UVMs
 * through `uvmleasectl run`.
 *
 * Each run's command is this test binary ("--ul-helper hold ..."): it
 * appends "BEGIN <uvm> <fence> <monotonic ns> <pid>" to a shared log, holds
 * the lease a few milliseconds, and appends "END ...". Each line is one
 * O_APPEND write, so the log is the order in which the commands really ran.
 * Afterwards the log is checked: no two commands on one UVM overlap, fences
 * go up in the order the commands began, every BEGIN has its END, and
 * enough cycles ran. Half of the restarts are pinned: the commands holding
 * both UVMs are kept from ending (a gate file) until the new instance
 * answers, so a restart with live holders (and queued waiters) is always
 * exercised; the others land wherever the workers happen to be.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_proto.h"
#include "ul_sys.h"
#include "uvmlease_errors.h"

TestSuite(chaos, .timeout = 90);

#define N_WORKERS  4
#define N_RESTARTS 8
#define HOLD_MS    3
#define CONFLICT   75 /* uvmleasectl run: the lease was not obtained */

static const char *const s_uvms[2] = {
    "c4a05e0000000000000000000000000000000000000000000000000000000001@vm",
    "c4a05e0000000000000000000000000000000000000000000000000000000002@vm",
};

static uint64_t s_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void s_nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------- helper */

static bool s_log_line(int fd, const char *what, const char *uvm, const char *fence)
{
    char line[512];
    int n = snprintf(line, sizeof line, "%s %s %s %" PRIu64 " %d\n", what, uvm, fence, s_mono_ns(),
                     (int)getpid());
    return n > 0 && (size_t)n < sizeof line && write(fd, line, (size_t)n) == n;
}

/* hold LOG UVM GATE: exit 0 ok, 6 no fence, 90 I/O, 91 the gate stayed. */
static int s_helper(int argc, char **argv)
{
    if (argc < 6 || strcmp(argv[2], "hold") != 0)
        return 92;
    const char *fence = getenv("UVMLEASE_FENCE");
    if (!fence || strtoull(fence, NULL, 10) == 0)
        return 6;
    int fd = open(argv[3], O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0 || !s_log_line(fd, "BEGIN", argv[4], fence))
        return 90;
    /* The hold widens the window an overlap would show in; it
     * synchronises nothing. */
    s_nap_ms(HOLD_MS);
    /* A pinned restart: stay in the lease until the test lifts the gate. */
    uint64_t limit = ul_now_ms() + 30000;
    while (access(argv[5], F_OK) == 0) {
        if (ul_now_ms() > limit)
            return 91;
        s_nap_ms(1);
    }
    if (!s_log_line(fd, "END", argv[4], fence))
        return 90;
    close(fd);
    return 0;
}

/* glibc passes main's arguments to constructors. */
__attribute__((constructor)) static void s_maybe_helper(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "--ul-helper") == 0)
        _exit(s_helper(argc, argv));
}

/* ------------------------------------------------------------- daemon */

typedef struct chaos {
    char dir[256];
    char ep[400];
    char daemon_log[400];
    char ctl_err[400];
    char log[400];
    char gate[400];
    char ctl[512];
    char self[512];
    pid_t daemon;
} chaos;

static pid_t s_daemon_spawn(const chaos *c)
{
    char bin[512];
    ut_build_path("uvmleased", bin, sizeof bin);
    pid_t pid = ut_fork();
    if (pid == 0) {
        int fd = open(c->daemon_log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execl(bin, bin, "--runtime-dir", c->dir, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* ------------------------------------------------------------- workers */

typedef struct shared {
    int stop;
    int pause;           /* quiet restart: start no run while set */
    int split;           /* pinned restart: worker k runs on UVM k % 2 */
    int idle[N_WORKERS]; /* the worker saw pause and runs nothing */
    unsigned runs[N_WORKERS];
    unsigned ok[N_WORKERS];
    unsigned conflict[N_WORKERS];
    unsigned other[N_WORKERS];
    int last_other[N_WORKERS];
} shared;

static int s_run_once(const chaos *c, const char *uvm)
{
    pid_t pid = fork();
    if (pid == 0) {
        /* A failed test kills its workers: their commands go with them. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, 1);
        fd = open(c->ctl_err, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execl(c->ctl, c->ctl, "--endpoint", c->ep, "run", "--uvm", uvm, "--confidential", "--",
              c->self, "--ul-helper", "hold", c->log, uvm, c->gate, (char *)NULL);
        _exit(120);
    }
    if (pid < 0)
        return -1;
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

static void s_worker(const chaos *c, shared *sh, int k)
{
    for (unsigned i = 0; !__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE); i++) {
        while (__atomic_load_n(&sh->pause, __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&sh->idle[k], 1, __ATOMIC_RELEASE);
            s_nap_ms(1);
        }
        __atomic_store_n(&sh->idle[k], 0, __ATOMIC_RELEASE);
        unsigned u = __atomic_load_n(&sh->split, __ATOMIC_ACQUIRE) ? (unsigned)k : i + (unsigned)k;
        int code = s_run_once(c, s_uvms[u % 2]);
        sh->runs[k]++;
        if (code == 0)
            sh->ok[k]++;
        else if (code == CONFLICT)
            sh->conflict[k]++;
        else {
            sh->other[k]++;
            sh->last_other[k] = code;
        }
    }
    _exit(0);
}

/* ------------------------------------------------------------- the log */

typedef struct entry {
    bool begin;
    int uvm;
    uint64_t fence, ns;
    int pid;
} entry;

typedef struct verdict {
    unsigned cycles[2];
    unsigned overlaps, fence_back, unmatched, bad_lines;
    unsigned open_at_end;
    unsigned straddling; /* cycles that a kill landed inside */
    unsigned after_last_kill[2];
    unsigned began_after_last_kill;
    bool open[2];
    char first_problem[512];
} verdict;

static void s_problem(verdict *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_problem(verdict *v, const char *fmt, ...)
{
    if (v->first_problem[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->first_problem, sizeof v->first_problem, fmt, ap);
    va_end(ap);
}

static void s_check_log(const char *path, const uint64_t *kills, unsigned n_kills, verdict *v)
{
    memset(v, 0, sizeof *v);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    entry cur[2] = {{0}};
    uint64_t last_fence[2] = {0, 0};
    uint64_t last_kill = n_kills ? kills[n_kills - 1] : 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char what[8], uvm[300];
        entry e;
        if (sscanf(line, "%7s %299s %" SCNu64 " %" SCNu64 " %d", what, uvm, &e.fence, &e.ns,
                   &e.pid) != 5) {
            v->bad_lines++;
            continue;
        }
        e.begin = strcmp(what, "BEGIN") == 0;
        e.uvm = strcmp(uvm, s_uvms[0]) == 0 ? 0 : strcmp(uvm, s_uvms[1]) == 0 ? 1 : -1;
        if (e.uvm < 0 || (!e.begin && strcmp(what, "END") != 0)) {
            v->bad_lines++;
            continue;
        }
        int u = e.uvm;
        if (e.begin) {
            if (n_kills && e.ns > last_kill)
                v->began_after_last_kill++;
            if (v->open[u]) {
                v->overlaps++;
                s_problem(v,
                          "overlap on UVM %d: pid %d began (fence %" PRIu64 ") while pid %d "
                          "(fence %" PRIu64 ", began %.3f ms earlier) had not ended",
                          u, e.pid, e.fence, cur[u].pid, cur[u].fence,
                          (double)(e.ns - cur[u].ns) / 1e6);
            }
            if (e.fence <= last_fence[u]) {
                v->fence_back++;
                s_problem(v, "fence on UVM %d went from %" PRIu64 " to %" PRIu64 " (pid %d)", u,
                          last_fence[u], e.fence, e.pid);
            }
            last_fence[u] = e.fence;
            cur[u] = e;
            v->open[u] = true;
        } else {
            if (!v->open[u] || cur[u].pid != e.pid || cur[u].fence != e.fence) {
                v->unmatched++;
                s_problem(v, "END on UVM %d by pid %d (fence %" PRIu64 ") does not match", u, e.pid,
                          e.fence);
                continue;
            }
            v->open[u] = false;
            v->cycles[u]++;
            for (unsigned k = 0; k < n_kills; k++)
                if (cur[u].ns < kills[k] && kills[k] < e.ns)
                    v->straddling++;
            if (n_kills && cur[u].ns > last_kill)
                v->after_last_kill[u]++;
        }
    }
    fclose(f);
    v->open_at_end = v->open[0] + v->open[1];
}

/* Wait until the log shows a command inside its lease on both UVMs. */
static bool s_both_held(const chaos *c, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        verdict v;
        s_check_log(c->log, NULL, 0, &v);
        if (v.open[0] && v.open[1])
            return true;
        if (ul_now_ms() >= deadline)
            return false;
        s_nap_ms(1);
    }
}

/* After a pinned restart: wait until the workers that do not hold a UVM
 * are queued on the new instance (they re-sent their acquires), or until a
 * command began after the kill (then the log shows what went wrong). */
static bool s_waiters_back(const chaos *c, uint64_t kill_ns, uint32_t want, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    void *s = ut_dealer(c->ep);
    bool ok = false;
    while (!ok) {
        ul_request q;
        ul_reply r;
        memset(&r, 0, sizeof r);
        ut_req(&q, UL_OP_LIST);
        if (ut_call(s, &q, &r, 1000) == 0 && r.err == 0) {
            uint32_t n = 0;
            for (uint32_t i = 0; i < r.n_uvms; i++)
                n += r.uvms[i].waiter_count;
            ok = n >= want;
        }
        ul_reply_free(&r);
        if (!ok) {
            uint64_t k[1] = {kill_ns};
            verdict v;
            s_check_log(c->log, k, 1, &v);
            ok = v.began_after_last_kill > 0;
        }
        if (ok || ul_now_ms() >= deadline)
            break;
        s_nap_ms(2);
    }
    ut_dealer_close(s);
    return ok;
}

/* Wait until a cycle on each UVM began after the last kill and ended. */
static bool s_cycled_since(const chaos *c, const uint64_t *kills, unsigned n, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        verdict v;
        s_check_log(c->log, kills, n, &v);
        if (v.after_last_kill[0] && v.after_last_kill[1])
            return true;
        if (ul_now_ms() >= deadline)
            return false;
        s_nap_ms(2);
    }
}

static void s_tail(const char *path)
{
    char buf[4096];
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long end = ftell(f);
    fseek(f, end > (long)sizeof buf - 1 ? end - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "---- %s (tail)\n%s\n", path, buf);
}

/* ------------------------------------------------------------- the test */

Test(chaos, kill9_restarts_under_load_never_overlap)
{
    chaos c;
    memset(&c, 0, sizeof c);
    ut_tmpdir("chaos", c.dir, sizeof c.dir);
    snprintf(c.ep, sizeof c.ep, "ipc://%s/broker.sock", c.dir);
    snprintf(c.daemon_log, sizeof c.daemon_log, "%s/daemon.log", c.dir);
    snprintf(c.ctl_err, sizeof c.ctl_err, "%s/ctl.err", c.dir);
    snprintf(c.log, sizeof c.log, "%s/runs.log", c.dir);
    snprintf(c.gate, sizeof c.gate, "%s/gate", c.dir);
    ut_build_path("client/uvmleasectl", c.ctl, sizeof c.ctl);
    cr_assert_eq(access(c.ctl, X_OK), 0, "no uvmleasectl at %s (set UL_BUILD_DIR)", c.ctl);
    ssize_t sl = readlink("/proc/self/exe", c.self, sizeof c.self - 1);
    cr_assert_gt(sl, 0);
    c.self[sl] = '\0';
    int lfd = open(c.log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(lfd, 0);
    close(lfd);

    c.daemon = s_daemon_spawn(&c);
    cr_assert(ut_ping_until(c.ep, 10000), "uvmleased did not answer");

    shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t workers[N_WORKERS];
    for (int k = 0; k < N_WORKERS; k++) {
        workers[k] = ut_fork();
        if (workers[k] == 0)
            s_worker(&c, sh, k);
    }

    uint64_t kills[N_RESTARTS];
    unsigned n_kills = 0, pinned = 0, quiets = 0;
    uint64_t t0 = ul_now_ms();
    for (int i = 0; i < N_RESTARTS; i++) {
        /* 0.8 to 1.6 s of normal running between restarts (a fixed,
         * uneven sequence). */
        s_nap_ms(800 + (i * 379) % 800);
        /* pinned: 1, 3, 5; quiet (nothing held, nobody waiting): 2, 6;
         * wherever the workers are: 0, 4, 7 */
        bool pin = i == 1 || i == 3 || i == 5;
        bool quiet = i == 2 || i == 6;
        if (quiet || pin) {
            /* Every worker between runs: nothing held (quiet), or a
             * known start for the pinned restart. */
            __atomic_store_n(&sh->pause, 1, __ATOMIC_RELEASE);
            uint64_t limit = ul_now_ms() + 20000;
            for (int k = 0; k < N_WORKERS; k++)
                while (!__atomic_load_n(&sh->idle[k], __ATOMIC_ACQUIRE)) {
                    cr_assert_lt(ul_now_ms(), limit, "restart %d: worker %d did not go idle", i, k);
                    s_nap_ms(1);
                }
            if (quiet)
                quiets++;
        }
        if (pin) {
            /* Commands hold while the gate exists; two workers go to each
             * UVM, so each is held by one while the other waits (left to
             * chance, all three others could queue on the held one). */
            int gfd = open(c.gate, O_WRONLY | O_CREAT, 0600);
            cr_assert_geq(gfd, 0);
            close(gfd);
            __atomic_store_n(&sh->split, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&sh->pause, 0, __ATOMIC_RELEASE);
            if (!s_both_held(&c, 10000)) {
                s_tail(c.log);
                s_tail(c.daemon_log);
                cr_assert_fail("restart %d: no command held both UVMs within 10 s", i);
            }
        }
        kill(c.daemon, SIGKILL);
        kills[n_kills++] = s_mono_ns();
        cr_assert_eq(ut_wait_code(c.daemon, 10000), 1000 + SIGKILL);
        c.daemon = s_daemon_spawn(&c);
        if (!ut_ping_until(c.ep, 10000)) {
            s_tail(c.daemon_log);
            cr_assert_fail("restart %d: uvmleased did not answer", i);
        }
        if (pin) {
            /* The holders keep their leases in the new instance; the
             * others come back as waiters (the library re-sends). */
            if (!s_waiters_back(&c, kills[n_kills - 1], N_WORKERS - 2, 10000)) {
                s_tail(c.daemon_log);
                cr_assert_fail("restart %d: the waiters did not come back", i);
            }
            pinned++;
            __atomic_store_n(&sh->split, 0, __ATOMIC_RELEASE);
            cr_assert_eq(unlink(c.gate), 0);
        }
        if (quiet)
            __atomic_store_n(&sh->pause, 0, __ATOMIC_RELEASE);
    }
    bool cycled = s_cycled_since(&c, kills, n_kills, 20000);
    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);
    for (int k = 0; k < N_WORKERS; k++) {
        int code = ut_wait_code(workers[k], 30000);
        if (code != 0) {
            s_tail(c.log);
            s_tail(c.daemon_log);
            s_tail(c.ctl_err);
        }
        cr_assert_eq(code, 0, "worker %d did not finish (%d): a run hung", k, code);
    }
    uint64_t elapsed = ul_now_ms() - t0;

    /* Nothing is left held: both UVMs are free at once. */
    void *s = ut_dealer(c.ep);
    int free_rc[2];
    for (int u = 0; u < 2; u++) {
        ul_reply r;
        memset(&r, 0, sizeof r);
        free_rc[u] = ut_acquire(s, s_uvms[u], true, "final", 0, &r, NULL, NULL, 5000);
        if (free_rc[u] == 0)
            ut_release(s, r.lease);
        ul_reply_free(&r);
    }
    ut_dealer_close(s);

    verdict v;
    s_check_log(c.log, kills, n_kills, &v);
    unsigned runs = 0, ok = 0, conflict = 0, other = 0;
    int last_other = 0;
    for (int k = 0; k < N_WORKERS; k++) {
        runs += sh->runs[k];
        ok += sh->ok[k];
        conflict += sh->conflict[k];
        other += sh->other[k];
        if (sh->other[k])
            last_other = sh->last_other[k];
    }
    char summary[512];
    snprintf(summary, sizeof summary,
             "chaos: %u restarts (%u pinned, %u quiet) in %" PRIu64
             " ms; runs %u: ok %u, not obtained %u, "
             "other %u (last %d); cycles %u + %u; straddling a kill %u; overlaps %u, fence "
             "regressions %u, unmatched %u, bad lines %u, open at end %u",
             n_kills, pinned, quiets, elapsed, runs, ok, conflict, other, last_other, v.cycles[0],
             v.cycles[1], v.straddling, v.overlaps, v.fence_back, v.unmatched, v.bad_lines,
             v.open_at_end);
    fprintf(stderr, "%s\n", summary);
    cr_log_info("%s", summary);
    if (v.first_problem[0])
        fprintf(stderr, "chaos: first problem: %s\n", v.first_problem);
    if (v.overlaps || v.fence_back || v.unmatched || other) {
        s_tail(c.daemon_log);
        s_tail(c.ctl_err);
    }

    cr_expect_eq(v.overlaps, 0, "bring-ups overlapped: %s", v.first_problem);
    cr_expect_eq(v.fence_back, 0, "a fence did not go up: %s", v.first_problem);
    cr_expect_eq(v.unmatched, 0, "%s", v.first_problem);
    cr_expect_eq(v.bad_lines, 0);
    cr_expect_eq(v.open_at_end, 0, "a command never ended");
    cr_expect_eq(other, 0, "a run ended with an unexpected status (last %d)", last_other);
    cr_expect_eq(free_rc[0], 0, "UVM 0 still held after every run ended (%d)", free_rc[0]);
    cr_expect_eq(free_rc[1], 0, "UVM 1 still held after every run ended (%d)", free_rc[1]);
    cr_expect(cycled, "no cycle completed on each UVM after the last restart");
    /* Each pinned restart killed the broker inside a command on both UVMs. */
    cr_expect_geq(v.straddling, 2 * pinned);
    cr_expect_geq(v.cycles[0], 20, "too few cycles on UVM 0 for the test to mean anything");
    cr_expect_geq(v.cycles[1], 20, "too few cycles on UVM 1 for the test to mean anything");

    kill(c.daemon, SIGTERM);
    cr_expect_eq(ut_wait_code(c.daemon, 10000), 0);
    munmap(sh, sizeof *sh);
    if (!getenv("UL_TEST_KEEP"))
        ut_rmrf(c.dir);
}
