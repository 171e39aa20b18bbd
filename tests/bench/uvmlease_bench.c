/*
 * uvmlease_bench.c — uvmlease-bench: what a lease costs, measured the way it
 * is used (the real uvmleased daemon, clients in other processes) and set
 * against floors measured in the same run on the same machine.
 *
 *   1. floor     echo:  one bare ZeroMQ ipc round trip, DEALER -> ROUTER ->
 *                       DEALER, a message of an acquire request's size, two
 *                       processes
 *                relay: A sends one message through a relay process (a
 *                       ROUTER) to B, who has been blocked in receive for a
 *                       couple of ms (what a handoff is at best)
 *                flock: flock(2) LOCK_EX + LOCK_UN on a per-UVM file
 *   2. latency   cycle: acquire (granted at once) + release through
 *                       libuvmlease, one process
 *                raw cycle, ping: the same cycle, and a ping, from a raw
 *                       DEALER blocking in receive (the broker without the
 *                       library)
 *                handoff: the holder releases -> the queued waiter's acquire
 *                       returns (two processes)
 *                crash handoff: the holder is killed with SIGKILL -> the
 *                       waiter's acquire returns; kill-to-exit (until the
 *                       holder's pidfd is readable) measured alongside
 *                       The same two handoffs through flock(2) for comparison.
 *   3. throughput 1, 8 and 32 client processes doing cycles against the
 *                broker, and the same processes doing echo round trips
 *                against the echo server, in alternating phases
 *   4. contention 32 processes on one confidential UVM, each holding it 1 ms
 *   5. scale     10, 1,000 and 16,000 leases held by other processes: broker
 *                memory per lease, the cycle against 10 held, uvmleasectl
 *                list and list --json
 *   6. aged      a broker that has served 100,000 cycles against a fresh one,
 *                both with 1,000 leases held; measured interleaved
 *
 * The coordinating process never starts a thread (no ZeroMQ context, no
 * libuvmlease handle): every measuring process is forked from it. Samples
 * go to shared memory; timestamps are CLOCK_MONOTONIC, comparable across
 * processes.
 *
 * Prints a table, each figure next to its target (information only) and
 * writes --json FILE. Exits non-zero only when an operation failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ul_proto.h"
#include "uvmlease.h"

#if defined(UVMLEASE_HAVE_RELEASE_NOWAIT) || defined(UL_BENCH_HAVE_RELEASE_NOWAIT)
#define BENCH_ASYNC 1
#else
#define BENCH_ASYNC 0
#endif

#ifndef UL_BENCH_UVMLEASED
#define UL_BENCH_UVMLEASED "uvmleased"
#endif
#ifndef UL_BENCH_UVMLEASECTL
#define UL_BENCH_UVMLEASECTL "uvmleasectl"
#endif

#define LABEL          "0c3f9d1e2b4a5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678ab"
#define SETTLE_NS      2000000ull /* a waiter blocked this long is settled */
#define SCALE_PER_PROC 1000       /* leases per holder process (cap: 1024) */
#define NPROC_MAX      32

/* ---- settings ------------------------------------------------------------ */

typedef struct counts {
    int rounds;    /* section 2: rounds the floor and cycle alternate in */
    int per_round; /* echo round trips and cycles per round */
    int flock_per_round;
    int handoffs;      /* relay, handoff, flock handoff samples */
    int crashes;       /* crash handoff samples (each, lib and flock) */
    double tp_phase_s; /* one throughput phase */
    double cont_s;     /* contention run */
    int scale[3];      /* held leases */
    int scale_cycles;  /* cycles measured per scale level */
    int scale_lists;   /* list / list --json runs per level */
    int aged_leases;
    int aged_cycles;  /* cycles served before measuring */
    int aged_samples; /* cycles measured on each broker */
    int aged_lists;   /* list --json runs on each broker */
} counts;

static const counts k_full = {
    .rounds = 10,
    .per_round = 2000,
    .flock_per_round = 5000,
    .handoffs = 1000,
    .crashes = 300,
    .tp_phase_s = 1.5,
    .cont_s = 4.0,
    .scale = {10, 1000, 16000},
    .scale_cycles = 3000,
    .scale_lists = 3,
    .aged_leases = 1000,
    .aged_cycles = 100000,
    .aged_samples = 4000,
    .aged_lists = 10,
};

static const counts k_quick = {
    .rounds = 2,
    .per_round = 200,
    .flock_per_round = 1000,
    .handoffs = 30,
    .crashes = 8,
    .tp_phase_s = 0.15,
    .cont_s = 0.4,
    .scale = {10, 100, 1000},
    .scale_cycles = 200,
    .scale_lists = 1,
    .aged_leases = 100,
    .aged_cycles = 2000,
    .aged_samples = 200,
    .aged_lists = 2,
};

static struct {
    bool quick;
    const char *json;
    const char *uvmleased;
    const char *uvmleasectl;
    const char *server_cpus; /* NULL: not pinned */
    const char *client_cpus;
    cpu_set_t server_set, client_set, all_set; /* all_set: as started */
    bool keep;
    counts n;
} g;

static char g_dir[] = "/tmp/uvmlease-bench-XXXXXX";
static size_t g_msg_len; /* an encoded acquire request's size */
static int *g_failures;  /* shared: operations that failed, any process */
static json_t *g_json;

enum role { ROLE_SERVER, ROLE_CLIENT };

/* Under ASan the shadow memory makes memory figures meaningless. */
#ifdef UL_SANITIZED
static const bool k_sanitized = true;
#else
static const bool k_sanitized = false;
#endif

/* ---- small helpers --------------------------------------------------------- */

static uint64_t s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void s_sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void s_sleep_until(uint64_t t)
{
    struct timespec ts = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void s_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "uvmlease-bench[%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    __atomic_fetch_add(g_failures, 1, __ATOMIC_SEQ_CST);
}

static void s_die(const char *what)
{
    fprintf(stderr, "uvmlease-bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *s_shared(size_t n)
{
    void *p = mmap(NULL, n ? n : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        s_die("mmap");
    return p;
}

static void s_unshare(void *p, size_t n)
{
    munmap(p, n ? n : 1);
}

static void s_pipe(int fd[2])
{
    if (pipe2(fd, O_CLOEXEC) < 0)
        s_die("pipe");
}

/* Write or read exactly n bytes; false on error or EOF. Reads give up
 * after timeout_ms (the coordinator never waits forever on a child). */
static bool s_put(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = write(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= (size_t)k;
    }
    return true;
}

static bool s_get(int fd, void *p, size_t n, int timeout_ms)
{
    char *c = p;
    while (n) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int r = poll(&pf, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        ssize_t k = read(fd, c, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= (size_t)k;
    }
    return true;
}

static int s_parse_cpus(const char *s, cpu_set_t *set)
{
    CPU_ZERO(set);
    const char *p = s;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p || a < 0 || a >= CPU_SETSIZE)
            return -1;
        p = end;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1 || b < a || b >= CPU_SETSIZE)
                return -1;
            p = end;
        }
        for (long i = a; i <= b; i++)
            CPU_SET((int)i, set);
        if (*p == ',')
            p++;
        else if (*p)
            return -1;
    }
    return CPU_COUNT(set) ? 0 : -1;
}

static void s_pin(enum role r)
{
    const cpu_set_t *set = r == ROLE_SERVER ? (g.server_cpus ? &g.server_set : &g.all_set)
                                            : (g.client_cpus ? &g.client_set : &g.all_set);
    if ((g.server_cpus || g.client_cpus) && sched_setaffinity(0, sizeof(cpu_set_t), set) < 0)
        s_fail("sched_setaffinity: %s", strerror(errno));
}

/* fork(); the child dies with the coordinator and is pinned to its role. */
static pid_t s_fork(enum role r)
{
    fflush(NULL);
    pid_t p = fork();
    if (p < 0)
        s_die("fork");
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        s_pin(r);
    }
    return p;
}

