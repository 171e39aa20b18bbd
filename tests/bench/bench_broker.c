/*
 * bench_broker.c — what the broker costs per lease, against the floor: a bare
 * ZeroMQ ipc round trip measured in the same run on the same machine.
 *
 *   echo      DEALER -> ROUTER -> DEALER, one small frame, no processing
 *   broker    acquire (granted at once) + release through an in-process
 *             broker: two round trips per lease
 *   in-proc   the broker's own work per message without the transport:
 *             decode, lease table, encode (ul_request_decode, lt_*,
 *             ul_reply_encode)
 *   aged      a broker that has served many leases against a fresh one,
 *             both with the same leases held by other processes: the p50
 *             of one acquire + release cycle and of a full admin list (the
 *             pages `uvmleasectl list --json` asks for). A broker that has
 *             run for days must behave like a fresh one: the ratios should
 *             stay near 1.
 *
 * Prints figures and ratios; exits non-zero only if an operation failed.
 * Usage: bench_broker [--quick] [round-trips]
 *   default: 20000 round trips; aged: 1000 leases held, 100000 cycles
 *   --quick: 5000 round trips; aged: 100 leases held, 5000 cycles
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "lease_table.h"
#include "ul_proto.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

static void s_quiet(void *ctx, ul_log_level l, const char *line)
{
    (void)ctx;
    (void)l;
    (void)line;
}

typedef struct echo_ctx {
    void *router;
    int n;
} echo_ctx;

static void *s_echo(void *arg)
{
    echo_ctx *e = arg;
    for (int i = 0; i < e->n; i++) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, e->router, 0) < 0 || zmq_msg_recv(&body, e->router, 0) < 0)
            break;
        zmq_msg_send(&id, e->router, ZMQ_SNDMORE);
        zmq_msg_send(&body, e->router, 0);
    }
    return NULL;
}

static double s_echo_us(const char *dir, int n, const void *payload, size_t len)
{
    char ep[512];
    snprintf(ep, sizeof ep, "ipc://%s/echo.sock", dir);
    void *ctx = zmq_ctx_new();
    void *r = zmq_socket(ctx, ZMQ_ROUTER), *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(r, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_bind(r, ep);
    zmq_connect(d, ep);
    echo_ctx e = {r, n + 100};
    pthread_t t;
    pthread_create(&t, NULL, s_echo, &e);
    char buf[4096];
    for (int i = 0; i < 100; i++) { /* warm-up */
        zmq_send(d, payload, len, 0);
        zmq_recv(d, buf, sizeof buf, 0);
    }
    uint64_t t0 = ul_now_ns();
    for (int i = 0; i < n; i++) {
        zmq_send(d, payload, len, 0);
        zmq_recv(d, buf, sizeof buf, 0);
    }
    uint64_t dt = ul_now_ns() - t0;
    pthread_join(t, NULL);
    zmq_close(d);
    zmq_close(r);
    zmq_ctx_term(ctx);
    return (double)dt / 1000.0 / n;
}

static int s_call(void *d, ul_request *q, ul_reply *r, ul_buf *out)
{
    out->len = 0;
    if (ul_request_encode(q, out) || zmq_send(d, out->data, out->len, 0) < 0)
        return -1;
    char buf[8192];
    int n = zmq_recv(d, buf, sizeof buf, 0);
    if (n < 0 || (size_t)n > sizeof buf)
        return -1;
    return ul_reply_decode(buf, (size_t)n, r);
}

