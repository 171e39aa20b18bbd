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