/* Exit status of a child: 0 when it exited 0. */
static int s_reap(pid_t p)
{
    int st;
    while (waitpid(p, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static void s_reap_ok(pid_t p, const char *what)
{
    int rc = s_reap(p);
    if (rc != 0)
        s_fail("%s: process %d ended with status %d", what, (int)p, rc);
}

static void s_kill(pid_t p)
{
    kill(p, SIGKILL);
    s_reap(p);
}

/* ---- statistics ------------------------------------------------------------ */

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stats {
    int n;
    double p50, p99, mean, max;
} stats;

/* Of n samples in ns, figures in us. Sorts v. */
static stats s_stats(double *v, int n)
{
    stats s = {.n = n};
    if (n <= 0)
        return s;
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    s.p50 = v[n / 2] / 1000.0;
    int i99 = (int)ceil(n * 0.99) - 1;
    s.p99 = v[i99 < 0 ? 0 : i99] / 1000.0;
    s.mean = sum / n / 1000.0;
    s.max = v[n - 1] / 1000.0;
    return s;
}

/* ---- results: JSON and the table ------------------------------------------- */

typedef struct row {
    char key[64];
    double v;
    char unit[8];
    char note[240];
} row;

static row g_rows[128];
static int g_nrows;

static void s_fig(const char *key, double v, const char *unit, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_fig(const char *key, double v, const char *unit, const char *fmt, ...)
{
    json_object_set_new(g_json, key, isfinite(v) ? json_real(v) : json_null());
    if (g_nrows >= (int)(sizeof g_rows / sizeof g_rows[0]))
        return;
    row *r = &g_rows[g_nrows++];
    snprintf(r->key, sizeof r->key, "%s", key);
    r->v = v;
    snprintf(r->unit, sizeof r->unit, "%s", unit);
    r->note[0] = 0;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->note, sizeof r->note, fmt, ap);
        va_end(ap);
    }
}

static void s_heading(const char *h)
{
    if (g_nrows >= (int)(sizeof g_rows / sizeof g_rows[0]))
        return;
    row *r = &g_rows[g_nrows++];
    snprintf(r->key, sizeof r->key, "#");
    snprintf(r->note, sizeof r->note, "%s", h);
}

static void s_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "uvmlease-bench: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The issue's targets, checked on the figures (information only). */
typedef struct target {
    const char *key;
    char op; /* '<' at most, '>' at least, '~' within 10 % of the key in ref */
    double limit;
    const char *ref;
} target;

static const target k_targets[] = {
    {"cycle_ratio", '<', 2.2, NULL},
    {"handoff_ratio", '<', 1.2, NULL},
    {"crash_extra_us", '<', 100, NULL},
    {"throughput_ratio_8", '>', 0.7, NULL},
    {"throughput_ratio_32", '>', 0.7, NULL},
    {"bytes_per_lease_16k", '<', 1024, NULL},
    {"cycle_ratio_16k", '<', 1.1, NULL},
    {"list_json_16k_s", '<', 0.3, NULL},
    {"aged_cycle_ratio", '<', 1.1, NULL},
    {"aged_list_ratio", '<', 1.1, NULL},
    {"contention_max_lead", '<', 1, NULL},
    {"contention_grants_per_s", '~', 0.1, "contention_expected_grants_per_s"},
    {"cycle_async_ratio", '<', 1.2, NULL},
};

static double s_json_num(const char *key)
{
    json_t *v = json_object_get(g_json, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

/* "" when the key has no target, else "target ≤ 2.2: met" and the like. */
static void s_target_text(const char *key, char *out, size_t outsz, json_t *targets)
{
    out[0] = 0;
    for (size_t i = 0; i < sizeof k_targets / sizeof k_targets[0]; i++) {
        const target *t = &k_targets[i];
        if (strcmp(t->key, key) != 0)
            continue;
        double v = s_json_num(key);
        double ref = t->ref ? s_json_num(t->ref) : NAN;
        bool met = false;
        char want[80];
        if (t->op == '<') {
            met = v <= t->limit;
            snprintf(want, sizeof want, "<= %g", t->limit);
        } else if (t->op == '>') {
            met = v >= t->limit;
            snprintf(want, sizeof want, ">= %g", t->limit);
        } else {
            met = fabs(v - ref) <= t->limit * ref;
            snprintf(want, sizeof want, "within %g%% of %.0f", t->limit * 100, ref);
        }
        bool known = isfinite(v) && (!t->ref || isfinite(ref));
        snprintf(out, outsz, "target %s: %s", want, known ? (met ? "met" : "NOT met") : "n/a");
        json_t *o = json_object();
        json_object_set_new(o, "target", json_string(want));
        json_object_set_new(o, "met", known ? json_boolean(met) : json_null());
        json_object_set_new(targets, key, o);
    }
}

static void s_print_table(void)
{
    json_t *targets = json_object();
    printf("\n%-34s %14s  %-4s  %s\n", "figure", "value", "unit", "detail / target");
    for (int i = 0; i < g_nrows; i++) {
        row *r = &g_rows[i];
        if (r->key[0] == '#') {
            printf("-- %s\n", r->note);
            continue;
        }
        char tt[128];
        s_target_text(r->key, tt, sizeof tt, targets);
        char val[32];
        if (!isfinite(r->v))
            snprintf(val, sizeof val, "n/a");
        else if (fabs(r->v) >= 1000 || r->v == floor(r->v))
            snprintf(val, sizeof val, "%.0f", r->v);
        else if (fabs(r->v) < 1)
            snprintf(val, sizeof val, "%.3f", r->v);
        else
            snprintf(val, sizeof val, "%.2f", r->v);
        printf("%-34s %14s  %-4s  %s%s%s\n", r->key, val, r->unit, r->note,
               r->note[0] && tt[0] ? "; " : "", tt);
    }
    json_object_set_new(g_json, "targets", targets);
}

/* ---- the codec, for raw DEALER clients -------------------------------------- */

static void s_uvm(char *out, size_t outsz, unsigned tag, unsigned idx)
{
    snprintf(out, outsz, "%08x%08x4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm", tag,
             idx);
}

static void s_req_acquire(ul_request *q, uint64_t rid, const char *uvm)
{
    memset(q, 0, sizeof *q);
    q->version = UL_PROTO_VERSION;
    q->op = UL_OP_ACQUIRE;
    q->rid = rid;
    snprintf(q->uvm, sizeof q->uvm, "%s", uvm);
    snprintf(q->label, sizeof q->label, "%s", LABEL);
    q->confidential = true;
    q->timeout_ms = 30000;
}

static void *s_dealer(void *ctx, const char *ep, const char *id)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    if (id)
        zmq_setsockopt(d, ZMQ_ROUTING_ID, id, strlen(id));
    if (zmq_connect(d, ep) < 0) {
        s_fail("zmq_connect %s: %s", ep, zmq_strerror(zmq_errno()));
        return NULL;
    }
    return d;
}

static int s_send_req(void *d, const ul_request *q, ul_buf *out)
{
    out->len = 0;
    if (ul_request_encode(q, out) || zmq_send(d, out->data, out->len, 0) < 0)
        return -1;
    return 0;
}

/* One reply; 0 when it decoded (the caller frees it). */
static int s_recv_rep(void *d, ul_reply *r)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, d, 0) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    int rc = ul_reply_decode(zmq_msg_data(&m), zmq_msg_size(&m), r);
    zmq_msg_close(&m);
    return rc;
}

/* ---- servers: echo and relay ------------------------------------------------ */

/* Sends [id][body], waiting while the peer is not connected yet. */
static int s_route(void *r, zmq_msg_t *id, zmq_msg_t *body)
{
    for (int tries = 0;; tries++) {
        zmq_msg_t i2, b2;
        zmq_msg_init(&i2);
        zmq_msg_init(&b2);
        zmq_msg_copy(&i2, id);
        zmq_msg_copy(&b2, body);
        if (zmq_msg_send(&i2, r, ZMQ_SNDMORE) >= 0) {
            if (zmq_msg_send(&b2, r, 0) >= 0)
                return 0;
            zmq_msg_close(&b2);
            return -1;
        }
        zmq_msg_close(&i2);
        zmq_msg_close(&b2);
        if (zmq_errno() != EHOSTUNREACH || tries > 20000)
            return -1;
        s_sleep_ns(100000);
    }
}

/* A ROUTER that sends every message back (echo), or on to the other of the
 * peers "A" and "B" (relay). Runs until killed. */
static void s_server_main(const char *ep, bool relay)
{
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 0, mandatory = 1, hwm = 100000;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(r, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    zmq_setsockopt(r, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(r, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (zmq_bind(r, ep) < 0) {
        s_fail("bind %s: %s", ep, zmq_strerror(zmq_errno()));
        _exit(1);
    }
    for (;;) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, r, 0) < 0 || zmq_msg_recv(&body, r, 0) < 0)
            _exit(1);
        if (relay) {
            const char *who = zmq_msg_size(&id) == 1 ? zmq_msg_data(&id) : "?";
            zmq_msg_close(&id);
            zmq_msg_init_size(&id, 1);
            *(char *)zmq_msg_data(&id) = *who == 'A' ? 'B' : 'A';
            if (s_route(r, &id, &body))
                s_fail("relay: send failed");
            zmq_msg_close(&id);
            zmq_msg_close(&body);
        } else {
            zmq_msg_send(&id, r, ZMQ_SNDMORE);
            zmq_msg_send(&body, r, 0);
        }
    }
}

static pid_t s_server_start(const char *ep, bool relay)
{
    pid_t p = s_fork(ROLE_SERVER);
    if (p == 0)
        s_server_main(ep, relay);
    return p;
}

/* ---- the daemon ---------------------------------------------------------------- */

typedef struct bdaemon {
    pid_t pid;
    char dir[256];
    char ep[300];
} bdaemon;

/* A client process that connects through libuvmlease, retrying until the
 * broker answers (10 s). */
static bool s_wait_broker(const char *ep)
{
    pid_t p = s_fork(ROLE_CLIENT);
    if (p == 0) {
        uint64_t end = s_now() + 10000000000ull;
        while (s_now() < end) {
            uvmlease *c = NULL;
            if (uvmlease_connect(ep, &c) == UVMLEASE_OK) {
                uvmlease_close(c);
                _exit(0);
            }
            s_sleep_ns(5000000);
        }
        _exit(1);
    }
    return s_reap(p) == 0;
}

static void s_daemon_start(bdaemon *d, const char *name)
{
    snprintf(d->dir, sizeof d->dir, "%s/%s", g_dir, name);
    snprintf(d->ep, sizeof d->ep, "ipc://%s/broker.sock", d->dir);
    char log[300];
    snprintf(log, sizeof log, "%s/%s.log", g_dir, name);
    d->pid = s_fork(ROLE_SERVER);
    if (d->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        execl(g.uvmleased, g.uvmleased, "--runtime-dir", d->dir, "--max-leases", "20000",
              (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", g.uvmleased, strerror(errno));
        _exit(127);
    }
    if (!s_wait_broker(d->ep)) {
        fprintf(stderr, "uvmlease-bench: uvmleased (%s) did not answer; its log: %s\n", g.uvmleased,
                log);
        kill(d->pid, SIGKILL);
        exit(2);
    }
}

static void s_daemon_stop(bdaemon *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    s_reap(d->pid);
    d->pid = 0;
}

static long s_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Wall time of `uvmleasectl --endpoint EP [--json] list`, in seconds,
 * output discarded; NAN when it failed. */
static double s_ctl_list(const char *ep, bool json)
{
    uint64_t t0 = s_now();
    pid_t p = s_fork(ROLE_CLIENT);
    if (p == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, 1);
        if (json)
            execl(g.uvmleasectl, g.uvmleasectl, "--endpoint", ep, "--json", "list", (char *)NULL);
        else
            execl(g.uvmleasectl, g.uvmleasectl, "--endpoint", ep, "list", (char *)NULL);
        _exit(127);
    }
    int rc = s_reap(p);
    double s = (double)(s_now() - t0) / 1e9;
    if (rc != 0) {
        s_fail("uvmleasectl list%s exited %d", json ? " --json" : "", rc);
        return NAN;
    }
    return s;
}

static double s_median_of(double *v, int n)
{
    if (n <= 0)
        return NAN;
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return v[n / 2];
}

/* ---- lock kinds for the handoff scenarios --------------------------------------- */

typedef struct lk {
    bool flock;
    const char *target; /* endpoint, or the lock file */
    const char *uvm;
    uvmlease *c;
    uvmlease_lease *l;
    int fd;
} lk;

static int s_lk_open(lk *k)
{
    if (k->flock) {
        k->fd = open(k->target, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        return k->fd < 0 ? -1 : 0;
    }
    int rc = uvmlease_connect(k->target, &k->c);
    if (rc)
        s_fail("connect: %s", uvmlease_strerror(rc));
    return rc;
}

static int s_lk_acquire(lk *k, int64_t timeout_ms)
{
    if (k->flock) {
        while (flock(k->fd, LOCK_EX) < 0)
            if (errno != EINTR)
                return -1;
        return 0;
    }
    int rc =
        uvmlease_acquire(k->c, k->uvm, UVMLEASE_CONFIDENTIAL, LABEL, timeout_ms, NULL, NULL, &k->l);
    if (rc)
        s_fail("acquire: %s", uvmlease_strerror(rc));
    return rc;
}

static int s_lk_release(lk *k)
{
    if (k->flock)
        return flock(k->fd, LOCK_UN);
    int rc = uvmlease_release(k->l);
    k->l = NULL;
    if (rc)
        s_fail("release: %s", uvmlease_strerror(rc));
    return rc;
}

static void s_lk_close(lk *k)
{
    if (k->flock)
        close(k->fd);
    else
        uvmlease_close(k->c);
}

/* ---- section 1 + 2: floor, cycle, flock, interleaved -------------------------- */

typedef struct lat_shm {
    double *echo, *cycle, *async, *flk, *raw, *ping;
    int n_echo, n_cycle, n_async, n_flock, n_raw, n_ping;
} lat_shm;

/* One reply to request q on a raw DEALER (blocking receive), its lease in
 * *lease; 0, or -1 (a failure or an error reply). */
static int s_raw_call(void *d, ul_request *q, ul_buf *buf, uint64_t *lease)
{
    ul_reply r;
    memset(&r, 0, sizeof r);
    if (s_send_req(d, q, buf) || s_recv_rep(d, &r))
        return -1;
    int rc = r.err == 0 && r.rid == q->rid ? 0 : -1;
    if (lease)
        *lease = r.lease;
    ul_reply_free(&r);
    return rc;
}

/* What the broker costs without libuvmlease: a ping round trip, and a
 * cycle (acquire granted at once, release) from a raw DEALER that blocks
 * in zmq_msg_recv as the echo client does. */
static void s_raw_batch(void *d, const char *uvm, uint64_t *rid, lat_shm *s, int n, bool keep)
{
    ul_buf buf = {0};
    ul_request q;
    for (int i = 0; i < n; i++) {
        memset(&q, 0, sizeof q);
        q.version = UL_PROTO_VERSION;
        q.op = UL_OP_PING;
        q.rid = ++*rid;
        uint64_t t0 = s_now();
        if (s_raw_call(d, &q, &buf, NULL)) {
            s_fail("raw ping failed");
            _exit(1);
        }
        if (keep)
            s->ping[s->n_ping++] = (double)(s_now() - t0);
    }
    for (int i = 0; i < n; i++) {
        uint64_t t0 = s_now(), lease = 0;
        s_req_acquire(&q, ++*rid, uvm);
        int rc = s_raw_call(d, &q, &buf, &lease);
        if (rc == 0) {
            memset(&q, 0, sizeof q);
            q.version = UL_PROTO_VERSION;
            q.op = UL_OP_RELEASE;
            q.rid = ++*rid;
            q.lease = lease;
            rc = s_raw_call(d, &q, &buf, NULL);
        }
        if (rc) {
            s_fail("raw cycle failed");
            _exit(1);
        }
        if (keep)
            s->raw[s->n_raw++] = (double)(s_now() - t0);
    }
    ul_buf_free(&buf);
}

/* One process alternating batches: echo round trips (raw DEALER), cycles
 * (libuvmlease), async cycles if the library has them, flock pairs. */
static void s_lat_main(const char *echo_ep, const char *broker_ep, const char *lockfile, lat_shm *s)
{
    void *ctx = zmq_ctx_new();
    void *d = s_dealer(ctx, echo_ep, NULL);
    void *rawd = s_dealer(ctx, broker_ep, NULL);
    uvmlease *c = NULL;
    int rc = uvmlease_connect(broker_ep, &c);
    int fd = open(lockfile, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (!d || !rawd || rc || fd < 0) {
        s_fail("lat: setup failed (%s)", uvmlease_strerror(rc));
        _exit(1);
    }
    char uvm[80], rawuvm[80];
    s_uvm(uvm, sizeof uvm, 0x1a7e0000, 1);
    s_uvm(rawuvm, sizeof rawuvm, 0x1a7e0000, 2);
    uint64_t rawrid = 0x1a7e000000000000ull;
    char *msg = calloc(1, g_msg_len), buf[4096];
    memset(msg, 'x', g_msg_len);
    int per = g.n.per_round, fper = g.n.flock_per_round;
    for (int r = -1; r < g.n.rounds; r++) { /* round -1: warm-up */
        bool keep = r >= 0;
        for (int i = 0; i < (keep ? per : 200); i++) {
            uint64_t t0 = s_now();
            if (zmq_send(d, msg, g_msg_len, 0) < 0 || zmq_recv(d, buf, sizeof buf, 0) < 0) {
                s_fail("echo: %s", zmq_strerror(zmq_errno()));
                _exit(1);
            }
            if (keep)
                s->echo[s->n_echo++] = (double)(s_now() - t0);
        }
        for (int i = 0; i < (keep ? per : 200); i++) {
            uint64_t t0 = s_now();
            uvmlease_lease *l = NULL;
            rc = uvmlease_acquire(c, uvm, UVMLEASE_CONFIDENTIAL, LABEL, 30000, NULL, NULL, &l);
            if (rc == 0)
                rc = uvmlease_release(l);
            if (rc) {
                s_fail("cycle: %s", uvmlease_strerror(rc));
                _exit(1);
            }
            if (keep)
                s->cycle[s->n_cycle++] = (double)(s_now() - t0);
        }
#if BENCH_ASYNC
        for (int i = 0; i < (keep ? per : 200); i++) {
            uint64_t t0 = s_now();
            uvmlease_lease *l = NULL;
            rc = uvmlease_acquire(c, uvm, UVMLEASE_CONFIDENTIAL, LABEL, 30000, NULL, NULL, &l);
            if (rc == 0)
                rc = uvmlease_release_nowait(l);
            if (rc) {
                s_fail("async cycle: %s", uvmlease_strerror(rc));
                _exit(1);
            }
            if (keep)
                s->async[s->n_async++] = (double)(s_now() - t0);
        }
#endif
        s_raw_batch(rawd, rawuvm, &rawrid, s, keep ? per : 200, keep);
        for (int i = 0; i < (keep ? fper : 200); i++) {
            uint64_t t0 = s_now();
            if (flock(fd, LOCK_EX) < 0 || flock(fd, LOCK_UN) < 0) {
                s_fail("flock: %s", strerror(errno));
                _exit(1);
            }
            if (keep)
                s->flk[s->n_flock++] = (double)(s_now() - t0);
        }
    }
    uvmlease_close(c);
    zmq_close(d);
    zmq_close(rawd);
    zmq_ctx_term(ctx);
    free(msg);
    _exit(0);
}

/* A measuring process gives up: say where. */
static void s_quit(int line) __attribute__((noreturn));
static void s_quit(int line)
{
    s_fail("gave up at uvmlease_bench.c:%d (%s)", line, strerror(errno));
    _exit(1);
}

/* ---- relay and handoffs ---------------------------------------------------------- */

/* Relay: B tells A (pipe) it is about to block in receive; A waits until
 * B has been blocked SETTLE_NS, stamps the message and sends it through
 * the relay. B takes the difference. The first 10 are warm-up. */
static void s_relay_pair(const char *ep, double *out, int n)
{
    int ab[2]; /* B -> A: ready */
    s_pipe(ab);
    pid_t b = s_fork(ROLE_CLIENT);
    if (b == 0) {
        close(ab[0]);
        void *ctx = zmq_ctx_new();
        void *d = s_dealer(ctx, ep, "B");
        /* Introduce B to the relay so that A's first message finds it. */
        if (!d || zmq_send(d, "hi", 2, 0) < 0)
            _exit(1);
        char buf[4096];
        for (int k = -10; k < n; k++) {
            if (!s_put(ab[1], "r", 1))
                _exit(1);
            int len = zmq_recv(d, buf, sizeof buf, 0);
            uint64_t t1 = s_now(), t0;
            if (len < (int)sizeof t0) {
                s_fail("relay: B received %d bytes", len);
                _exit(1);
            }
            memcpy(&t0, buf, sizeof t0);
            if (k >= 0)
                out[k] = (double)(t1 - t0);
        }
        zmq_close(d);
        zmq_ctx_term(ctx);
        _exit(0);
    }
    pid_t a = s_fork(ROLE_CLIENT);
    if (a == 0) {
        close(ab[1]);
        void *ctx = zmq_ctx_new();
        void *d = s_dealer(ctx, ep, "A");
        char *msg = calloc(1, g_msg_len + 8);
        char c;
        for (int k = -10; k < n; k++) {
            if (!s_get(ab[0], &c, 1, 30000))
                _exit(1);
            s_sleep_ns(SETTLE_NS);
            uint64_t t0 = s_now();
            memcpy(msg, &t0, sizeof t0);
            if (zmq_send(d, msg, g_msg_len, 0) < 0)
                _exit(1);
        }
        /* B's "hi" was relayed to A; it stays unread. */
        zmq_close(d);
        zmq_ctx_term(ctx);
        free(msg);
        _exit(0);
    }
    close(ab[0]);
    close(ab[1]);
    s_reap_ok(a, "relay A");
    s_reap_ok(b, "relay B");
}

/* Handoff: two processes take turns. The waiter says "ready" (pipe) and
 * blocks in acquire; the holder waits SETTLE_NS, stamps t0, releases and
 * sends t0; the waiter stamps t1 when its acquire returns, and says it
 * holds. */
static void s_handoff_proc(lk k, bool first, int in, int out, double *v, int n)
{
    if (s_lk_open(&k))
        s_quit(__LINE__);
    if (first && s_lk_acquire(&k, 30000))
        s_quit(__LINE__);
    if (first && !s_put(out, "h", 1)) /* tell the other one: held */
        s_quit(__LINE__);
    if (!first) {
        char c;
        if (!s_get(in, &c, 1, 30000))
            s_quit(__LINE__);
    }
    for (int i = -5; i < n; i++) {
        int turn = i + 5; /* the first process holds at even turns */
        bool holder = (turn % 2 == 0) == first;
        if (holder) {
            char c;
            uint64_t t0;
            if (!s_get(in, &c, 1, 30000))
                s_quit(__LINE__);
            s_sleep_ns(SETTLE_NS);
            t0 = s_now();
            if (s_lk_release(&k))
                s_quit(__LINE__);
            if (!s_put(out, &t0, sizeof t0))
                s_quit(__LINE__);
            /* Wait until the waiter has the lock: flock(2) lets a releaser
             * that asks again at once take it back before the woken
             * waiter runs. */
            if (!s_get(in, &c, 1, 30000))
                s_quit(__LINE__);
        } else {
            uint64_t t0;
            if (!s_put(out, "r", 1) || s_lk_acquire(&k, 30000))
                s_quit(__LINE__);
            uint64_t t1 = s_now();
            if (!s_get(in, &t0, sizeof t0, 30000) || !s_put(out, "a", 1))
                s_quit(__LINE__);
            if (i >= 0)
                v[i] = (double)(t1 - t0);
        }
    }
    /* Whoever holds after the last turn releases. */
    bool holds = ((n + 4) % 2 == 0) != first;
    if (holds && s_lk_release(&k))
        s_quit(__LINE__);
    s_lk_close(&k);
    _exit(0);
}

static void s_handoff_pair(lk proto, double *v, int n)
{
    int p01[2], p10[2];
    s_pipe(p01);
    s_pipe(p10);
    pid_t a = s_fork(ROLE_CLIENT);
    if (a == 0) {
        close(p01[0]);
        close(p10[1]);
        s_handoff_proc(proto, true, p10[0], p01[1], v, n);
    }
    pid_t b = s_fork(ROLE_CLIENT);
    if (b == 0) {
        close(p10[0]);
        close(p01[1]);
        s_handoff_proc(proto, false, p01[0], p10[1], v, n);
    }
    close(p01[0]);
    close(p01[1]);
    close(p10[0]);
    close(p10[1]);
    s_reap_ok(a, "handoff");
    s_reap_ok(b, "handoff");
}

/* Crash handoff: a holder is forked and takes the lock; the waiter (a
 * process kept for all samples) blocks in acquire; after SETTLE_NS the
 * coordinator stamps t0 and sends SIGKILL, polls the holder's pidfd
 * (kill-to-exit), and the waiter stamps t1 when its acquire returns. */
static void s_crash_run(lk proto, double *crash, double *k2e, int n)
{
    int go[2], back[2];
    s_pipe(go);
    s_pipe(back);
    pid_t w = s_fork(ROLE_CLIENT);
    if (w == 0) {
        close(go[1]);
        close(back[0]);
        lk k = proto;
        if (s_lk_open(&k))
            _exit(1);
        char c;
        while (s_get(go[0], &c, 1, -1)) {
            if (s_lk_acquire(&k, 30000))
                _exit(1);
            uint64_t t1 = s_now();
            if (s_lk_release(&k) || !s_put(back[1], &t1, sizeof t1))
                _exit(1);
        }
        s_lk_close(&k);
        _exit(0);
    }
    close(go[0]);
    close(back[1]);
    int got = 0;
    for (int i = -2; i < n; i++) {
        int held[2];
        s_pipe(held);
        pid_t h = s_fork(ROLE_CLIENT);
        if (h == 0) {
            close(held[0]);
            lk k = proto;
            if (s_lk_open(&k) || s_lk_acquire(&k, 0) || !s_put(held[1], "h", 1))
                _exit(1);
            for (;;)
                pause();
        }
        close(held[1]);
        char c;
        if (!s_get(held[0], &c, 1, 30000)) {
            s_fail("crash: the holder did not take the lock");
            s_kill(h);
            close(held[0]);
            break;
        }
        close(held[0]);
        int pfd = (int)syscall(SYS_pidfd_open, h, 0);
        if (pfd < 0)
            s_die("pidfd_open");
        if (!s_put(go[1], "g", 1))
            s_fail("crash: the waiter is gone");
        s_sleep_ns(SETTLE_NS);
        uint64_t t0 = s_now();
        kill(h, SIGKILL);
        struct pollfd pf = {.fd = pfd, .events = POLLIN};
        while (poll(&pf, 1, 10000) < 0 && errno == EINTR)
            ;
        uint64_t te = s_now();
        close(pfd);
        s_reap(h);
        uint64_t t1;
        if (!s_get(back[0], &t1, sizeof t1, 30000)) {
            s_fail("crash: the waiter's acquire did not return");
            break;
        }
        if (i >= 0) {
            crash[i] = (double)(t1 - t0);
            k2e[i] = (double)(te - t0);
            got++;
        }
    }
    close(go[1]);
    close(back[0]);
    s_reap_ok(w, "crash waiter");
    if (got < n)
        s_fail("crash: %d of %d samples", got, n);
}

/* ---- section 3: throughput -------------------------------------------------------- */

enum { TP_PHASES = 4 };

typedef struct tp_shm {
    uint64_t start[TP_PHASES], end[TP_PHASES];
    long count[NPROC_MAX][TP_PHASES];
} tp_shm;

/* Phases alternate: echo, cycle, echo, cycle. */
static void s_tp_proc(int idx, const char *echo_ep, const char *broker_ep, int ready, int go,
                      tp_shm *s)
{
    void *ctx = zmq_ctx_new();
    void *d = s_dealer(ctx, echo_ep, NULL);
    uvmlease *c = NULL;
    int rc = uvmlease_connect(broker_ep, &c);
    if (!d || rc) {
        s_fail("throughput: setup: %s", uvmlease_strerror(rc));
        _exit(1);
    }
    char uvm[80], buf[4096];
    s_uvm(uvm, sizeof uvm, 0x7f000000, (unsigned)idx);
    char *msg = calloc(1, g_msg_len);
    memset(msg, 'x', g_msg_len);
    /* Warm the connections up before saying ready. */
    zmq_send(d, msg, g_msg_len, 0);
    zmq_recv(d, buf, sizeof buf, 0);
    char c1;
    if (!s_put(ready, "r", 1))
        _exit(1);
    s_get(go, &c1, 1, -1); /* EOF: go */
    for (int ph = 0; ph < TP_PHASES; ph++) {
        s_sleep_until(s->start[ph]);
        long n = 0;
        while (s_now() < s->end[ph]) {
            if (ph % 2 == 0) {
                if (zmq_send(d, msg, g_msg_len, 0) < 0 || zmq_recv(d, buf, sizeof buf, 0) < 0) {
                    s_fail("throughput: echo failed");
                    _exit(1);
                }
            } else {
                uvmlease_lease *l = NULL;
                rc = uvmlease_acquire(c, uvm, UVMLEASE_CONFIDENTIAL, LABEL, 30000, NULL, NULL, &l);
                if (rc == 0)
                    rc = uvmlease_release(l);
                if (rc) {
                    s_fail("throughput: cycle: %s", uvmlease_strerror(rc));
                    _exit(1);
                }
            }
            n++;
        }
        s->count[idx][ph] = n;
    }
    uvmlease_close(c);
    zmq_close(d);
    zmq_ctx_term(ctx);
    free(msg);
    _exit(0);
}

typedef struct tp_fig {
    double echo_rt_s, cycles_s, ratio;
} tp_fig;

static tp_fig s_throughput(int nproc, const char *echo_ep, const char *broker_ep)
{
    tp_shm *s = s_shared(sizeof *s);
    int ready[2], go[2];
    s_pipe(ready);
    s_pipe(go);
    pid_t pid[NPROC_MAX];
    for (int i = 0; i < nproc; i++) {
        pid[i] = s_fork(ROLE_CLIENT);
        if (pid[i] == 0) {
            close(ready[0]);
            close(go[1]);
            s_tp_proc(i, echo_ep, broker_ep, ready[1], go[0], s);
        }
    }
    close(ready[1]);
    close(go[0]);
    int ok = 0;
    char c;
    for (int i = 0; i < nproc; i++)
        if (s_get(ready[0], &c, 1, 60000))
            ok++;
    uint64_t phase = (uint64_t)(g.n.tp_phase_s * 1e9), gap = 50000000ull;
    uint64_t t = s_now() + 100000000ull;
    for (int ph = 0; ph < TP_PHASES; ph++) {
        s->start[ph] = t;
        s->end[ph] = t + phase;
        t += phase + gap;
    }
    close(go[1]); /* go */
    for (int i = 0; i < nproc; i++)
        s_reap_ok(pid[i], "throughput client");
    close(ready[0]);
    tp_fig f = {0};
    if (ok < nproc) {
        s_fail("throughput: %d of %d clients ready", ok, nproc);
    }
    long echo = 0, cyc = 0;
    for (int i = 0; i < nproc; i++)
        for (int ph = 0; ph < TP_PHASES; ph++)
            if (ph % 2)
                cyc += s->count[i][ph];
            else
                echo += s->count[i][ph];
    double secs = g.n.tp_phase_s * TP_PHASES / 2;
    f.echo_rt_s = (double)echo / secs;
    f.cycles_s = (double)cyc / secs;
    /* Requests the broker answers (two a cycle) against round trips the
     * echo server answers. */
    f.ratio = f.echo_rt_s > 0 ? 2 * f.cycles_s / f.echo_rt_s : NAN;
    s_unshare(s, sizeof *s);
    return f;
}

/* ---- section 4: contention ----------------------------------------------------------- */

enum { CONT_MAX = 8192 };

typedef struct cont_shm {
    uint64_t end;
    int n[NPROC_MAX];
    uint64_t grant[NPROC_MAX][CONT_MAX]; /* when the acquire returned */
    uint64_t wait[NPROC_MAX][CONT_MAX];  /* how long it waited */
    uint64_t hold[NPROC_MAX][CONT_MAX];  /* how long it held */
} cont_shm;

static void s_cont_proc(int idx, const char *ep, const char *uvm, int ready, int go, cont_shm *s)
{
    uvmlease *c = NULL;
    int rc = uvmlease_connect(ep, &c);
    if (rc) {
        s_fail("contention: connect: %s", uvmlease_strerror(rc));
        _exit(1);
    }
    char c1;
    if (!s_put(ready, "r", 1))
        _exit(1);
    s_get(go, &c1, 1, -1);
    int n = 0;
    while (n < CONT_MAX) {
        uint64_t t0 = s_now();
        uvmlease_lease *l = NULL;
        rc = uvmlease_acquire(c, uvm, UVMLEASE_CONFIDENTIAL, LABEL, 60000, NULL, NULL, &l);
        uint64_t tg = s_now();
        if (rc) {
            s_fail("contention: acquire: %s", uvmlease_strerror(rc));
            _exit(1);
        }
        s_sleep_ns(1000000);
        uint64_t tr = s_now();
        rc = uvmlease_release(l);
        if (rc) {
            s_fail("contention: release: %s", uvmlease_strerror(rc));
            _exit(1);
        }
        s->grant[idx][n] = tg;
        s->wait[idx][n] = tg - t0;
        s->hold[idx][n] = tr - tg;
        s->n[idx] = ++n;
        if (s_now() >= s->end)
            break;
    }
    uvmlease_close(c);
    _exit(0);
}

typedef struct ev {
    uint64_t t;
    int p, i;
} ev;

static int s_cmp_ev(const void *a, const void *b)
{
    const ev *x = a, *y = b;
    return x->t < y->t ? -1 : x->t > y->t;
}

static void s_contention(const char *ep, double handoff_p50_us)
{
    enum { NP = 32 };
    cont_shm *s = s_shared(sizeof *s);
    char uvm[80];
    s_uvm(uvm, sizeof uvm, 0xc0e70000, 1);
    int ready[2], go[2];
    s_pipe(ready);
    s_pipe(go);
    pid_t pid[NP];
    for (int i = 0; i < NP; i++) {
        pid[i] = s_fork(ROLE_CLIENT);
        if (pid[i] == 0) {
            close(ready[0]);
            close(go[1]);
            s_cont_proc(i, ep, uvm, ready[1], go[0], s);
        }
    }
    close(ready[1]);
    close(go[0]);
    char c;
    for (int i = 0; i < NP; i++)
        if (!s_get(ready[0], &c, 1, 60000))
            s_fail("contention: a client was not ready");
    s->end = s_now() + (uint64_t)(g.n.cont_s * 1e9);
    close(go[1]);
    for (int i = 0; i < NP; i++)
        s_reap_ok(pid[i], "contention client");
    close(ready[0]);

    /* All grants in time order. The measured window starts once every
     * process has been granted once (the start, when 32 processes queue up
     * in whatever order they wake, is not a steady state). */
    int total = 0;
    for (int p = 0; p < NP; p++)
        total += s->n[p];
    ev *e = calloc((size_t)total + 1, sizeof *e);
    int k = 0;
    for (int p = 0; p < NP; p++)
        for (int i = 0; i < s->n[p]; i++)
            e[k++] = (ev){s->grant[p][i], p, i};
    qsort(e, (size_t)total, sizeof *e, s_cmp_ev);
    bool seen[NP] = {false};
    int distinct = 0, start = total;
    for (int j = 0; j < total; j++)
        if (!seen[e[j].p]) {
            seen[e[j].p] = true;
            if (++distinct == NP) {
                start = j;
                break;
            }
        }
    int cnt[NP] = {0}, max_lead = 0, win = 0;
    double *waits = calloc((size_t)total + 1, sizeof *waits);
    double hold_sum = 0;
    for (int j = start + 1; j < total; j++) {
        cnt[e[j].p]++;
        int lo = cnt[0], hi = cnt[0];
        for (int p = 1; p < NP; p++) {
            lo = cnt[p] < lo ? cnt[p] : lo;
            hi = cnt[p] > hi ? cnt[p] : hi;
        }
        max_lead = hi - lo > max_lead ? hi - lo : max_lead;
        waits[win] = (double)s->wait[e[j].p][e[j].i];
        hold_sum += (double)s->hold[e[j].p][e[j].i];
        win++;
    }
    int lo = win ? cnt[0] : 0, hi = lo;
    for (int p = 1; p < NP; p++) {
        lo = cnt[p] < lo ? cnt[p] : lo;
        hi = cnt[p] > hi ? cnt[p] : hi;
    }
    if (win < 2 * NP) {
        s_fail("contention: only %d grants in the window", win);
    }
    double span_s = win ? (double)(e[total - 1].t - e[start].t) / 1e9 : NAN;
    double gps = win / span_s;
    double hold_us = win ? hold_sum / win / 1000.0 : NAN;
    double expect = 1e6 / (hold_us + handoff_p50_us);
    stats w = s_stats(waits, win);
    s_heading("4. contention: 32 processes, one confidential UVM, each holds 1 ms");
    s_fig("contention_grants_per_s", gps, "/s",
          "%d grants in %.2f s (window: after every process's first grant)", win, span_s);
    s_fig("contention_expected_grants_per_s", expect, "/s",
          "1 / (mean hold %.1f us + handoff p50 %.1f us)", hold_us, handoff_p50_us);
    s_fig("contention_hold_mean_us", hold_us, "us", "1 ms asked for (nanosleep)");
    s_fig("contention_wait_mean_us", w.mean, "us", NULL);
    s_fig("contention_wait_p99_us", w.p99, "us", NULL);
    s_fig("contention_wait_max_us", w.max, "us", NULL);
    s_fig("contention_max_over_mean_wait", w.max / w.mean, "x", NULL);
    s_fig("contention_grants_min", lo, "", "grants per process, fewest");
    s_fig("contention_grants_max", hi, "", "grants per process, most");
    s_fig("contention_max_lead", max_lead, "",
          "strict FIFO: at no point one process more than one grant ahead of another");
    json_object_set_new(g_json, "contention_fifo_strict", json_boolean(max_lead <= 1));
    json_t *per = json_array();
    for (int p = 0; p < NP; p++)
        json_array_append_new(per, json_integer(cnt[p]));
    json_object_set_new(g_json, "contention_grants_per_process", per);
    free(e);
    free(waits);
    s_unshare(s, sizeof *s);
}

/* ---- holders for scale and aged --------------------------------------------------- */

/* A process holding `count` leases on UVMs tag/first.. through one raw
 * DEALER (requests in windows of 100), then pausing until killed. */
static pid_t s_holder_start(const char *ep, unsigned tag, int first, int count)
{
    int rd[2];
    s_pipe(rd);
    pid_t p = s_fork(ROLE_CLIENT);
    if (p == 0) {
        close(rd[0]);
        void *ctx = zmq_ctx_new();
        void *d = s_dealer(ctx, ep, NULL);
        ul_buf out = {0};
        uint64_t rid = 1;
        char res = d ? 'R' : 'F', uvm[80];
        for (int done = 0; done < count && res == 'R';) {
            int w = count - done < 100 ? count - done : 100;
            for (int i = 0; i < w; i++) {
                ul_request q;
                s_uvm(uvm, sizeof uvm, tag, (unsigned)(first + done + i));
                s_req_acquire(&q, rid++, uvm);
                if (s_send_req(d, &q, &out))
                    res = 'F';
            }
            for (int i = 0; i < w && res == 'R'; i++) {
                ul_reply r;
                memset(&r, 0, sizeof r);
                if (s_recv_rep(d, &r) || r.err || r.queued || !r.lease) {
                    s_fail("holder: acquire refused (%s)",
                           r.err ? uvmlease_status_name((int)r.err) : "bad reply");
                    res = 'F';
                }
                ul_reply_free(&r);
            }
            done += w;
        }
        if (!s_put(rd[1], &res, 1) || res != 'R')
            _exit(1);
        for (;;)
            pause();
    }
    close(rd[1]);
    char c = 0;
    if (!s_get(rd[0], &c, 1, 120000) || c != 'R')
        s_fail("holder %d: could not take its %d leases", (int)p, count);
    close(rd[0]);
    return p;
}

/* Cycles through libuvmlease in a new process: n samples after warm-up. */
static void s_cycles(const char *ep, unsigned tag, double *v, int n)
{
    pid_t p = s_fork(ROLE_CLIENT);
    if (p == 0) {
        uvmlease *c = NULL;
        int rc = uvmlease_connect(ep, &c);
        char uvm[80];
        s_uvm(uvm, sizeof uvm, tag, 0xffffff);
        for (int i = -50; i < n && rc == 0; i++) {
            uint64_t t0 = s_now();
            uvmlease_lease *l = NULL;
            rc = uvmlease_acquire(c, uvm, UVMLEASE_CONFIDENTIAL, LABEL, 30000, NULL, NULL, &l);
            if (rc == 0)
                rc = uvmlease_release(l);
            if (i >= 0)
                v[i] = (double)(s_now() - t0);
        }
        if (rc)
            s_fail("cycles: %s", uvmlease_strerror(rc));
        uvmlease_close(c);
        _exit(rc ? 1 : 0);
    }
    s_reap_ok(p, "cycle client");
}

/* ---- section 5: scale ---------------------------------------------------------------- */

static void s_scale(void)
{
    bdaemon d;
    s_daemon_start(&d, "scale");
    pid_t holders[64];
    int nh = 0, held = 0;
    double cyc[3], lst[3], lsj[3];
    long rss[3], anon[3];
    int n = g.n.scale_cycles;
    double *v = s_shared(sizeof(double) * (size_t)n);
    for (int lv = 0; lv < 3; lv++) {
        int want = g.n.scale[lv];
        while (held < want && nh < 64) {
            int k = want - held < SCALE_PER_PROC ? want - held : SCALE_PER_PROC;
            holders[nh++] = s_holder_start(d.ep, 0x5ca1e000, held, k);
            held += k;
        }
        s_sleep_ns(200000000ull); /* let the broker settle */
        rss[lv] = s_status_kb(d.pid, "VmRSS");
        anon[lv] = s_status_kb(d.pid, "RssAnon");
        s_cycles(d.ep, 0x5ca1effu, v, n);
        cyc[lv] = s_stats(v, n).p50;
        double t[16], tj[16];
        int reps = g.n.scale_lists < 16 ? g.n.scale_lists : 16;
        for (int i = 0; i < reps; i++) {
            t[i] = s_ctl_list(d.ep, false);
            tj[i] = s_ctl_list(d.ep, true);
        }
        lst[lv] = s_median_of(t, reps);
        lsj[lv] = s_median_of(tj, reps);
        s_progress("scale: %d held: cycle p50 %.1f us, list %.3f s, list --json %.3f s, RSS %ld kB",
                   want, cyc[lv], lst[lv], lsj[lv], rss[lv]);
    }
    s_daemon_stop(&d);
    for (int i = 0; i < nh; i++)
        s_kill(holders[i]);
    s_unshare(v, sizeof(double) * (size_t)n);

    char h[160];
    snprintf(h, sizeof h, "5. scale: %d, %d and %d leases held by %d processes (at most %d each)",
             g.n.scale[0], g.n.scale[1], g.n.scale[2], nh, SCALE_PER_PROC);
    s_heading(h);
    const char *suffix[3] = {"10", "1k", "16k"};
    json_t *levels = json_array();
    for (int lv = 0; lv < 3; lv++) {
        json_t *o = json_object();
        json_object_set_new(o, "held", json_integer(g.n.scale[lv]));
        json_object_set_new(o, "cycle_p50_us", json_real(cyc[lv]));
        json_object_set_new(o, "list_s", isfinite(lst[lv]) ? json_real(lst[lv]) : json_null());
        json_object_set_new(o, "list_json_s", isfinite(lsj[lv]) ? json_real(lsj[lv]) : json_null());
        if (!k_sanitized) {
            json_object_set_new(o, "rss_kb", json_integer(rss[lv]));
            json_object_set_new(o, "rss_anon_kb", json_integer(anon[lv]));
        }
        json_array_append_new(levels, o);
    }
    json_object_set_new(g_json, "scale", levels);
    for (int lv = 1; lv < 3; lv++) {
        char key[64];
        snprintf(key, sizeof key, "bytes_per_lease_%s", suffix[lv]);
        if (k_sanitized) {
            s_fig(key, NAN, "B", "not measured under ASan (shadow memory)");
            continue;
        }
        double span = g.n.scale[lv] - g.n.scale[0];
        s_fig(key, (double)(rss[lv] - rss[0]) * 1024.0 / span, "B",
              "broker VmRSS %ld -> %ld kB over %d -> %d held; RssAnon alone %.0f B/lease", rss[0],
              rss[lv], g.n.scale[0], g.n.scale[lv], (double)(anon[lv] - anon[0]) * 1024.0 / span);
    }
    for (int lv = 0; lv < 3; lv++) {
        char key[64];
        snprintf(key, sizeof key, "cycle_p50_us_%s", suffix[lv]);
        s_fig(key, cyc[lv], "us", "%d leases held", g.n.scale[lv]);
    }
    s_fig("cycle_ratio_1k", cyc[1] / cyc[0], "x", "against %d held", g.n.scale[0]);
    s_fig("cycle_ratio_16k", cyc[2] / cyc[0], "x", "against %d held", g.n.scale[0]);
    for (int lv = 0; lv < 3; lv++) {
        char key[64];
        snprintf(key, sizeof key, "list_%s_s", suffix[lv]);
        s_fig(key, lst[lv], "s", "uvmleasectl list, %d leases, median of %d", g.n.scale[lv],
              g.n.scale_lists);
        snprintf(key, sizeof key, "list_json_%s_s", suffix[lv]);
        s_fig(key, lsj[lv], "s", "uvmleasectl --json list");
    }
}

/* ---- section 6: aged ------------------------------------------------------------------ */

/* Raw acquire + release cycles, half on one UVM, half on a new UVM each
 * time (UVMs come and go on a host). */
static void s_age(const char *ep, int cycles)
{
    pid_t p = s_fork(ROLE_CLIENT);
    if (p == 0) {
        void *ctx = zmq_ctx_new();
        void *d = s_dealer(ctx, ep, NULL);
        ul_buf out = {0};
        uint64_t rid = 1;
        char uvm[80];
        int bad = 0;
        for (int i = 0; i < cycles && !bad; i++) {
            s_uvm(uvm, sizeof uvm, i % 2 ? 0xa9ed0001u : 0xa9ed0002u, i % 2 ? 0 : (unsigned)i);
            ul_request q;
            ul_reply r;
            memset(&r, 0, sizeof r);
            s_req_acquire(&q, rid++, uvm);
            if (s_send_req(d, &q, &out) || s_recv_rep(d, &r) || r.err || r.queued) {
                bad = 1;
                break;
            }
            uint64_t lease = r.lease;
            ul_reply_free(&r);
            memset(&q, 0, sizeof q);
            q.version = UL_PROTO_VERSION;
            q.op = UL_OP_RELEASE;
            q.rid = rid++;
            q.lease = lease;
            if (s_send_req(d, &q, &out) || s_recv_rep(d, &r) || r.err)
                bad = 1;
            ul_reply_free(&r);
        }
        if (bad)
            s_fail("ageing: a cycle failed");
        ul_buf_free(&out);
        zmq_close(d);
        zmq_ctx_term(ctx);
        _exit(bad);
    }
    s_reap_ok(p, "ageing client");
}

static void s_aged(double floor_p50_us)
{
    bdaemon fresh, aged;
    s_daemon_start(&fresh, "fresh");
    s_daemon_start(&aged, "aged");
    pid_t hf = s_holder_start(fresh.ep, 0xa9ed1000, 0, g.n.aged_leases);
    pid_t ha = s_holder_start(aged.ep, 0xa9ed1000, 0, g.n.aged_leases);
    uint64_t t0 = s_now();
    s_age(aged.ep, g.n.aged_cycles);
    double age_s = (double)(s_now() - t0) / 1e9;
    s_progress("aged: %d cycles served in %.1f s", g.n.aged_cycles, age_s);
    /* Interleaved: both brokers measured alike, in rounds. */
    int rounds = g.quick ? 2 : 10, per = g.n.aged_samples / rounds;
    int nl = g.n.aged_lists / rounds > 0 ? g.n.aged_lists / rounds : 1;
    double *vf = s_shared(sizeof(double) * (size_t)(per * rounds));
    double *va = s_shared(sizeof(double) * (size_t)(per * rounds));
    double *lf = calloc((size_t)(nl * rounds), sizeof *lf);
    double *la = calloc((size_t)(nl * rounds), sizeof *la);
    for (int r = 0; r < rounds; r++) {
        s_cycles(fresh.ep, 0xa9ed2000, vf + r * per, per);
        s_cycles(aged.ep, 0xa9ed2000, va + r * per, per);
        for (int i = 0; i < nl; i++) {
            lf[r * nl + i] = s_ctl_list(fresh.ep, true);
            la[r * nl + i] = s_ctl_list(aged.ep, true);
        }
    }
    stats sf = s_stats(vf, per * rounds), sa = s_stats(va, per * rounds);
    double lfm = s_median_of(lf, nl * rounds), lam = s_median_of(la, nl * rounds);
    long rss_f = s_status_kb(fresh.pid, "VmRSS"), rss_a = s_status_kb(aged.pid, "VmRSS");
    s_daemon_stop(&fresh);
    s_daemon_stop(&aged);
    s_kill(hf);
    s_kill(ha);
    char h[200];
    snprintf(h, sizeof h,
             "6. aged: %d cycles served (%.1f s), %d leases held on each broker; measured "
             "interleaved against a fresh broker",
             g.n.aged_cycles, age_s, g.n.aged_leases);
    s_heading(h);
    s_fig("fresh_cycle_p50_us", sf.p50, "us", "p99 %.1f us; %.2fx floor", sf.p99,
          sf.p50 / floor_p50_us);
    s_fig("aged_cycle_p50_us", sa.p50, "us", "p99 %.1f us; %.2fx floor", sa.p99,
          sa.p50 / floor_p50_us);
    s_fig("aged_cycle_ratio", sa.p50 / sf.p50, "x", "aged / fresh");
    s_fig("fresh_list_json_s", lfm, "s", "uvmleasectl --json list, %d leases", g.n.aged_leases);
    s_fig("aged_list_json_s", lam, "s", NULL);
    s_fig("aged_list_ratio", lam / lfm, "x", "aged / fresh");
    if (!k_sanitized)
        s_fig("aged_rss_kb", (double)rss_a, "kB", "fresh broker: %ld kB", rss_f);
    s_unshare(vf, sizeof(double) * (size_t)(per * rounds));
    s_unshare(va, sizeof(double) * (size_t)(per * rounds));
    free(lf);
    free(la);
}

/* ---- main ------------------------------------------------------------------------------ */

static void s_usage(FILE *f)
{
    fprintf(f, "usage: uvmlease-bench [--quick] [--json FILE] [--server-cpus LIST] "
               "[--client-cpus LIST]\n"
               "                      [--uvmleased PATH] [--uvmleasectl PATH] [--keep]\n"
               "  --quick            small counts in every section (the test suite's smoke run)\n"
               "  --json FILE        write every figure to FILE\n"
               "  --server-cpus LIST pin uvmleased, the echo server and the relay (e.g. 0)\n"
               "  --client-cpus LIST pin every client process (e.g. 1)\n"
               "  --keep             keep the run directory (daemon logs)\n"
               "Exit status: 0, or 1 when an operation failed (never because a target was "
               "missed).\n");
}

int main(int argc, char **argv)
{
    g.uvmleased = UL_BENCH_UVMLEASED;
    g.uvmleasectl = UL_BENCH_UVMLEASECTL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0)
            g.quick = true;
        else if (strcmp(a, "--keep") == 0)
            g.keep = true;
        else if (strcmp(a, "--help") == 0) {
            s_usage(stdout);
            return 0;
        } else if (v && strcmp(a, "--json") == 0)
            g.json = argv[++i];
        else if (v && strcmp(a, "--uvmleased") == 0)
            g.uvmleased = argv[++i];
        else if (v && strcmp(a, "--uvmleasectl") == 0)
            g.uvmleasectl = argv[++i];
        else if (v && strcmp(a, "--server-cpus") == 0 && s_parse_cpus(v, &g.server_set) == 0)
            g.server_cpus = argv[++i];
        else if (v && strcmp(a, "--client-cpus") == 0 && s_parse_cpus(v, &g.client_set) == 0)
            g.client_cpus = argv[++i];
        else {
            s_usage(stderr);
            return 2;
        }
    }
    g.n = g.quick ? k_quick : k_full;
    signal(SIGPIPE, SIG_IGN);
    g_failures = s_shared(sizeof *g_failures);
    sched_getaffinity(0, sizeof g.all_set, &g.all_set);
    /* The coordinator takes part as a client: it kills the holder and
     * polls its pidfd in the crash handoff. */
    s_pin(ROLE_CLIENT);
    if (!mkdtemp(g_dir))
        s_die("mkdtemp");
    g_json = json_object();

    /* The floor's message: an acquire request's size. */
    {
        ul_request q;
        ul_buf b = {0};
        char uvm[80];
        s_uvm(uvm, sizeof uvm, 0x1a7e0000, 1);
        s_req_acquire(&q, 1, uvm);
        if (ul_request_encode(&q, &b))
            s_die("encode");
        g_msg_len = b.len;
        ul_buf_free(&b);
    }

    struct utsname u;
    uname(&u);
    char kernel[600];
    snprintf(kernel, sizeof kernel, "%s %s %s %s", u.sysname, u.release, u.version, u.machine);
    cpu_set_t all = g.all_set;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    json_object_set_new(g_json, "mode", json_string(g.quick ? "quick" : "full"));
    json_object_set_new(g_json, "kernel", json_string(kernel));
    json_object_set_new(g_json, "cores_online", json_integer(cores));
    json_object_set_new(g_json, "cpus_allowed", json_integer(CPU_COUNT(&all)));
    json_t *pin = json_object();
    json_object_set_new(pin, "server_cpus",
                        g.server_cpus ? json_string(g.server_cpus) : json_null());
    json_object_set_new(pin, "client_cpus",
                        g.client_cpus ? json_string(g.client_cpus) : json_null());
    json_object_set_new(g_json, "pinning", pin);
    json_object_set_new(g_json, "message_bytes", json_integer((json_int_t)g_msg_len));
    json_object_set_new(g_json, "settle_ms", json_real(SETTLE_NS / 1e6));
#ifdef UL_SANITIZED
    json_object_set_new(g_json, "sanitized", json_true());
#endif
    printf("uvmlease-bench (%s): %s; %ld cores online, %d allowed; pinning: servers %s, "
           "clients %s\n",
           g.quick ? "quick" : "full", kernel, cores, CPU_COUNT(&all),
           g.server_cpus ? g.server_cpus : "none", g.client_cpus ? g.client_cpus : "none");
    fflush(stdout);

    char echo_ep[300], relay_ep[300], lockfile[300];
    snprintf(echo_ep, sizeof echo_ep, "ipc://%s/echo.sock", g_dir);
    snprintf(relay_ep, sizeof relay_ep, "ipc://%s/relay.sock", g_dir);
    snprintf(lockfile, sizeof lockfile, "%s/uvm-%08x.lock", g_dir, 0x1a7e0000);
    pid_t echo = s_server_start(echo_ep, false);
    pid_t relay = s_server_start(relay_ep, true);

    /* ---- 1 + 2 ---- */
    bdaemon d;
    s_daemon_start(&d, "latency");
    int nlat = g.n.rounds * g.n.per_round, nfl = g.n.rounds * g.n.flock_per_round;
    lat_shm *ls = s_shared(sizeof *ls);
    ls->echo = s_shared(sizeof(double) * (size_t)nlat);
    ls->cycle = s_shared(sizeof(double) * (size_t)nlat);
    ls->async = s_shared(sizeof(double) * (size_t)nlat);
    ls->raw = s_shared(sizeof(double) * (size_t)nlat);
    ls->ping = s_shared(sizeof(double) * (size_t)nlat);
    ls->flk = s_shared(sizeof(double) * (size_t)nfl);
    s_progress("floor and cycle: %d rounds of %d echo round trips and %d cycles", g.n.rounds,
               g.n.per_round, g.n.per_round);
    pid_t lp = s_fork(ROLE_CLIENT);
    if (lp == 0)
        s_lat_main(echo_ep, d.ep, lockfile, ls);
    s_reap_ok(lp, "latency client");
    stats echo_s = s_stats(ls->echo, ls->n_echo), cyc_s = s_stats(ls->cycle, ls->n_cycle);
    stats async_s = s_stats(ls->async, ls->n_async), fl_s = s_stats(ls->flk, ls->n_flock);
    stats raw_s = s_stats(ls->raw, ls->n_raw), ping_s = s_stats(ls->ping, ls->n_ping);

    int nh = g.n.handoffs;
    double *relay_v = s_shared(sizeof(double) * (size_t)nh);
    double *ho_v = s_shared(sizeof(double) * (size_t)nh);
    double *fho_v = s_shared(sizeof(double) * (size_t)nh);
    char ho_uvm[80];
    s_uvm(ho_uvm, sizeof ho_uvm, 0x4a4d0000, 1);
    lk lib = {.flock = false, .target = d.ep, .uvm = ho_uvm};
    lk fl = {.flock = true, .target = lockfile};
    /* In two halves, alternating, so drift hits each alike. */
    int h1 = nh / 2, h2 = nh - h1;
    s_progress("relay and handoffs: %d each", nh);
    s_relay_pair(relay_ep, relay_v, h1);
    s_handoff_pair(lib, ho_v, h1);
    s_handoff_pair(fl, fho_v, h1);
    s_relay_pair(relay_ep, relay_v + h1, h2);
    s_handoff_pair(lib, ho_v + h1, h2);
    s_handoff_pair(fl, fho_v + h1, h2);
    stats relay_s = s_stats(relay_v, nh), ho_s = s_stats(ho_v, nh), fho_s = s_stats(fho_v, nh);

    int nc = g.n.crashes;
    double *cr = s_shared(sizeof(double) * (size_t)nc),
           *k2e = s_shared(sizeof(double) * (size_t)nc);
    double *fcr = s_shared(sizeof(double) * (size_t)nc),
           *fk2e = s_shared(sizeof(double) * (size_t)nc);
    double *extra = calloc((size_t)nc, sizeof *extra);
    s_progress("crash handoffs: %d each", nc);
    s_crash_run(lib, cr, k2e, nc);
    s_crash_run(fl, fcr, fk2e, nc);
    for (int i = 0; i < nc; i++)
        extra[i] = cr[i] - k2e[i];
    stats cr_s = s_stats(cr, nc), k2e_s = s_stats(k2e, nc), ex_s = s_stats(extra, nc);
    stats fcr_s = s_stats(fcr, nc), fk2e_s = s_stats(fk2e, nc);
    free(extra);
    s_daemon_stop(&d);

    double floor_us = echo_s.p50;
    char h[200];
    snprintf(h, sizeof h, "1. floor (%zu-byte messages; echo and cycle alternate in %d rounds)",
             g_msg_len, g.n.rounds);
    s_heading(h);
    s_fig("floor_p50_us", echo_s.p50, "us", "ZeroMQ ipc echo round trip; p99 %.1f us; n=%d",
          echo_s.p99, echo_s.n);
    s_fig("floor_p99_us", echo_s.p99, "us", NULL);
    s_fig("relay_p50_us", relay_s.p50, "us",
          "A -> relay -> B (B settled %.0f ms); p99 %.1f us; n=%d", SETTLE_NS / 1e6, relay_s.p99,
          relay_s.n);
    s_fig("relay_p99_us", relay_s.p99, "us", NULL);
    s_fig("flock_p50_us", fl_s.p50, "us", "flock(2) LOCK_EX + LOCK_UN, uncontended; p99 %.2f us",
          fl_s.p99);
    s_fig("flock_p99_us", fl_s.p99, "us", NULL);
    s_heading("2. latency through libuvmlease (uvmleased in its own process)");
    s_fig("cycle_p50_us", cyc_s.p50, "us", "acquire granted at once + release; n=%d", cyc_s.n);
    s_fig("cycle_p99_us", cyc_s.p99, "us", "%.2fx floor p99", cyc_s.p99 / echo_s.p99);
    s_fig("cycle_ratio", cyc_s.p50 / floor_us, "x", "cycle p50 / floor p50");
    s_fig("cycle_ratio_p99", cyc_s.p99 / echo_s.p99, "x", "cycle p99 / floor p99");
#if BENCH_ASYNC
    s_fig("cycle_async_p50_us", async_s.p50, "us", "acquire + uvmlease_release_nowait; p99 %.1f us",
          async_s.p99);
    s_fig("cycle_async_ratio", async_s.p50 / floor_us, "x", "cycle_async p50 / floor p50");
#else
    (void)async_s;
    json_object_set_new(g_json, "cycle_async_p50_us", json_null());
    json_object_set_new(g_json, "cycle_async_ratio", json_null());
#endif
    s_fig("ping_p50_us", ping_s.p50, "us",
          "ping round trip to uvmleased, raw DEALER (no lease work); p99 %.1f us", ping_s.p99);
    s_fig("ping_ratio", ping_s.p50 / floor_us, "x", "ping p50 / floor p50: the broker's loop");
    s_fig("cycle_raw_p50_us", raw_s.p50, "us",
          "the cycle from a raw DEALER blocking in zmq_msg_recv (no libuvmlease); p99 %.1f us",
          raw_s.p99);
    s_fig("cycle_raw_ratio", raw_s.p50 / floor_us, "x",
          "raw cycle p50 / floor p50: the broker alone; cycle_ratio - this = libuvmlease");
    s_fig("handoff_p50_us", ho_s.p50, "us",
          "release -> queued waiter's acquire returns; p99 %.1f us; n=%d", ho_s.p99, ho_s.n);
    s_fig("handoff_p99_us", ho_s.p99, "us", NULL);
    s_fig("handoff_ratio", ho_s.p50 / relay_s.p50, "x", "handoff p50 / relay p50");
    s_fig("handoff_ratio_p99", ho_s.p99 / relay_s.p99, "x", "handoff p99 / relay p99");
    s_fig("crash_handoff_p50_us", cr_s.p50, "us",
          "SIGKILL -> waiter's acquire returns; p99 %.1f us; n=%d", cr_s.p99, cr_s.n);
    s_fig("crash_handoff_p99_us", cr_s.p99, "us", NULL);
    s_fig("kill_to_exit_p50_us", k2e_s.p50, "us",
          "SIGKILL -> the holder's pidfd readable; p99 %.1f us", k2e_s.p99);
    s_fig("crash_extra_us", ex_s.p50, "us",
          "p50 of (crash handoff - kill-to-exit) per sample; p99 %.1f us", ex_s.p99);
    s_fig("flock_handoff_p50_us", fho_s.p50, "us", "the same handoff through flock(2); p99 %.1f us",
          fho_s.p99);
    s_fig("flock_crash_handoff_p50_us", fcr_s.p50, "us",
          "the same crash through flock(2); kill-to-exit p50 %.1f us", fk2e_s.p50);

    /* ---- 3 ---- */
    s_heading("3. throughput: N client processes, cycles against uvmleased vs round trips against "
              "the echo server (alternating phases); ratio = 2 x cycles/s / echo round trips/s");
    int levels[3] = {1, 8, 32};
    for (int i = 0; i < 3; i++) {
        s_daemon_start(&d, i == 0 ? "tp1" : i == 1 ? "tp8" : "tp32");
        s_progress("throughput: %d processes", levels[i]);
        tp_fig f = s_throughput(levels[i], echo_ep, d.ep);
        s_daemon_stop(&d);
        char key[64];
        snprintf(key, sizeof key, "throughput_echo_rt_per_s_%d", levels[i]);
        s_fig(key, f.echo_rt_s, "/s", "%d processes", levels[i]);
        snprintf(key, sizeof key, "throughput_cycles_per_s_%d", levels[i]);
        s_fig(key, f.cycles_s, "/s", "%.0f requests/s", 2 * f.cycles_s);
        snprintf(key, sizeof key, "throughput_ratio_%d", levels[i]);
        s_fig(key, f.ratio, "x", NULL);
    }

    /* ---- 4 ---- */
    s_daemon_start(&d, "contention");
    s_progress("contention: 32 processes for %.1f s", g.n.cont_s);
    s_contention(d.ep, ho_s.p50);
    s_daemon_stop(&d);

    /* The floor servers are not needed any more. */
    s_kill(echo);
    s_kill(relay);

    /* ---- 5 ---- */
    s_progress("scale: %d, %d, %d leases", g.n.scale[0], g.n.scale[1], g.n.scale[2]);
    s_scale();

    /* ---- 6 ---- */
    s_progress("aged: %d leases held, %d cycles", g.n.aged_leases, g.n.aged_cycles);
    s_aged(floor_us);

    s_print_table();
    int failures = *g_failures;
    json_object_set_new(g_json, "failures", json_integer(failures));
    printf("\nfailures: %d%s\n", failures,
           failures ? "" : " (every operation succeeded; targets are information only)");
    if (g.json && json_dump_file(g_json, g.json, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
        fprintf(stderr, "uvmlease-bench: cannot write %s\n", g.json);
        failures++;
    }
    json_decref(g_json);
    if (!g.keep) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "uvmlease-bench: could not remove %s\n", g_dir);
    } else {
        printf("run directory kept: %s\n", g_dir);
    }
    return failures ? 1 : 0;
}