static double s_broker_us(const char *dir, int n, int *failures)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.log_sink = s_quiet;
    cfg.log_level = UL_LOG_ERROR;
    uvmlease_broker *b = NULL;
    char err[256];
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err)) {
        fprintf(stderr, "broker: %s\n", err);
        exit(1);
    }
    void *ctx = zmq_ctx_new();
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(d, uvmlease_broker_endpoint(b));
    ul_buf out = {0};
    ul_request q;
    ul_reply r;
    uint64_t rid = 1;
    uint64_t t0 = 0;
    for (int i = -100; i < n; i++) {
        if (i == 0)
            t0 = ul_now_ns();
        memset(&q, 0, sizeof q);
        q.version = UL_PROTO_VERSION;
        q.op = UL_OP_ACQUIRE;
        q.rid = rid++;
        snprintf(q.uvm, sizeof q.uvm,
                 "6f1c2a9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm");
        snprintf(q.label, sizeof q.label, "bench");
        q.confidential = true;
        q.timeout_ms = 0;
        if (s_call(d, &q, &r, &out) || r.err) {
            (*failures)++;
            continue;
        }
        uint64_t lease = r.lease;
        ul_reply_free(&r);
        memset(&q, 0, sizeof q);
        q.version = UL_PROTO_VERSION;
        q.op = UL_OP_RELEASE;
        q.rid = rid++;
        q.lease = lease;
        if (s_call(d, &q, &r, &out) || r.err)
            (*failures)++;
        ul_reply_free(&r);
    }
    uint64_t dt = ul_now_ns() - t0;
    ul_buf_free(&out);
    zmq_close(d);
    zmq_ctx_term(ctx);
    uvmlease_broker_stop(&b);
    return (double)dt / 1000.0 / n;
}

static void s_nop_event(void *ctx, const lt_event *ev)
{
    (void)ctx;
    (void)ev;
}

/* The broker's per-lease work without sockets: decode the acquire, run the
 * table, encode the reply; the same for the release. */
static double s_inproc_us(int n, int *failures)
{
    lt_config tc = {.hold_warn_ms = 300000, .on_event = s_nop_event};
    lt_table *t = lt_new(&tc);
    lt_ident id = {.pid = 4242, .uid = 0, .start_time = 1, .comm = "bench"};
    lt_owner *o = lt_owner_new(t, &id);
    ul_request q;
    memset(&q, 0, sizeof q);
    q.version = UL_PROTO_VERSION;
    q.op = UL_OP_ACQUIRE;
    q.rid = 1;
    snprintf(q.uvm, sizeof q.uvm,
             "6f1c2a9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm");
    snprintf(q.label, sizeof q.label, "bench");
    q.confidential = true;
    ul_buf acq = {0}, rel = {0}, out = {0};
    ul_request_encode(&q, &acq);
    q.op = UL_OP_RELEASE;
    q.lease = 1; /* only the shape matters: the table is told the real id */
    ul_request_encode(&q, &rel);
    ul_reply rep;
    uint64_t t0 = ul_now_ns();
    for (int i = 0; i < n; i++) {
        ul_request in;
        if (ul_request_decode(acq.data, acq.len, &in)) {
            (*failures)++;
            break;
        }
        lt_acquire_args a = {.uvm = in.uvm,
                             .confidential = in.confidential,
                             .label = in.label,
                             .rid = (uint64_t)i + 1,
                             .timeout_ms = 0};
        lt_acquire_result res;
        memset(&res, 0, sizeof res);
        uint64_t now = ul_now_ms();
        if (lt_acquire(t, o, &a, now, &res) || !res.lease) {
            (*failures)++;
            break;
        }
        memset(&rep, 0, sizeof rep);
        rep.kind = UL_MSG_REPLY;
        rep.op = UL_OP_ACQUIRE;
        rep.rid = in.rid;
        rep.lease = res.lease->id;
        rep.fence = res.lease->fence;
        snprintf(rep.uvm, sizeof rep.uvm, "%s", in.uvm);
        out.len = 0;
        ul_reply_encode(&rep, &out);
        uint64_t lease = res.lease->id;
        if (ul_request_decode(rel.data, rel.len, &in) || lt_release(t, o, lease, now)) {
            (*failures)++;
            break;
        }
        memset(&rep, 0, sizeof rep);
        rep.kind = UL_MSG_REPLY;
        rep.op = UL_OP_RELEASE;
        rep.rid = in.rid;
        out.len = 0;
        ul_reply_encode(&rep, &out);
    }
    uint64_t dt = ul_now_ns() - t0;
    ul_buf_free(&acq);
    ul_buf_free(&rel);
    ul_buf_free(&out);
    lt_free(&t);
    return (double)dt / 1000.0 / n;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return v[n / 2];
}

