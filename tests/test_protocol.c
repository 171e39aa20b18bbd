// ctest-timeout: 120
/*
 * test_protocol.c — the broker against common/PROTOCOL.md at the wire:
 * raw msgpack frames over a DEALER, no client library.
 *
 * The broker runs in this process, and this process is also the client
 * (its pid owns the leases): nothing here needs another process. Error
 * replies are compared with the golden vectors read out of PROTOCOL.md
 * itself, so the document and the broker cannot drift apart silently.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "broker_internal.h"
#include "send.h"
#include "testutil.h"
#include "uvmlease_broker.h"

#define UVM_A "protocol-a@vm"
#define UVM_B "protocol-b@vm"

static char s_dir[256];
static uvmlease_broker *s_b;
static const char *s_ep;

static void s_up(void)
{
    s_b = ut_broker_start(NULL, s_dir);
    s_ep = uvmlease_broker_endpoint(s_b);
}

static void s_down(void)
{
    ut_broker_stop(&s_b, s_dir);
}

TestSuite(protocol, .init = s_up, .fini = s_down, .timeout = 60);

/* Send raw bytes and receive the next broker message, raw and decoded. */
static void s_exchange(void *sock, const void *req, size_t len, ul_reply *rep)
{
    cr_assert_eq(zmq_send(sock, req, len, 0), (int)len, "send: %s", zmq_strerror(zmq_errno()));
    memset(rep, 0, sizeof *rep);
    int rc = ut_recv(sock, rep, 5000);
    cr_assert_eq(rc, 0, "no readable answer (%d): a request must always be answered", rc);
}

static uint64_t s_acquire(void *sock, const char *uvm, uint64_t *rid)
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_ACQUIRE);
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    q.confidential = true;
    q.timeout_ms = 0;
    cr_assert_eq(ut_call(sock, &q, &r, 5000), 0);
    cr_assert_eq(r.err, 0, "acquire: %s", ul_status_name((int)r.err));
    cr_assert_not(r.queued);
    if (rid)
        *rid = q.rid;
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    return lease;
}

static void s_phase(void *sock, uint64_t lease, const char *phase)
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_PHASE);
    q.lease = lease;
    snprintf(q.phase, sizeof q.phase, "%s", phase);
    cr_assert_eq(ut_call(sock, &q, &r, 5000), 0);
    cr_assert_eq(r.err, 0, "phase '%s': %s", phase, ul_status_name((int)r.err));
    ul_reply_free(&r);
}

/* ---- 1. every request is answered ---------------------------------------- */

/* "" clears the phase (section 5); the history shows only phases. */
Test(protocol, show_after_the_phase_was_cleared_is_answered)
{
    void *s = ut_dealer(s_ep);
    uint64_t lease = s_acquire(s, UVM_A, NULL);
    s_phase(s, lease, "cim-mount");
    s_phase(s, lease, "");
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM_A);
    cr_assert_eq(ut_call(s, &q, &r, 5000), 0, "show after phase \"\" got no answer");
    cr_assert_eq(r.err, 0, "%s", ul_status_name((int)r.err));
    cr_assert_eq(r.n_uvms, 1);
    const ul_holder *h = &r.uvms[0].holders[0];
    cr_assert_str_eq(h->phase, "");
    cr_assert_eq(h->n_phases, 1);
    cr_assert_str_eq(h->phases[0].phase, "cim-mount");
    ul_reply_free(&r);
    cr_assert_eq(ut_release(s, lease), 0);
    ut_dealer_close(s);
}

static int s_log_encode_failures;

static void s_count_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)ctx;
    if (level == UL_LOG_ERROR && strstr(line, "cannot encode reply"))
        s_log_encode_failures++;
}

/* A broker with only what sending needs, and the route to one DEALER:
 * the encode failure is injected by handing ul_broker_send a reply no
 * encoder accepts. */
typedef struct bare {
    uvmlease_broker b;
    void *dealer;
    broute route;
    char dir[256];
} bare;

