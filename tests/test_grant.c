/*
 * test_grant.c — every grant reaches its caller or is undone.
 *
 * The broker runs inside the test process and every client here is a raw
 * DEALER or a libuvmlease handle of this process: the leases belong to it,
 * and it stays alive throughout, so only the broker's handling of lost and
 * abandoned grants can free the UVM (a holder exit never does it here).
 *
 * Suite "grant": the broker on its own (an undeliverable grant, a cancel of
 * a granted acquire). Suite "lostgrant": libuvmlease behind a relay that
 * drops the broker's unasked grants, as a crash between journalling a grant
 * and sending it would.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "testutil.h"
#include "ul_client.h"
#include "ul_proto.h"
#include "ul_sys.h"
#include "uvmlease.h"
#include "uvmlease_broker.h"

#define UVM "9e1f3a5b7c9d1e3f5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b5c7d9e1f@vm"

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

/* ---- raw-protocol helpers ---------------------------------------------- */

/* Acquire UVM (confidential, waiting forever); returns the rid. The
 * reply must be "queued". */
static uint64_t s_queue(void *s, const char *label)
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_ACQUIRE);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM);
    snprintf(q.label, sizeof q.label, "%s", label);
    q.confidential = true;
    cr_assert_eq(ut_call(s, &q, &r, 5000), 0);
    cr_assert(r.err == 0 && r.queued, "%s: err %u queued %d", label, r.err, r.queued);
    ul_reply_free(&r);
    return q.rid;
}

/* Take the free UVM at once; returns the lease (and the rid in *rid). */
static uint64_t s_take(void *s, uint64_t *rid)
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_ACQUIRE);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM);
    q.confidential = true;
    q.timeout_ms = 0;
    cr_assert_eq(ut_call(s, &q, &r, 5000), 0);
    cr_assert(r.err == 0 && r.lease, "take: err %u", r.err);
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    if (rid)
        *rid = q.rid;
    return lease;
}

/* The next grant on s (other messages are skipped), within 5 s: the lease,
 * or 0 when none came. */
static uint64_t s_grant_of(void *s, uint64_t rid)
{
    uint64_t deadline = ul_now_ms() + 5000;
    for (;;) {
        uint64_t now = ul_now_ms();
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (now >= deadline || ut_recv(s, &r, (int)(deadline - now)) != 0)
            return 0;
        uint64_t lease = r.kind == UL_MSG_GRANT && r.rid == rid ? r.lease : 0;
        ul_reply_free(&r);
        if (lease)
            return lease;
    }
}

/* A stats counter (lval NULL: the one without a label); UINT64_MAX if
 * absent. */
static uint64_t s_counter(void *admin, const char *name, const char *lval)
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_STATS);
    cr_assert_eq(ut_call(admin, &q, &r, 5000), 0);
    cr_assert_eq(r.err, 0);
    uint64_t v = UINT64_MAX;
    for (uint32_t i = 0; i < r.n_counters; i++)
        if (!strcmp(r.counters[i].name, name) && (!lval || !strcmp(r.counters[i].lval, lval)))
            v = r.counters[i].value;
    ul_reply_free(&r);
    return v;
}

/* show UVM: its one holder's lease (0 if none) and the last release's
 * reason. */
static uint64_t s_show(void *admin, char last_reason[UL_MAX_NAME + 1])
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM);
    cr_assert_eq(ut_call(admin, &q, &r, 5000), 0);
    cr_assert_eq(r.err, 0, "show: %u", r.err);
    cr_assert_leq(r.uvms[0].n_holders, 1);
    uint64_t lease = r.uvms[0].n_holders ? r.uvms[0].holders[0].lease : 0;
    memcpy(last_reason, r.uvms[0].last_reason, UL_MAX_NAME + 1); /* "" when none */
    ul_reply_free(&r);
    return lease;
}

static int s_simple(void *s, ul_op op, uint64_t arg, ul_reply *r)
{
    ul_request q;
    ut_req(&q, op);
    if (op == UL_OP_CANCEL)
        q.target_rid = arg;
    else if (op == UL_OP_PHASE) {
        q.lease = arg;
        snprintf(q.phase, sizeof q.phase, "cim-mount");
    }
    memset(r, 0, sizeof *r);
    return ut_call(s, &q, r, 5000);
}