/* ---- aged against fresh ------------------------------------------------ */

/* One request, one reply of any size. 0, or -1 / a decode status. */
static int s_call_any(void *d, ul_request *q, ul_reply *r, ul_buf *out)
{
    out->len = 0;
    if (ul_request_encode(q, out) || zmq_send(d, out->data, out->len, 0) < 0)
        return -1;
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

static void *s_dealer(void *ctx, const char *ep)
{
    void *d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(d, ep);
    return d;
}

/* Acquire (granted at once) and release one lease. 0 or -1. */
static int s_cycle(void *d, ul_buf *out, uint64_t *rid, const char *uvm)
{
    ul_request q;
    ul_reply r;
    memset(&q, 0, sizeof q);
    q.version = UL_PROTO_VERSION;
    q.op = UL_OP_ACQUIRE;
    q.rid = (*rid)++;
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    snprintf(q.label, sizeof q.label, "bench");
    q.confidential = true;
    q.timeout_ms = 0;
    if (s_call_any(d, &q, &r, out))
        return -1;
    int bad = r.err != 0 || r.queued;
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    if (bad)
        return -1;
    memset(&q, 0, sizeof q);
    q.version = UL_PROTO_VERSION;
    q.op = UL_OP_RELEASE;
    q.rid = (*rid)++;
    q.lease = lease;
    if (s_call_any(d, &q, &r, out))
        return -1;
    bad = r.err != 0;
    ul_reply_free(&r);
    return bad ? -1 : 0;
}

/* Every page of an admin list; returns the number of UVMs listed, -1 on
 * failure. */
static long s_list_all(void *d, ul_buf *out, uint64_t *rid)
{
    char after[UL_MAX_UVM + 1] = "";
    long n = 0;
    for (;;) {
        ul_request q;
        ul_reply r;
        memset(&q, 0, sizeof q);
        q.version = UL_PROTO_VERSION;
        q.op = UL_OP_LIST;
        q.rid = (*rid)++;
        snprintf(q.after, sizeof q.after, "%s", after);
        if (s_call_any(d, &q, &r, out))
            return -1;
        if (r.err) {
            ul_reply_free(&r);
            return -1;
        }
        n += r.n_uvms;
        bool more = r.more && r.n_uvms > 0;
        if (more)
            snprintf(after, sizeof after, "%s", r.uvms[r.n_uvms - 1].uvm);
        ul_reply_free(&r);
        if (!more)
            return n;
    }
}

/* Processes that each hold `per` leases on UVMs of their own until told
 * to go. */
typedef struct holders {
    pid_t pid[64];
    int n;
    int go[2];    /* a byte each: connect and acquire; EOF: exit */
    int ready[2]; /* a byte each: 'R' all held, 'F' failed */
} holders;

static void s_holder_main(holders *h, const char *ep, int first, int per)
{
    close(h->go[1]);
    close(h->ready[0]);
    char c;
    if (read(h->go[0], &c, 1) != 1)
        _exit(1);
    void *ctx = zmq_ctx_new();
    void *d = s_dealer(ctx, ep);
    ul_buf out = {0};
    uint64_t rid = 1;
    char res = 'R';
    for (int i = 0; i < per && res == 'R'; i++) {
        ul_request q;
        ul_reply r;
        memset(&q, 0, sizeof q);
        q.version = UL_PROTO_VERSION;
        q.op = UL_OP_ACQUIRE;
        q.rid = rid++;
        snprintf(q.uvm, sizeof q.uvm, "%060d@vm", first + i);
        snprintf(q.label, sizeof q.label, "held-%d", first + i);
        q.confidential = true;
        q.timeout_ms = 0;
        if (s_call_any(d, &q, &r, &out) || r.err || r.queued)
            res = 'F';
        ul_reply_free(&r);
    }
    if (write(h->ready[1], &res, 1) != 1)
        _exit(1);
    while (read(h->go[0], &c, 1) > 0) /* until the parent closes it */
        ;
    _exit(0);
}

/* Fork before the broker (and its threads) exist in this process. */
static void s_holders_fork(holders *h, const char *ep, int leases)
{
    memset(h, 0, sizeof *h);
    if (pipe(h->go) || pipe(h->ready)) {
        perror("pipe");
        exit(1);
    }
    int per = 250; /* well within the per-process cap, UL_MAX_PER_PROCESS */
    for (int first = 0; first < leases && h->n < 64; first += per) {
        int k = leases - first < per ? leases - first : per;
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            exit(1);
        }
        if (p == 0)
            s_holder_main(h, ep, first, k);
        h->pid[h->n++] = p;
    }
    close(h->go[0]);
    close(h->ready[1]);
}