static void s_bare_up(bare *x)
{
    memset(x, 0, sizeof *x);
    ut_tmpdir("bare", x->dir, sizeof x->dir);
    char ep[320];
    snprintf(ep, sizeof ep, "ipc://%s/s.sock", x->dir);
    x->b.instance = 42;
    x->b.log.min_level = UL_LOG_ERROR;
    x->b.log.sink = s_count_sink;
    x->b.zctx = zmq_ctx_new();
    x->b.router = zmq_socket(x->b.zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(x->b.router, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(zmq_bind(x->b.router, ep), 0);
    x->dealer = ut_dealer(ep);
    cr_assert_eq(zmq_send(x->dealer, "hi", 2, 0), 2);
    int n = zmq_recv(x->b.router, x->route.id, sizeof x->route.id, 0);
    cr_assert_gt(n, 0);
    x->route.len = (uint8_t)n;
    char body[8];
    cr_assert_eq(zmq_recv(x->b.router, body, sizeof body, 0), 2);
}

static void s_bare_down(bare *x)
{
    ut_dealer_close(x->dealer);
    zmq_close(x->b.router);
    zmq_ctx_term(x->b.zctx);
    ul_buf_free(&x->b.out);
    ut_rmrf(x->dir);
}

static void s_expect_internal(bare *x, uint64_t rid, ul_op op)
{
    ul_reply r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(ut_recv(x->dealer, &r, 5000), 0,
                 "an unencodable reply left the request unanswered");
    cr_assert_eq(r.kind, UL_MSG_REPLY);
    cr_assert_eq(r.err, UVMLEASE_EINTERNAL, "%s", ul_status_name((int)r.err));
    cr_assert_eq(r.rid, rid);
    cr_assert_eq(r.op, op);
    cr_assert_eq(r.instance, 42);
    ul_reply_free(&r);
}

Test(protocol, a_reply_that_cannot_be_encoded_becomes_internal)
{
    bare x;
    s_bare_up(&x);
    s_log_encode_failures = 0;
    /* Text the codec refuses (a control character). */
    ul_request q = {.rid = 77, .op = UL_OP_SHOW};
    ul_peer peer = {.route = &x.route};
    ul_broker_reply_error(&x.b, &peer, &q, UVMLEASE_EBUSY, "two\nlines");
    s_expect_internal(&x, 77, UL_OP_SHOW);

    /* A reply larger than a broker frame: 256 UVMs of 64 holders with
     * 256-byte labels. */
    ul_reply big;
    memset(&big, 0, sizeof big);
    big.kind = UL_MSG_REPLY;
    big.rid = 78;
    big.op = UL_OP_LIST;
    big.n_uvms = 256;
    big.uvms = calloc(256, sizeof *big.uvms);
    ul_holder *hs = calloc(64, sizeof *hs);
    cr_assert(big.uvms && hs);
    for (int i = 0; i < 64; i++) {
        hs[i].pid = 1;
        memset(hs[i].label, 'l', UL_MAX_LABEL);
    }
    for (int i = 0; i < 256; i++) {
        snprintf(big.uvms[i].uvm, sizeof big.uvms[i].uvm, "u%d@vm", i);
        big.uvms[i].n_holders = 64;
        big.uvms[i].holders = hs;
    }
    cr_assert_neq(ul_broker_send(&x.b, &x.route, &big), 0, "the list itself was not sent");
    s_expect_internal(&x, 78, UL_OP_LIST);
    free(hs);
    free(big.uvms);
    cr_assert_eq(s_log_encode_failures, 2, "each failure is logged");
    cr_assert_eq(x.b.undelivered[UL_MSG_REPLY], 2, "the replies not sent count as undelivered");
    s_bare_down(&x);
}

/* ---- 2. revoked carries the administrator's reason -------------------- */

Test(protocol, revoked_carries_the_administrators_reason)
{
    void *holder = ut_dealer(s_ep), *admin = ut_dealer(s_ep);
    uint64_t lease = s_acquire(holder, UVM_A, NULL);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_FORCE_RELEASE);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM_A);
    q.mode = UL_FORCE_REVOKE;
    snprintf(q.reason, sizeof q.reason, "wedged in guest-create");
    cr_assert_eq(ut_call(admin, &q, &r, 5000), 0);
    cr_assert_eq(r.err, 0, "revoke: %s", ul_status_name((int)r.err));
    ul_reply_free(&r);
    cr_assert_eq(ut_recv(holder, &r, 5000), 0);
    cr_assert_eq(r.kind, UL_MSG_REVOKED);
    cr_assert_eq(r.lease, lease);
    cr_assert_str_eq(r.uvm, UVM_A);
    cr_assert_str_eq(r.reason, "wedged in guest-create");
    ul_reply_free(&r);
    cr_assert_eq(ut_release(holder, lease), UVMLEASE_EREVOKED);
    ut_dealer_close(admin);
    ut_dealer_close(holder);
}

/* ---- 3 and 6. key rules; what error replies carry ---------------------- */

#define PING3                                                                                      \
    0x84, 0xa1, 'v', 0x01, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g', 0xa3, 'r', 'i', 'd', 0x03

/* Each request that section 3 answers with an error, and the golden
 * vector whose shape the answer has (rid, op, err). */