/* ================================================================ grant */

TestSuite(grant, .init = s_up, .fini = s_down, .timeout = 60);

/* The broker sees a closed connection only some time after the close: an
 * event it then fails to send to that connection's watch proves it has. */
static void s_wait_route_gone(void *admin, void *holder, uint64_t lease)
{
    uint64_t deadline = ul_now_ms() + 10000;
    while (s_counter(admin, "undelivered_total", "event") == 0) {
        cr_assert_lt(ul_now_ms(), deadline, "the broker never noticed the closed connection");
        ul_reply r;
        cr_assert_eq(s_simple(holder, UL_OP_PHASE, lease, &r), 0); /* a watch event */
        cr_assert_eq(r.err, 0);
        ul_reply_free(&r);
    }
}

Test(grant, a_grant_to_a_closed_connection_is_undone)
{
    void *admin = ut_dealer(s_ep), *h = ut_dealer(s_ep), *gone = ut_dealer(s_ep);
    void *next = ut_dealer(s_ep);
    uint64_t first = s_take(h, NULL);
    /* "gone" watches (so its closing can be observed) and queues first. */
    ul_reply r;
    cr_assert_eq(s_simple(gone, UL_OP_WATCH, 0, &r), 0);
    cr_assert_eq(r.err, 0);
    s_queue(gone, "gone");
    uint64_t rid = s_queue(next, "next");
    ut_dealer_close(gone);
    s_wait_route_gone(admin, h, first);

    cr_assert_eq(ut_release(h, first), 0);
    uint64_t lease = s_grant_of(next, rid);
    cr_assert_neq(lease, 0, "the UVM must go to the next waiter, past the lost grant");
    char reason[UL_MAX_NAME + 1];
    cr_assert_eq(s_show(admin, reason), lease);
    cr_assert_str_eq(reason, "undeliverable");
    cr_assert_eq(s_counter(admin, "releases_total", "undeliverable"), 1);
    cr_assert_eq(s_counter(admin, "undelivered_total", "grant"), 1);
    cr_assert_eq(ut_release(next, lease), 0);
    ut_dealer_close(admin);
    ut_dealer_close(h);
    ut_dealer_close(next);
}

Test(grant, cancel_of_a_granted_acquire_releases_it)
{
    void *admin = ut_dealer(s_ep), *h = ut_dealer(s_ep), *late = ut_dealer(s_ep);
    void *next = ut_dealer(s_ep);
    uint64_t first = s_take(h, NULL);
    uint64_t late_rid = s_queue(late, "late");
    uint64_t next_rid = s_queue(next, "next");
    cr_assert_eq(ut_release(h, first), 0);
    /* "late" is granted; it gives that acquire up without having read the
     * grant (ut_call skips it), as a client whose grant was lost does. */
    ul_reply r;
    cr_assert_eq(s_simple(late, UL_OP_CANCEL, late_rid, &r), 0);
    cr_assert_eq(r.err, 0, "cancel of a granted acquire: %u", r.err);
    uint64_t undone = r.lease;
    cr_assert_neq(undone, 0, "the reply names the lease the cancel released");
    ul_reply_free(&r);

    uint64_t lease = s_grant_of(next, next_rid);
    cr_assert_neq(lease, 0, "the UVM must go to the next waiter");
    char reason[UL_MAX_NAME + 1];
    cr_assert_eq(s_show(admin, reason), lease);
    cr_assert_str_eq(reason, "released");
    cr_assert_eq(ut_release(late, undone), UVMLEASE_ENOLEASE, "the lease is gone");

    /* Nothing is left of that acquire: another cancel finds nothing. */
    cr_assert_eq(s_simple(late, UL_OP_CANCEL, late_rid, &r), 0);
    cr_assert_eq(r.err, UVMLEASE_ENOTWAITING);
    cr_assert_eq(r.lease, 0);
    ul_reply_free(&r);
    cr_assert_eq(ut_release(next, lease), 0);
    ut_dealer_close(admin);
    ut_dealer_close(h);
    ut_dealer_close(late);
    ut_dealer_close(next);
}