/* Tell the holders to acquire; true when all of them hold their leases. */
static bool s_holders_go(holders *h)
{
    bool ok = true;
    for (int i = 0; i < h->n; i++)
        if (write(h->go[1], "g", 1) != 1)
            ok = false;
    for (int i = 0; i < h->n; i++) {
        char c = 0;
        if (read(h->ready[0], &c, 1) != 1 || c != 'R')
            ok = false;
    }
    return ok;
}

static void s_holders_end(holders *h)
{
    close(h->go[1]);
    close(h->ready[0]);
    for (int i = 0; i < h->n; i++)
        while (waitpid(h->pid[i], NULL, 0) < 0 && errno == EINTR)
            ;
}

typedef struct aged_fig {
    double cycle_p50_us;
    double list_p50_us;
    double age_us; /* mean cycle while ageing */
} aged_fig;

/*
 * A broker in dir/sub with `leases` leases held by other processes; it
 * first serves `age` acquire + release cycles, then `samples` timed
 * cycles and `lists` timed full lists are taken.
 */
static void s_aged_run(const char *dir, const char *sub, int leases, int age, int samples,
                       int lists, aged_fig *fig, int *failures)
{
    char rdir[512], ep[600];
    snprintf(rdir, sizeof rdir, "%s/%s", dir, sub);
    if (mkdir(rdir, 0700) != 0) {
        perror("mkdir");
        exit(1);
    }
    snprintf(ep, sizeof ep, "ipc://%s/broker.sock", rdir);
    holders h;
    s_holders_fork(&h, ep, leases);

    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = rdir;
    cfg.log_sink = s_quiet;
    cfg.log_level = UL_LOG_ERROR;
    uvmlease_broker *b = NULL;
    char err[256];
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err)) {
        fprintf(stderr, "broker: %s\n", err);
        exit(1);
    }
    if (!s_holders_go(&h)) {
        fprintf(stderr, "bench: aged: the holders could not take their leases\n");
        (*failures)++;
    }
    void *ctx = zmq_ctx_new();
    void *d = s_dealer(ctx, uvmlease_broker_endpoint(b));
    ul_buf out = {0};
    uint64_t rid = 1;
    const char *uvm = "a9ed000000000000000000000000000000000000000000000000000000000000@vm";

    uint64_t t0 = ul_now_ns();
    for (int i = 0; i < age; i++)
        if (s_cycle(d, &out, &rid, uvm))
            (*failures)++;
    fig->age_us = age ? (double)(ul_now_ns() - t0) / 1000.0 / age : 0;

    for (int i = 0; i < 50; i++) /* warm-up */
        if (s_cycle(d, &out, &rid, uvm))
            (*failures)++;
    double *v = calloc((size_t)(samples > lists ? samples : lists), sizeof *v);
    if (!v)
        exit(1);
    for (int i = 0; i < samples; i++) {
        uint64_t s0 = ul_now_ns();
        if (s_cycle(d, &out, &rid, uvm))
            (*failures)++;
        v[i] = (double)(ul_now_ns() - s0) / 1000.0;
    }
    fig->cycle_p50_us = s_median(v, samples);
    for (int i = 0; i < lists; i++) {
        uint64_t s0 = ul_now_ns();
        long n = s_list_all(d, &out, &rid);
        v[i] = (double)(ul_now_ns() - s0) / 1000.0;
        if (n != leases) {
            fprintf(stderr, "bench: aged: list showed %ld UVMs, expected %d\n", n, leases);
            (*failures)++;
        }
    }
    fig->list_p50_us = s_median(v, lists);
    free(v);
    ul_buf_free(&out);
    zmq_close(d);
    zmq_ctx_term(ctx);
    uvmlease_broker_stop(&b);
    s_holders_end(&h);
}

