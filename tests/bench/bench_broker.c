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
 *
 * Prints figures and ratios; exits non-zero only if an operation failed.
 * Usage: bench_broker [round-trips]   (default 20000)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    if (n <= 0)
        n = 20000;
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
    printf("bench: failures %d\n", failures);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return failures ? 1 : 0;
}