static const struct {
    const char *vector;
    unsigned char req[64];
    size_t len;
} s_refusals[] = {
    /* {"v":1,"op":"ping","rid":3 with the count announcing one more pair */
    {"unreadable-error-reply", {PING3}, 17},
    /* {"v":1,"op":"ping","rid":3,7:1} */
    {"not-an-object-error-reply", {PING3, 0x07, 0x01}, 19},
    /* {"v":2,"op":"hello","rid":1} */
    {"version-error-reply",
     {0x83, 0xa1, 'v', 0x02, 0xa2, 'o', 'p', 0xa5, 'h', 'e', 'l', 'l', 'o', 0xa3, 'r', 'i', 'd',
      0x01},
     18},
    /* {"v":1,"op":"ping","rid":0} */
    {"bad-rid-error-reply",
     {0x83, 0xa1, 'v', 0x01, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g', 0xa3, 'r', 'i', 'd', 0x00},
     17},
    /* {"v":1,"op":"teleport","rid":5} */
    {"unknown-op-error-reply",
     {0x83, 0xa1, 'v', 0x01, 0xa2, 'o',  'p', 0xa8, 't', 'e', 'l',
      'e',  'p',  'o', 'r',  't',  0xa3, 'r', 'i',  'd', 0x05},
     21},
    /* {"v":1,"op":"show","rid":10,"uvm":"a b"} */
    {"field-error-reply",
     {0x84, 0xa1, 'v', 0x01, 0xa2, 'o', 'p', 0xa4, 's',  'h', 'o', 'w', 0xa3,
      'r',  'i',  'd', 0x0a, 0xa3, 'u', 'v', 'm',  0xa3, 'a', ' ', 'b'},
     25},
};

Test(protocol, error_replies_have_the_shapes_of_the_golden_vectors)
{
    char *text = ut_protocol_md();
    ut_golden vec[64];
    size_t nv = ut_golden_parse(text, vec, 64);
    void *s = ut_dealer(s_ep);
    for (size_t i = 0; i < sizeof s_refusals / sizeof s_refusals[0]; i++) {
        const ut_golden *g = ut_golden_find(vec, nv, s_refusals[i].vector);
        cr_assert_not_null(g, "PROTOCOL.md has no vector %s", s_refusals[i].vector);
        ul_reply want, got;
        cr_assert_eq(ul_reply_decode(g->bytes, g->len, &want), 0);
        s_exchange(s, s_refusals[i].req, s_refusals[i].len, &got);
        const char *n = s_refusals[i].vector;
        cr_expect_eq(got.kind, want.kind, "%s: kind", n);
        cr_expect_eq(got.rid, want.rid, "%s: rid %llu", n, (unsigned long long)got.rid);
        cr_expect_eq(got.op, want.op, "%s: op %d", n, (int)got.op);
        cr_expect_eq(got.err, want.err, "%s: err %s", n, ul_status_name((int)got.err));
        /* The version refusal's detail is normative (section 4). */
        if (want.detail[0])
            cr_expect_str_eq(got.detail, want.detail, "%s: detail", n);
        ul_reply_free(&want);
        ul_reply_free(&got);
    }
    ut_dealer_close(s);
    ut_golden_free(vec, nv);
    free(text);
}

/* Maps under unknown keys follow the key rule too (sections 2 and 3). */
Test(protocol, nested_maps_under_unknown_keys_follow_the_key_rule)
{
    void *s = ut_dealer(s_ep);
    /* PING3 announces 4 pairs and holds 3: "x" is the fourth. */
    const unsigned char head[] = {PING3};
    unsigned char buf[64];
    static const unsigned char ok[] = {0xa1, 'x', 0x81, 0xa1, 'a', 0x01};
    static const unsigned char intkey[] = {0xa1, 'x', 0x81, 0x07, 0x01};
    static const unsigned char dup[] = {0xa1, 'x', 0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02};
    const struct {
        const char *what;
        const unsigned char *tail;
        size_t len;
        int err;
    } t[] = {
        {"string key", ok, sizeof ok, 0},
        {"integer key", intkey, sizeof intkey, UVMLEASE_EBADTYPE},
        {"repeated key", dup, sizeof dup, UVMLEASE_EMALFORMED},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        memcpy(buf, head, sizeof head);
        buf[0] = 0x84;
        memcpy(buf + sizeof head, t[i].tail, t[i].len);
        ul_reply r;
        s_exchange(s, buf, sizeof head + t[i].len, &r);
        cr_expect_eq(r.err, (uint32_t)t[i].err, "%s: %s", t[i].what, ul_status_name((int)r.err));
        /* Refused as not an object: nothing of it is named. */
        cr_expect_eq(r.rid, t[i].err ? 0 : 3, "%s: rid", t[i].what);
        cr_expect_eq(r.op, t[i].err ? UL_OP_NONE : UL_OP_PING, "%s: op", t[i].what);
        ul_reply_free(&r);
    }
    ut_dealer_close(s);
}

/* ---- 5. cancel, as section 5 describes it ------------------------------- */

Test(protocol, cancel_of_a_waiting_acquire_ends_it_before_the_reply)
{
    void *holder = ut_dealer(s_ep), *waiter = ut_dealer(s_ep);
    uint64_t lease = s_acquire(holder, UVM_A, NULL);
    ul_request q, c;
    ul_reply r;
    ut_req(&q, UL_OP_ACQUIRE);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM_A);
    q.confidential = true;
    q.timeout_ms = UL_TIMEOUT_FOREVER;
    cr_assert_eq(ut_call(waiter, &q, &r, 5000), 0);
    cr_assert(r.err == 0 && r.queued, "a second acquire of a held UVM waits");
    ul_reply_free(&r);
    ut_req(&c, UL_OP_CANCEL);
    c.target_rid = q.rid;
    cr_assert_eq(ut_send(waiter, &c), 0);
    /* One connection keeps the broker's order: the acquire's end first. */
    cr_assert_eq(ut_recv(waiter, &r, 5000), 0);
    cr_assert_eq(r.kind, UL_MSG_ACQUIRE_FAILED);
    cr_assert_eq(r.rid, q.rid);
    cr_assert_eq(r.err, UVMLEASE_ECANCELLED);
    ul_reply_free(&r);
    cr_assert_eq(ut_recv(waiter, &r, 5000), 0);
    cr_assert_eq(r.kind, UL_MSG_REPLY);
    cr_assert_eq(r.rid, c.rid);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(r.lease, 0, "nothing was released");
    ul_reply_free(&r);
    cr_assert_eq(ut_release(holder, lease), 0);
    ut_dealer_close(waiter);
    ut_dealer_close(holder);
}