int main(int argc, char **argv)
{
    bool quick = false;
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else
            n = atoi(argv[i]);
    }
    if (n <= 0)
        n = quick ? 5000 : 20000;
    int aged_leases = quick ? 100 : 1000, aged_cycles = quick ? 5000 : 100000;
    /* The fresh broker's own samples stay few (below the journal's
     * compaction threshold), so it stays fresh while measured. */
    int aged_samples = quick ? 500 : 1000, aged_lists = quick ? 10 : 50;
    char dir[] = "/tmp/ul-bench-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    int failures = 0;
    /* The same payload size as an acquire request, for a fair floor. */
    char payload[96];
    memset(payload, 'x', sizeof payload);
    /* Echo and broker alternate in rounds and each figure is the median
     * of its rounds: a noisy neighbour then hits both alike. */
    enum { ROUNDS = 7 };
    double echo_r[ROUNDS], broker_r[ROUNDS], inproc_r[ROUNDS];
    int per = n / ROUNDS > 100 ? n / ROUNDS : 100;
    for (int r = 0; r < ROUNDS; r++) {
        echo_r[r] = s_echo_us(dir, per, payload, sizeof payload);
        broker_r[r] = s_broker_us(dir, per, &failures) / 2.0; /* two round trips a lease */
        inproc_r[r] = s_inproc_us(per * 5, &failures);
    }
    double echo = s_median(echo_r, ROUNDS), per_rt = s_median(broker_r, ROUNDS);
    double inproc = s_median(inproc_r, ROUNDS);
    printf("bench: %d rounds x %d leases (acquire + release) and %d echo round trips; medians\n",
           ROUNDS, per, per);
    printf("bench: zmq ipc echo round trip        %8.2f us\n", echo);
    printf("bench: broker round trip (per op)     %8.2f us  (%.2fx echo)\n", per_rt, per_rt / echo);
    printf("bench: broker cost over transport/op  %8.2f us  (%.1f%% of echo)\n", per_rt - echo,
           100.0 * (per_rt - echo) / echo);
    printf("bench: broker work per lease, no I/O  %8.2f us  (%.1f%% of one echo round trip)\n",
           inproc, 100.0 * inproc / echo);

    /* Holders are forked first thing in s_aged_run: no thread of an
     * earlier scenario is alive then. */
    aged_fig fresh, aged;
    s_aged_run(dir, "fresh", aged_leases, 0, aged_samples, aged_lists, &fresh, &failures);
    s_aged_run(dir, "aged", aged_leases, aged_cycles, aged_samples, aged_lists, &aged, &failures);
    printf("bench: aged: %d leases held by %d processes; %d acquire + release cycles served "
           "before measuring (%.2f us per cycle on average while ageing)\n",
           aged_leases, (aged_leases + 249) / 250, aged_cycles, aged.age_us);
    printf("bench: fresh cycle p50 %8.2f us (%.2fx two echo round trips)  list p50 %9.2f us\n",
           fresh.cycle_p50_us, fresh.cycle_p50_us / (2 * echo), fresh.list_p50_us);
    printf("bench: aged  cycle p50 %8.2f us (%.2fx two echo round trips)  list p50 %9.2f us\n",
           aged.cycle_p50_us, aged.cycle_p50_us / (2 * echo), aged.list_p50_us);
    printf("bench: aged_cycle_ratio %.2f\n", aged.cycle_p50_us / fresh.cycle_p50_us);
    printf("bench: aged_list_ratio %.2f\n", aged.list_p50_us / fresh.list_p50_us);
    printf("bench: failures %d\n", failures);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return failures ? 1 : 0;
}