Test(grant, cancel_of_a_granted_acquire_of_another_process_changes_nothing)
{
    void *h = ut_dealer(s_ep);
    uint64_t rid;
    uint64_t first = s_take(h, &rid);
    pid_t p = ut_fork();
    if (p == 0) {
        /* The holder's rid, from another process: names nothing of its
         * own, so nothing changes. */
        void *s = ut_dealer(s_ep);
        ul_reply r;
        int rc = s_simple(s, UL_OP_CANCEL, rid, &r);
        _exit(rc == 0 && r.err == UVMLEASE_ENOTWAITING && r.lease == 0 ? 0 : 10);
    }
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    cr_assert_eq(ut_release(h, first), 0, "the lease must still be held");
    ut_dealer_close(h);
}

/* ============================================================ lostgrant */

/*
 * A relay between libuvmlease and the broker: a ROUTER for the library's
 * connection, a DEALER to the broker (its peer credentials are this
 * process's, as the library's would be). It forwards everything but the
 * broker's unasked grants, which it counts and drops: the grant is lost in
 * flight, and only the library's cancel can resolve that acquire.
 */
typedef struct relay {
    char ep[300];
    void *ctx, *front, *back;
    pthread_t t;
    atomic_bool stop;
    atomic_int dropped;
} relay;

static relay s_relay;

/* One message from the library: [routing id][body] to the broker. */
static void s_relay_up(relay *x, uint8_t *id, size_t *idlen)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, x->front, 0) < 0)
        return;
    *idlen = zmq_msg_size(&m) < 255 ? zmq_msg_size(&m) : 255;
    memcpy(id, zmq_msg_data(&m), *idlen);
    while (zmq_msg_more(&m) && zmq_msg_recv(&m, x->front, 0) >= 0)
        if (!zmq_msg_more(&m))
            zmq_msg_send(&m, x->back, 0);
    zmq_msg_close(&m);
}

static void s_relay_down(relay *x, const uint8_t *id, size_t idlen)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, x->back, 0) < 0)
        return;
    ul_reply r;
    bool grant =
        ul_reply_decode(zmq_msg_data(&m), zmq_msg_size(&m), &r) == 0 && r.kind == UL_MSG_GRANT;
    ul_reply_free(&r);
    if (grant)
        atomic_fetch_add(&x->dropped, 1);
    else if (zmq_send(x->front, id, idlen, ZMQ_SNDMORE) >= 0)
        zmq_msg_send(&m, x->front, 0);
    zmq_msg_close(&m);
}

static void *s_relay_main(void *p)
{
    relay *x = p;
    uint8_t id[255];
    size_t idlen = 0;
    while (!atomic_load(&x->stop)) {
        zmq_pollitem_t it[2] = {{.socket = x->front, .events = ZMQ_POLLIN},
                                {.socket = x->back, .events = ZMQ_POLLIN}};
        /* The timeout only bounds how long stopping takes. */
        if (zmq_poll(it, 2, 50) <= 0)
            continue;
        if (it[0].revents & ZMQ_POLLIN)
            s_relay_up(x, id, &idlen);
        if (it[1].revents & ZMQ_POLLIN)
            s_relay_down(x, id, idlen);
    }
    return NULL;
}