Test(protocol, cancel_of_a_granted_acquire_releases_its_lease)
{
    void *s = ut_dealer(s_ep);
    uint64_t rid = 0;
    uint64_t lease = s_acquire(s, UVM_B, &rid);
    ul_request c;
    ul_reply r;
    ut_req(&c, UL_OP_CANCEL);
    c.target_rid = rid;
    cr_assert_eq(ut_send(s, &c), 0);
    /* No acquire-failed: the acquire had ended with its grant. */
    cr_assert_eq(ut_recv(s, &r, 5000), 0);
    cr_assert_eq(r.kind, UL_MSG_REPLY);
    cr_assert_eq(r.rid, c.rid);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(r.lease, lease);
    ul_reply_free(&r);
    cr_assert_eq(ut_release(s, lease), UVMLEASE_ENOLEASE);
    ut_dealer_close(s);
}

/* ---- 4. a stopping broker sends waiters nothing ------------------------- */

/* "shutdown" (45) is never sent: a waiter learns of the restart from the
 * new instance id and re-sends its acquire with the same rid (section 8). */
Test(protocol, a_waiter_sees_only_the_new_instance_after_a_restart)
{
    void *holder = ut_dealer(s_ep), *waiter = ut_dealer(s_ep);
    uint64_t lease = s_acquire(holder, UVM_A, NULL);
    ul_request q, p;
    ul_reply r;
    ut_req(&q, UL_OP_ACQUIRE);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM_A);
    q.confidential = true;
    q.timeout_ms = UL_TIMEOUT_FOREVER;
    cr_assert_eq(ut_call(waiter, &q, &r, 5000), 0);
    cr_assert(r.err == 0 && r.queued);
    uint64_t old_bi = r.instance;
    ul_reply_free(&r);

    /* Same runtime directory: the holder (this process) keeps its lease. */
    uvmlease_broker_stop(&s_b);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = s_dir;
    cfg.log_level = UL_LOG_ERROR;
    char err[256] = "";
    cr_assert_eq(uvmlease_broker_start(&cfg, &s_b, NULL, err, sizeof err), 0, "%s", err);

    /* The first thing the waiter hears is the answer to its ping. */
    ut_req(&p, UL_OP_PING);
    cr_assert_eq(ut_send(waiter, &p), 0);
    cr_assert_eq(ut_recv(waiter, &r, 10000), 0);
    cr_assert_eq(r.kind, UL_MSG_REPLY, "unasked kind %d before the ping's answer", (int)r.kind);
    cr_assert_eq(r.rid, p.rid);
    cr_assert_neq(r.instance, old_bi);
    ul_reply_free(&r);
    cr_assert_eq(ut_call(waiter, &q, &r, 5000), 0, "re-sent with the same rid");
    cr_assert(r.err == 0 && r.queued, "%s", ul_status_name((int)r.err));
    ul_reply_free(&r);
    cr_assert_eq(ut_release(holder, lease), 0, "the restored lease is released as before");
    cr_assert_eq(ut_recv(waiter, &r, 5000), 0);
    cr_assert_eq(r.kind, UL_MSG_GRANT);
    cr_assert_eq(r.rid, q.rid);
    cr_assert_eq(ut_release(waiter, r.lease), 0);
    ul_reply_free(&r);
    ut_dealer_close(waiter);
    ut_dealer_close(holder);
}