static void s_lost_up(void)
{
    s_up();
    relay *x = &s_relay;
    memset(x, 0, sizeof *x);
    snprintf(x->ep, sizeof x->ep, "ipc://%s/relay.sock", s_dir);
    int linger = 0;
    x->ctx = zmq_ctx_new();
    x->front = zmq_socket(x->ctx, ZMQ_ROUTER);
    x->back = zmq_socket(x->ctx, ZMQ_DEALER);
    zmq_setsockopt(x->front, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(x->back, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(zmq_bind(x->front, x->ep), 0);
    cr_assert_eq(zmq_connect(x->back, s_ep), 0);
    cr_assert_eq(pthread_create(&x->t, NULL, s_relay_main, x), 0);
}

static void s_lost_down(void)
{
    atomic_store(&s_relay.stop, true);
    pthread_join(s_relay.t, NULL);
    zmq_close(s_relay.front);
    zmq_close(s_relay.back);
    zmq_ctx_term(s_relay.ctx);
    s_down();
}

TestSuite(lostgrant, .init = s_lost_up, .fini = s_lost_down, .timeout = 60);

typedef struct bg {
    pthread_t t;
    uvmlease *c;
    int64_t timeout_ms;
    uvmlease_cancel_token *tok;
    uvmlease_lease *lease;
    int rc;
    atomic_bool done;
} bg;

static void *s_bg_main(void *p)
{
    bg *a = p;
    a->rc = uvmlease_acquire(a->c, UVM, UVMLEASE_CONFIDENTIAL, "lib", a->timeout_ms, a->tok, NULL,
                             &a->lease);
    atomic_store(&a->done, true);
    return NULL;
}

static bool s_bg_done(void *p)
{
    return atomic_load(&((bg *)p)->done);
}

static bool s_one_dropped(void *p)
{
    (void)p;
    return atomic_load(&s_relay.dropped) == 1;
}

static bool s_lib_queued(void *p)
{
    return ul_client_queued(p) == 1;
}

static bool s_lib_settled(void *p)
{
    return ul_client_outstanding(p) == 0;
}

/* The library's acquire is granted, the grant lost; the caller gives up by
 * its own timeout (timeout_ms > 0) or by cancelling. Afterwards the UVM
 * must go to the next waiter: the library's cancel undid the grant. */
static void s_lost_grant(int64_t timeout_ms)
{
    void *admin = ut_dealer(s_ep), *h = ut_dealer(s_ep), *next = ut_dealer(s_ep);
    uint64_t first = s_take(h, NULL);
    uvmlease *c = NULL;
    cr_assert_eq(uvmlease_connect(s_relay.ep, &c), UVMLEASE_OK);
    bg a;
    memset(&a, 0, sizeof a);
    a.c = c;
    a.timeout_ms = timeout_ms;
    if (timeout_ms < 0)
        cr_assert_eq(uvmlease_cancel_token_new(&a.tok), UVMLEASE_OK);
    cr_assert_eq(pthread_create(&a.t, NULL, s_bg_main, &a), 0);
    cr_assert(ut_wait_until(s_lib_queued, c, 5000), "the library's acquire was not queued");
    uint64_t next_rid = s_queue(next, "next");

    cr_assert_eq(ut_release(h, first), 0);
    cr_assert(ut_wait_until(s_one_dropped, NULL, 5000), "no grant for the library's acquire");
    if (a.tok)
        uvmlease_cancel(a.tok);
    cr_assert(ut_wait_until(s_bg_done, &a, 10000), "the acquire did not return");
    pthread_join(a.t, NULL);
    cr_assert_eq(a.rc, a.tok ? UVMLEASE_ECANCELLED : UVMLEASE_ETIMEDOUT, "rc %d", a.rc);
    cr_assert_null(a.lease);
    cr_assert(ut_wait_until(s_lib_settled, c, 5000), "the library's cancel was not answered");

    uint64_t lease = s_grant_of(next, next_rid);
    cr_assert_neq(lease, 0, "the abandoned acquire's lease was left held");
    char reason[UL_MAX_NAME + 1];
    cr_assert_eq(s_show(admin, reason), lease);
    cr_assert_str_eq(reason, "released");
    cr_assert_eq(ut_release(next, lease), 0);
    uvmlease_close(c);
    uvmlease_cancel_token_free(a.tok);
    ut_dealer_close(admin);
    ut_dealer_close(h);
    ut_dealer_close(next);
}

Test(lostgrant, a_cancelled_acquire_whose_grant_was_lost_leaves_nothing_held)
{
    s_lost_grant(-1);
}

Test(lostgrant, a_timed_out_acquire_whose_grant_was_lost_leaves_nothing_held)
{
    /* Long enough for the release to come well before the broker's own
     * deadline; the library gives up UVMLEASE_ACQUIRE_GRACE_MS later. */
    s_lost_grant(2000);
}
