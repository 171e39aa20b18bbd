// ctest-timeout: 60
/*
 * test_codec.c — the codec against the golden vectors of common/PROTOCOL.md
 * (both directions, byte for byte), round trips, every validation rule,
 * status and op names, text validation and escaping.
 */
#include <criterion/criterion.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ul_proto.h"
#include "testutil.h"
#include "ul_text.h"

TestSuite(codec, .timeout = 60);

/* ------------------------------------------------------------ fixtures */

#define UVM_A  "adc8be22880f1a790847d93c92ff310df72197bea86398b8b575877ea3ffa0c0@vm"
#define UVM_B  "6aab3726454f8f35bd4411b348d4ea18d373583b5b047952e39f3d78cd8a62fa@vm"
#define BI     0x1c9e2f4a7b3d5e61ull
#define LEASE1 1764233100000001ull
#define FENCE1 1764233100000002ull
#define AT1    1764233160123ull

static void req_init(ul_request *r, ul_op op, uint64_t rid)
{
    memset(r, 0, sizeof *r);
    r->version = UL_PROTO_VERSION;
    r->op = op;
    r->rid = rid;
}

static void rep_init(ul_reply *r, ul_msg_kind kind)
{
    memset(r, 0, sizeof *r);
    r->version = UL_PROTO_VERSION;
    r->kind = kind;
    r->instance = BI;
}

static void holder_fill(ul_holder *h, uint32_t pid, const char *comm, const char *label,
                        const char *phase)
{
    memset(h, 0, sizeof *h);
    h->pid = pid;
    h->uid = 0;
    snprintf(h->comm, sizeof h->comm, "%s", comm);
    snprintf(h->label, sizeof h->label, "%s", label);
    snprintf(h->phase, sizeof h->phase, "%s", phase);
    h->lease = LEASE1;
    h->fence = FENCE1;
    h->held_ms = 4210;
    h->phase_ms = 1830;
}

/* Requests, one per op (two for acquire and force-release). */
static void g_req_hello(ul_request *r)
{
    req_init(r, UL_OP_HELLO, 1);
    strcpy(r->client, "uvmleasectl 0.1.0");
}
static void g_req_ping(ul_request *r)
{
    req_init(r, UL_OP_PING, 2);
}
static void g_req_acquire(ul_request *r)
{
    req_init(r, UL_OP_ACQUIRE, 3);
    strcpy(r->uvm, UVM_A);
    r->confidential = true;
    r->timeout_ms = 30000;
    strcpy(r->label, "ctr-1");
}
static void g_req_acquire_forever(ul_request *r)
{
    req_init(r, UL_OP_ACQUIRE, 4);
    strcpy(r->uvm, "uvm-7@vm");
    r->confidential = false;
    r->timeout_ms = UL_TIMEOUT_FOREVER;
}
static void g_req_cancel(ul_request *r)
{
    req_init(r, UL_OP_CANCEL, 5);
    r->target_rid = 3;
}
static void g_req_release(ul_request *r)
{
    req_init(r, UL_OP_RELEASE, 6);
    r->lease = LEASE1;
}
static void g_req_phase(ul_request *r)
{
    req_init(r, UL_OP_PHASE, 7);
    r->lease = LEASE1;
    strcpy(r->phase, "cim-mount");
}
static void g_req_watch_child(ul_request *r)
{
    req_init(r, UL_OP_WATCH_CHILD, 8);
    r->lease = LEASE1;
    r->pid = 4242;
}
static void g_req_list(ul_request *r)
{
    req_init(r, UL_OP_LIST, 9);
    strcpy(r->after, "uvm-7@vm");
    r->limit = 100;
}
static void g_req_show(ul_request *r)
{
    req_init(r, UL_OP_SHOW, 10);
    strcpy(r->uvm, "uvm-7@vm");
}
static void g_req_watch(ul_request *r)
{
    req_init(r, UL_OP_WATCH, 11);
}
static void g_req_unwatch(ul_request *r)
{
    req_init(r, UL_OP_UNWATCH, 12);
}
static void g_req_stats(ul_request *r)
{
    req_init(r, UL_OP_STATS, 13);
}
static void g_req_drain(ul_request *r)
{
    req_init(r, UL_OP_DRAIN, 14);
    strcpy(r->uvm, "uvm-7@vm");
    strcpy(r->reason, "teardown");
}
static void g_req_undrain(ul_request *r)
{
    req_init(r, UL_OP_UNDRAIN, 15);
    strcpy(r->uvm, "uvm-7@vm");
}
static void g_req_force_revoke(ul_request *r)
{
    req_init(r, UL_OP_FORCE_RELEASE, 16);
    strcpy(r->uvm, "uvm-7@vm");
    r->mode = UL_FORCE_REVOKE;
    strcpy(r->reason, "wedged in guest-create");
}
static void g_req_force_kill(ul_request *r)
{
    req_init(r, UL_OP_FORCE_RELEASE, 17);
    strcpy(r->uvm, "uvm-7@vm");
    r->mode = UL_FORCE_KILL;
    r->pid = 4242;
    strcpy(r->reason, "hung");
}

/* Broker messages. */
static void g_rep_hello(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 1;
    r->op = UL_OP_HELLO;
    r->broker_pid = 812;
    strcpy(r->server, "uvmleased 0.1.0");
}
static void g_rep_ping(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 2;
    r->op = UL_OP_PING;
    r->broker_pid = 812;
    strcpy(r->server, "uvmleased 0.1.0");
}
static void g_rep_acquire_granted(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 3;
    r->op = UL_OP_ACQUIRE;
    r->lease = LEASE1;
    r->fence = FENCE1;
    strcpy(r->uvm, UVM_A);
}
static void g_rep_acquire_queued(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 4;
    r->op = UL_OP_ACQUIRE;
    r->queued = true;
    r->position = 2;
}
static void g_rep_acquire_busy(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 3;
    r->op = UL_OP_ACQUIRE;
    r->err = UVMLEASE_EBUSY;
    strcpy(r->detail, "held by pid 4242");
    r->has_holder = true;
    holder_fill(&r->holder, 4242, "containerd-shim", "ctr-0", "scratch-attach");
}
static void g_rep_version(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 1;
    r->op = UL_OP_HELLO;
    r->err = UVMLEASE_EVERSION;
    strcpy(r->detail, "supported: 1");
}
static void g_rep_unreadable(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->err = UVMLEASE_ETRUNCATED;
}
static void g_rep_not_an_object(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->err = UVMLEASE_EBADTYPE;
}
static void g_rep_bad_rid(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->op = UL_OP_PING;
    r->err = UVMLEASE_EBADVALUE;
}
static void g_rep_unknown_op(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 5;
    r->err = UVMLEASE_EUNKNOWNOP;
}
static void g_rep_field_error(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 10;
    r->op = UL_OP_SHOW;
    r->err = UVMLEASE_EBADUVM;
}
static void g_rep_release(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 6;
    r->op = UL_OP_RELEASE;
}
static void g_rep_cancel_released(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 5;
    r->op = UL_OP_CANCEL;
    r->lease = LEASE1;
}
static void g_rep_list(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 9;
    r->op = UL_OP_LIST;
    r->n_uvms = 2;
    r->uvms = calloc(2, sizeof *r->uvms);
    cr_assert_not_null(r->uvms);
    ul_uvm_info *a = &r->uvms[0], *b = &r->uvms[1];
    strcpy(a->uvm, "uvm-8@vm");
    a->confidential = true;
    a->waiter_count = 2;
    a->n_holders = 1;
    a->holders = calloc(1, sizeof *a->holders);
    cr_assert_not_null(a->holders);
    holder_fill(&a->holders[0], 4242, "containerd-shim", "ctr-0", "cim-mount");
    a->holders[0].overdue = true;
    strcpy(b->uvm, "uvm-9@vm");
    b->confidential = false;
    b->draining = true;
    b->quarantine_ms_left = 1500;
    b->n_holders = 2;
    b->holders = calloc(2, sizeof *b->holders);
    cr_assert_not_null(b->holders);
    holder_fill(&b->holders[0], 5001, "shim-a", "c1", "");
    /* Lease ids are unique across the broker, also in an example. */
    b->holders[0].lease = LEASE1 + 4;
    b->holders[0].fence = FENCE1 + 4;
    holder_fill(&b->holders[1], 5002, "shim-b", "c2", "guest-create");
    b->holders[1].lease = LEASE1 + 10;
    b->holders[1].fence = FENCE1 + 10;
    b->holders[1].child_pid = 5003;
    r->more = true;
}
static void g_rep_show(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 10;
    r->op = UL_OP_SHOW;
    r->n_uvms = 1;
    r->uvms = calloc(1, sizeof *r->uvms);
    cr_assert_not_null(r->uvms);
    ul_uvm_info *u = &r->uvms[0];
    strcpy(u->uvm, "uvm-7@vm");
    u->confidential = true;
    u->waiter_count = 2;
    u->n_holders = 1;
    u->holders = calloc(1, sizeof *u->holders);
    cr_assert_not_null(u->holders);
    holder_fill(&u->holders[0], 4242, "containerd-shim", "ctr-0", "scratch-attach");
    u->holders[0].n_phases = 2;
    strcpy(u->holders[0].phases[0].phase, "cim-mount");
    u->holders[0].phases[0].at_ms = AT1;
    strcpy(u->holders[0].phases[1].phase, "scratch-attach");
    u->holders[0].phases[1].at_ms = AT1 + 2380;
    u->n_waiters = 2;
    u->waiters = calloc(2, sizeof *u->waiters);
    cr_assert_not_null(u->waiters);
    u->waiters[0] = (ul_waiter_info){.pid = 4300, .uid = 0, .waited_ms = 3100, .timeout_ms = -1};
    strcpy(u->waiters[0].comm, "containerd-shim");
    strcpy(u->waiters[0].label, "ctr-1");
    u->waiters[1] =
        (ul_waiter_info){.pid = 4301, .uid = 1000, .waited_ms = 900, .timeout_ms = 5000};
    strcpy(u->waiters[1].comm, "uvmleasectl");
    strcpy(u->waiters[1].label, "");
    u->has_last_release = true;
    strcpy(u->last_reason, "holder-exit");
    u->last_pid = 4100;
    u->last_at_ms = AT1 - 60000;
}
static void g_rep_stats(ul_reply *r)
{
    rep_init(r, UL_MSG_REPLY);
    r->rid = 13;
    r->op = UL_OP_STATS;
    r->n_counters = 2;
    r->counters = calloc(2, sizeof *r->counters);
    cr_assert_not_null(r->counters);
    strcpy(r->counters[0].name, "grants_total");
    r->counters[0].value = 12;
    strcpy(r->counters[1].name, "releases_total");
    strcpy(r->counters[1].lkey, "reason");
    strcpy(r->counters[1].lval, "holder-exit");
    r->counters[1].value = 1;
    r->n_hists = 1;
    r->hists = calloc(1, sizeof *r->hists);
    cr_assert_not_null(r->hists);
    ul_histogram *h = &r->hists[0];
    strcpy(h->name, "wait_seconds");
    h->n_buckets = 3;
    h->le_us[0] = 1000;
    h->le_us[1] = 100000;
    h->le_us[2] = 10000000;
    h->counts[0] = 5;
    h->counts[1] = 4;
    h->counts[2] = 2;
    h->sum_us = 2345678;
    h->count = 12;
}
static void g_grant(ul_reply *r)
{
    rep_init(r, UL_MSG_GRANT);
    r->rid = 4;
    r->lease = LEASE1 + 1;
    r->fence = FENCE1 + 1;
    strcpy(r->uvm, "uvm-7@vm");
}
static void g_acquire_failed(ul_reply *r)
{
    rep_init(r, UL_MSG_ACQUIRE_FAILED);
    r->rid = 4;
    r->err = UVMLEASE_ETIMEDOUT;
    strcpy(r->detail, "waited 30000 ms");
    r->has_holder = true;
    holder_fill(&r->holder, 4242, "containerd-shim", "ctr-0", "guest-create");
}
static void g_acquire_failed_cancelled(ul_reply *r)
{
    rep_init(r, UL_MSG_ACQUIRE_FAILED);
    r->rid = 4;
    r->err = UVMLEASE_ECANCELLED;
}
static void g_revoked(ul_reply *r)
{
    rep_init(r, UL_MSG_REVOKED);
    r->lease = LEASE1;
    strcpy(r->uvm, "uvm-7@vm");
    strcpy(r->reason, "wedged in guest-create");
}
static void g_event_release(ul_reply *r)
{
    rep_init(r, UL_MSG_EVENT);
    ul_event *e = &r->event;
    e->type = UL_EV_RELEASE;
    e->at_ms = AT1;
    strcpy(e->uvm, "uvm-7@vm");
    e->pid = 4242;
    strcpy(e->label, "ctr-0");
    strcpy(e->reason, "holder-exit");
    e->lease = LEASE1;
    e->fence = FENCE1;
    e->duration_ms = 4210;
}
static void g_event_drain(ul_reply *r)
{
    rep_init(r, UL_MSG_EVENT);
    r->event.type = UL_EV_DRAIN;
    r->event.at_ms = AT1;
    strcpy(r->event.uvm, "uvm-7@vm");
}

typedef struct golden_def {
    const char *name;
    void (*req)(ul_request *);
    void (*rep)(ul_reply *);
} golden_def;

static const golden_def s_golden[] = {
    {"hello-request", g_req_hello, NULL},
    {"ping-request", g_req_ping, NULL},
    {"acquire-request", g_req_acquire, NULL},
    {"acquire-forever-request", g_req_acquire_forever, NULL},
    {"cancel-request", g_req_cancel, NULL},
    {"release-request", g_req_release, NULL},
    {"phase-request", g_req_phase, NULL},
    {"watch-child-request", g_req_watch_child, NULL},
    {"list-request", g_req_list, NULL},
    {"show-request", g_req_show, NULL},
    {"watch-request", g_req_watch, NULL},
    {"unwatch-request", g_req_unwatch, NULL},
    {"stats-request", g_req_stats, NULL},
    {"drain-request", g_req_drain, NULL},
    {"undrain-request", g_req_undrain, NULL},
    {"force-release-revoke-request", g_req_force_revoke, NULL},
    {"force-release-kill-request", g_req_force_kill, NULL},
    {"hello-reply", NULL, g_rep_hello},
    {"ping-reply", NULL, g_rep_ping},
    {"acquire-granted-reply", NULL, g_rep_acquire_granted},
    {"acquire-queued-reply", NULL, g_rep_acquire_queued},
    {"acquire-busy-reply", NULL, g_rep_acquire_busy},
    {"version-error-reply", NULL, g_rep_version},
    {"unreadable-error-reply", NULL, g_rep_unreadable},
    {"not-an-object-error-reply", NULL, g_rep_not_an_object},
    {"bad-rid-error-reply", NULL, g_rep_bad_rid},
    {"unknown-op-error-reply", NULL, g_rep_unknown_op},
    {"field-error-reply", NULL, g_rep_field_error},
    {"release-reply", NULL, g_rep_release},
    {"cancel-released-reply", NULL, g_rep_cancel_released},
    {"list-reply", NULL, g_rep_list},
    {"show-reply", NULL, g_rep_show},
    {"stats-reply", NULL, g_rep_stats},
    {"grant", NULL, g_grant},
    {"acquire-failed", NULL, g_acquire_failed},
    {"acquire-failed-cancelled", NULL, g_acquire_failed_cancelled},
    {"revoked", NULL, g_revoked},
    {"event-release", NULL, g_event_release},
    {"event-drain", NULL, g_event_drain},
};
#define N_GOLDEN (sizeof s_golden / sizeof s_golden[0])

/* ---------------------------------------------------- deep comparisons */

static void expect_req_eq(const ul_request *a, const ul_request *b, const char *ctx)
{
    cr_expect_eq(a->version, b->version, "%s: version", ctx);
    cr_expect_eq(a->op, b->op, "%s: op", ctx);
    cr_expect_eq(a->rid, b->rid, "%s: rid", ctx);
    cr_expect_str_eq(a->uvm, b->uvm, "%s: uvm", ctx);
    cr_expect_eq(a->confidential, b->confidential, "%s: conf", ctx);
    cr_expect_eq(a->timeout_ms, b->timeout_ms, "%s: timeout_ms", ctx);
    cr_expect_str_eq(a->label, b->label, "%s: label", ctx);
    cr_expect_eq(a->target_rid, b->target_rid, "%s: target", ctx);
    cr_expect_eq(a->lease, b->lease, "%s: lease", ctx);
    cr_expect_str_eq(a->phase, b->phase, "%s: phase", ctx);
    cr_expect_eq(a->pid, b->pid, "%s: pid", ctx);
    cr_expect_eq(a->mode, b->mode, "%s: mode", ctx);
    cr_expect_str_eq(a->reason, b->reason, "%s: reason", ctx);
    cr_expect_str_eq(a->after, b->after, "%s: after", ctx);
    cr_expect_eq(a->limit, b->limit, "%s: limit", ctx);
    cr_expect_str_eq(a->client, b->client, "%s: client", ctx);
}

static void expect_holder_eq(const ul_holder *a, const ul_holder *b, const char *ctx)
{
    cr_expect_eq(a->pid, b->pid, "%s: holder pid", ctx);
    cr_expect_eq(a->uid, b->uid, "%s: holder uid", ctx);
    cr_expect_eq(a->child_pid, b->child_pid, "%s: holder child_pid", ctx);
    cr_expect_str_eq(a->comm, b->comm, "%s: holder comm", ctx);
    cr_expect_str_eq(a->label, b->label, "%s: holder label", ctx);
    cr_expect_str_eq(a->phase, b->phase, "%s: holder phase", ctx);
    cr_expect_eq(a->lease, b->lease, "%s: holder lease", ctx);
    cr_expect_eq(a->fence, b->fence, "%s: holder fence", ctx);
    cr_expect_eq(a->held_ms, b->held_ms, "%s: holder held_ms", ctx);
    cr_expect_eq(a->phase_ms, b->phase_ms, "%s: holder phase_ms", ctx);
    cr_expect_eq(a->overdue, b->overdue, "%s: holder overdue", ctx);
    cr_expect_eq(a->n_phases, b->n_phases, "%s: holder n_phases", ctx);
    for (uint32_t i = 0; i < a->n_phases && i < b->n_phases && i < UL_PHASES_MAX; i++) {
        cr_expect_str_eq(a->phases[i].phase, b->phases[i].phase, "%s: phase %u", ctx, i);
        cr_expect_eq(a->phases[i].at_ms, b->phases[i].at_ms, "%s: phase at %u", ctx, i);
    }
}

static void expect_info_eq(const ul_uvm_info *a, const ul_uvm_info *b, const char *ctx)
{
    cr_expect_str_eq(a->uvm, b->uvm, "%s: info uvm", ctx);
    cr_expect_eq(a->confidential, b->confidential, "%s: info class", ctx);
    cr_expect_eq(a->draining, b->draining, "%s: info draining", ctx);
    cr_expect_eq(a->quarantine_ms_left, b->quarantine_ms_left, "%s: info quarantine", ctx);
    cr_expect_eq(a->waiter_count, b->waiter_count, "%s: info waiter_count", ctx);
    cr_expect_eq(a->n_holders, b->n_holders, "%s: info n_holders", ctx);
    for (uint32_t i = 0; i < a->n_holders && i < b->n_holders; i++)
        expect_holder_eq(&a->holders[i], &b->holders[i], ctx);
    cr_expect_eq(a->n_waiters, b->n_waiters, "%s: info n_waiters", ctx);
    for (uint32_t i = 0; i < a->n_waiters && i < b->n_waiters; i++) {
        const ul_waiter_info *x = &a->waiters[i], *y = &b->waiters[i];
        cr_expect_eq(x->pid, y->pid, "%s: waiter pid", ctx);
        cr_expect_eq(x->uid, y->uid, "%s: waiter uid", ctx);
        cr_expect_str_eq(x->comm, y->comm, "%s: waiter comm", ctx);
        cr_expect_str_eq(x->label, y->label, "%s: waiter label", ctx);
        cr_expect_eq(x->waited_ms, y->waited_ms, "%s: waiter waited_ms", ctx);
        cr_expect_eq(x->timeout_ms, y->timeout_ms, "%s: waiter timeout_ms", ctx);
    }
    cr_expect_eq(a->has_last_release, b->has_last_release, "%s: has_last_release", ctx);
    cr_expect_str_eq(a->last_reason, b->last_reason, "%s: last reason", ctx);
    cr_expect_eq(a->last_pid, b->last_pid, "%s: last pid", ctx);
    cr_expect_eq(a->last_at_ms, b->last_at_ms, "%s: last at", ctx);
}

static void expect_rep_eq(const ul_reply *a, const ul_reply *b, const char *ctx)
{
    cr_expect_eq(a->kind, b->kind, "%s: kind", ctx);
    cr_expect_eq(a->version, b->version, "%s: version", ctx);
    cr_expect_eq(a->instance, b->instance, "%s: bi", ctx);
    cr_expect_eq(a->rid, b->rid, "%s: rid", ctx);
    cr_expect_eq(a->op, b->op, "%s: op", ctx);
    cr_expect_eq(a->err, b->err, "%s: err", ctx);
    cr_expect_str_eq(a->detail, b->detail, "%s: detail", ctx);
    cr_expect_eq(a->has_holder, b->has_holder, "%s: has_holder", ctx);
    if (a->has_holder && b->has_holder)
        expect_holder_eq(&a->holder, &b->holder, ctx);
    cr_expect_eq(a->queued, b->queued, "%s: queued", ctx);
    cr_expect_eq(a->position, b->position, "%s: position", ctx);
    cr_expect_eq(a->lease, b->lease, "%s: lease", ctx);
    cr_expect_eq(a->fence, b->fence, "%s: fence", ctx);
    cr_expect_str_eq(a->uvm, b->uvm, "%s: uvm", ctx);
    cr_expect_str_eq(a->reason, b->reason, "%s: reason", ctx);
    cr_expect_eq(a->broker_pid, b->broker_pid, "%s: broker pid", ctx);
    cr_expect_str_eq(a->server, b->server, "%s: server", ctx);
    cr_expect_eq(a->more, b->more, "%s: more", ctx);
    cr_expect_eq(a->n_uvms, b->n_uvms, "%s: n_uvms", ctx);
    for (uint32_t i = 0; i < a->n_uvms && i < b->n_uvms; i++)
        expect_info_eq(&a->uvms[i], &b->uvms[i], ctx);
    cr_expect_eq(a->n_counters, b->n_counters, "%s: n_counters", ctx);
    for (uint32_t i = 0; i < a->n_counters && i < b->n_counters; i++) {
        cr_expect_str_eq(a->counters[i].name, b->counters[i].name, "%s: counter name", ctx);
        cr_expect_str_eq(a->counters[i].lkey, b->counters[i].lkey, "%s: counter lkey", ctx);
        cr_expect_str_eq(a->counters[i].lval, b->counters[i].lval, "%s: counter lval", ctx);
        cr_expect_eq(a->counters[i].value, b->counters[i].value, "%s: counter value", ctx);
    }
    cr_expect_eq(a->n_hists, b->n_hists, "%s: n_hists", ctx);
    for (uint32_t i = 0; i < a->n_hists && i < b->n_hists; i++) {
        const ul_histogram *x = &a->hists[i], *y = &b->hists[i];
        cr_expect_str_eq(x->name, y->name, "%s: hist name", ctx);
        cr_expect_str_eq(x->lkey, y->lkey, "%s: hist lkey", ctx);
        cr_expect_str_eq(x->lval, y->lval, "%s: hist lval", ctx);
        cr_expect_eq(x->n_buckets, y->n_buckets, "%s: hist buckets", ctx);
        for (uint32_t k = 0; k < x->n_buckets && k < y->n_buckets && k < UL_HIST_BUCKETS; k++) {
            cr_expect_eq(x->le_us[k], y->le_us[k], "%s: hist le %u", ctx, k);
            cr_expect_eq(x->counts[k], y->counts[k], "%s: hist count %u", ctx, k);
        }
        cr_expect_eq(x->sum_us, y->sum_us, "%s: hist sum", ctx);
        cr_expect_eq(x->count, y->count, "%s: hist count", ctx);
    }
    const ul_event *x = &a->event, *y = &b->event;
    cr_expect_eq(x->type, y->type, "%s: event type", ctx);
    cr_expect_eq(x->at_ms, y->at_ms, "%s: event at", ctx);
    cr_expect_str_eq(x->uvm, y->uvm, "%s: event uvm", ctx);
    cr_expect_eq(x->pid, y->pid, "%s: event pid", ctx);
    cr_expect_str_eq(x->label, y->label, "%s: event label", ctx);
    cr_expect_str_eq(x->phase, y->phase, "%s: event phase", ctx);
    cr_expect_str_eq(x->reason, y->reason, "%s: event reason", ctx);
    cr_expect_eq(x->lease, y->lease, "%s: event lease", ctx);
    cr_expect_eq(x->fence, y->fence, "%s: event fence", ctx);
    cr_expect_eq(x->duration_ms, y->duration_ms, "%s: event duration", ctx);
}

/* ------------------------------------------------ PROTOCOL.md parsing */

static void expect_bytes_eq(const ul_buf *b, const unsigned char *want, size_t len,
                            const char *what, const char *name)
{
    cr_expect_eq(b->len, len, "%s %s: %zu bytes, want %zu", name, what, b->len, len);
    if (b->len != len)
        return;
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)b->data[i] != want[i]) {
            cr_expect_fail("%s %s: byte %zu is %02x, want %02x", name, what, i,
                           (unsigned char)b->data[i], want[i]);
            return;
        }
    }
}

Test(codec, golden_vectors_both_directions)
{
    char *text = ut_protocol_md();
    ut_golden vec[N_GOLDEN + 16];
    size_t nv = ut_golden_parse(text, vec, sizeof vec / sizeof vec[0]);
    cr_assert_eq(nv, N_GOLDEN, "PROTOCOL.md has %zu golden vectors, the test knows %zu", nv,
                 N_GOLDEN);

    for (size_t g = 0; g < N_GOLDEN; g++) {
        const golden_def *def = &s_golden[g];
        const ut_golden *v = NULL;
        for (size_t i = 0; i < nv; i++)
            if (strcmp(vec[i].name, def->name) == 0)
                v = &vec[i];
        cr_assert_not_null(v, "golden vector %s missing from PROTOCOL.md", def->name);
        ul_buf fresh = {0}, again = {0};
        if (def->req) {
            cr_assert_str_eq(v->kind, "request", "%s", def->name);
            ul_request want, got;
            def->req(&want);
            cr_assert_eq(ul_request_encode(&want, &fresh), 0, "%s: encode", def->name);
            expect_bytes_eq(&fresh, v->bytes, v->len, "encoded from the struct", def->name);
            int rc = ul_request_decode(v->bytes, v->len, &got);
            cr_assert_eq(rc, 0, "%s: decode: %s", def->name, ul_status_name(rc));
            expect_req_eq(&got, &want, def->name);
            cr_assert_eq(ul_request_encode(&got, &again), 0);
            expect_bytes_eq(&again, v->bytes, v->len, "re-encoded", def->name);
        } else {
            ul_reply want, got;
            def->rep(&want);
            /* Replies answer a request; the other kinds come unasked. */
            cr_assert_str_eq(v->kind, want.kind == UL_MSG_REPLY ? "reply" : "unasked", "%s",
                             def->name);
            cr_assert_eq(ul_reply_encode(&want, &fresh), 0, "%s: encode", def->name);
            expect_bytes_eq(&fresh, v->bytes, v->len, "encoded from the struct", def->name);
            int rc = ul_reply_decode(v->bytes, v->len, &got);
            cr_assert_eq(rc, 0, "%s: decode: %s", def->name, ul_status_name(rc));
            expect_rep_eq(&got, &want, def->name);
            cr_assert_eq(ul_reply_encode(&got, &again), 0);
            expect_bytes_eq(&again, v->bytes, v->len, "re-encoded", def->name);
            ul_reply_free(&got);
            ul_reply_free(&want);
        }
        ul_buf_free(&fresh);
        ul_buf_free(&again);
    }
    ut_golden_free(vec, nv);
    free(text);
}

/*
 * Independent of the document and of the encoder: bytes written out by
 * hand from the msgpack specification.
 */
Test(codec, hand_checked_bytes)
{
    /* {"v":1,"op":"ping","rid":2}: fixmap 3, fixstr keys, fixint values. */
    static const unsigned char ping[] = {0x83, 0xa1, 'v', 0x01, 0xa2, 'o', 'p', 0xa4, 'p',
                                         'i',  'n',  'g', 0xa3, 'r',  'i', 'd', 0x02};
    ul_request r;
    ul_buf b = {0};
    g_req_ping(&r);
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    expect_bytes_eq(&b, ping, sizeof ping, "ping", "hand");

    /* acquire: the 67-byte ID needs str8 (d9 43), timeout 30000 is uint16
     * (cd 75 30), true is c3. */
    b.len = 0;
    g_req_acquire(&r);
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    const unsigned char *p = (const unsigned char *)b.data;
    cr_assert_eq(p[0], 0x87, "7 keys: v op rid uvm conf timeout_ms label");
    const unsigned char uvm_hdr[] = {0xa3, 'u', 'v', 'm', 0xd9, 0x43};
    cr_assert(memmem(p, b.len, uvm_hdr, sizeof uvm_hdr), "uvm as str8");
    const unsigned char conf[] = {0xa4, 'c', 'o', 'n', 'f', 0xc3};
    cr_assert(memmem(p, b.len, conf, sizeof conf));
    const unsigned char tmo[] = {0xaa, 't', 'i', 'm', 'e',  'o',  'u',
                                 't',  '_', 'm', 's', 0xcd, 0x75, 0x30};
    cr_assert(memmem(p, b.len, tmo, sizeof tmo));

    /* timeout -1 is the negative fixint ff. */
    b.len = 0;
    g_req_acquire_forever(&r);
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    const unsigned char forever[] = {'t', 'i', 'm', 'e', 'o', 'u', 't', '_', 'm', 's', 0xff};
    cr_assert(memmem(b.data, b.len, forever, sizeof forever));

    /* A lease id above 2^32 is uint64 (cf + 8 bytes big-endian). */
    b.len = 0;
    g_req_release(&r);
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    unsigned char lease[15] = {0xa5, 'l', 'e', 'a', 's', 'e', 0xcf};
    for (int i = 0; i < 8; i++)
        lease[7 + i] = (unsigned char)(LEASE1 >> (56 - 8 * i));
    cr_assert(memmem(b.data, b.len, lease, sizeof lease));
    ul_buf_free(&b);

    /* Broker messages start with v, bi, kind. */
    ul_reply rep;
    g_grant(&rep);
    cr_assert_eq(ul_reply_encode(&rep, &b), 0);
    p = (const unsigned char *)b.data;
    const unsigned char head[] = {0x87, 0xa1, 'v',  0x01, 0xa2, 'b',  'i',  0xcf, 0x1c,
                                  0x9e, 0x2f, 0x4a, 0x7b, 0x3d, 0x5e, 0x61, 0xa4, 'k',
                                  'i',  'n',  'd',  0xa5, 'g',  'r',  'a',  'n',  't'};
    cr_assert_geq(b.len, sizeof head);
    cr_assert_eq(memcmp(p, head, sizeof head), 0);
    ul_buf_free(&b);
}

/* ------------------------------------------------------ crafted input */

typedef enum vt { V_UINT, V_NEG, V_STR, V_BOOL, V_NIL, V_FLOAT, V_ARR, V_MAP, V_BIN } vt;
typedef struct kv {
    const char *key;
    vt t;
    uint64_t u; /* V_UINT, V_BOOL; V_NEG: magnitude */
    const char *s;
    size_t slen; /* V_STR / V_BIN; 0 means strlen(s) */
} kv;

#define KU(k, v)                                                                                   \
    {                                                                                              \
        k, V_UINT, v, NULL, 0                                                                      \
    }
#define KS(k, v)                                                                                   \
    {                                                                                              \
        k, V_STR, 0, v, 0                                                                          \
    }
#define KB(k, v)                                                                                   \
    {                                                                                              \
        k, V_BOOL, v, NULL, 0                                                                      \
    }
#define KN(k, v)                                                                                   \
    {                                                                                              \
        k, V_NEG, v, NULL, 0                                                                       \
    }

/* Pack a map of kvs into out; returns its length. */
static size_t pack_kvs(const kv *kvs, size_t n, unsigned char *out, size_t outsz)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_str_with_body(&pk, kvs[i].key, strlen(kvs[i].key));
        size_t sl = kvs[i].s ? (kvs[i].slen ? kvs[i].slen : strlen(kvs[i].s)) : 0;
        switch (kvs[i].t) {
        case V_UINT:
            msgpack_pack_uint64(&pk, kvs[i].u);
            break;
        case V_NEG:
            msgpack_pack_int64(&pk, -(int64_t)kvs[i].u);
            break;
        case V_STR:
            msgpack_pack_str_with_body(&pk, kvs[i].s, sl);
            break;
        case V_BIN:
            msgpack_pack_bin_with_body(&pk, kvs[i].s, sl);
            break;
        case V_BOOL:
            kvs[i].u ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
            break;
        case V_NIL:
            msgpack_pack_nil(&pk);
            break;
        case V_FLOAT:
            msgpack_pack_double(&pk, 1.5);
            break;
        case V_ARR:
            msgpack_pack_array(&pk, 0);
            break;
        case V_MAP:
            msgpack_pack_map(&pk, 0);
            break;
        }
    }
    cr_assert_leq(sb.size, outsz);
    memcpy(out, sb.data, sb.size);
    size_t len = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return len;
}

static int decode_kvs(const kv *kvs, size_t n, ul_request *out)
{
    unsigned char buf[8192];
    size_t len = pack_kvs(kvs, n, buf, sizeof buf);
    return ul_request_decode(buf, len, out);
}

/* A valid request per op, and which of its fields are required. */
typedef struct op_case {
    const char *name;
    kv kvs[8];
    size_t n;
    unsigned required; /* bit i: kvs[i] is required */
} op_case;

static const op_case s_ops[] = {
    {"hello", {KU("v", 1), KS("op", "hello"), KU("rid", 1), KS("client", "x")}, 4, 0x7},
    {"ping", {KU("v", 1), KS("op", "ping"), KU("rid", 1)}, 3, 0x7},
    {"acquire",
     {KU("v", 1), KS("op", "acquire"), KU("rid", 1), KS("uvm", "u@vm"), KB("conf", 1),
      KU("timeout_ms", 0), KS("label", "l")},
     7,
     0x3f},
    {"cancel", {KU("v", 1), KS("op", "cancel"), KU("rid", 2), KU("target", 1)}, 4, 0xf},
    {"release", {KU("v", 1), KS("op", "release"), KU("rid", 1), KU("lease", 9)}, 4, 0xf},
    {"phase",
     {KU("v", 1), KS("op", "phase"), KU("rid", 1), KU("lease", 9), KS("phase", "p")},
     5,
     0x1f},
    {"watch-child",
     {KU("v", 1), KS("op", "watch-child"), KU("rid", 1), KU("lease", 9), KU("pid", 77)},
     5,
     0x1f},
    {"list",
     {KU("v", 1), KS("op", "list"), KU("rid", 1), KS("after", "a@vm"), KU("limit", 5)},
     5,
     0x7},
    {"show", {KU("v", 1), KS("op", "show"), KU("rid", 1), KS("uvm", "u@vm")}, 4, 0xf},
    {"watch", {KU("v", 1), KS("op", "watch"), KU("rid", 1)}, 3, 0x7},
    {"unwatch", {KU("v", 1), KS("op", "unwatch"), KU("rid", 1)}, 3, 0x7},
    {"stats", {KU("v", 1), KS("op", "stats"), KU("rid", 1)}, 3, 0x7},
    {"drain",
     {KU("v", 1), KS("op", "drain"), KU("rid", 1), KS("uvm", "u@vm"), KS("reason", "r")},
     5,
     0xf},
    {"undrain", {KU("v", 1), KS("op", "undrain"), KU("rid", 1), KS("uvm", "u@vm")}, 4, 0xf},
    {"force-release",
     {KU("v", 1), KS("op", "force-release"), KU("rid", 1), KS("uvm", "u@vm"), KS("mode", "kill"),
      KU("pid", 5), KS("reason", "r")},
     7,
     0x5f},
};

Test(codec, valid_requests_decode)
{
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++) {
        ul_request r;
        int rc = decode_kvs(s_ops[i].kvs, s_ops[i].n, &r);
        cr_expect_eq(rc, 0, "%s: %s", s_ops[i].name, ul_status_name(rc));
        cr_expect_str_eq(ul_op_name(r.op), s_ops[i].name);
    }
}

Test(codec, missing_required_fields)
{
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++) {
        const op_case *c = &s_ops[i];
        for (size_t drop = 0; drop < c->n; drop++) {
            kv kvs[8];
            size_t n = 0;
            for (size_t k = 0; k < c->n; k++)
                if (k != drop)
                    kvs[n++] = c->kvs[k];
            ul_request r;
            int rc = decode_kvs(kvs, n, &r);
            int want = (c->required >> drop & 1) ? UVMLEASE_EMISSING : 0;
            cr_expect_eq(rc, want, "%s without %s: got %s, want %s", c->name, c->kvs[drop].key,
                         ul_status_name(rc), ul_status_name(want));
        }
    }
}

Test(codec, wrong_field_types)
{
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++) {
        const op_case *c = &s_ops[i];
        for (size_t bad = 0; bad < c->n; bad++) {
            static const vt wrong[] = {V_STR, V_UINT, V_BOOL, V_NIL, V_FLOAT, V_ARR, V_MAP, V_BIN};
            for (size_t w = 0; w < sizeof wrong / sizeof wrong[0]; w++) {
                if (wrong[w] == c->kvs[bad].t)
                    continue;
                kv kvs[8];
                memcpy(kvs, c->kvs, sizeof kvs);
                kvs[bad].t = wrong[w];
                kvs[bad].s = "x";
                kvs[bad].u = 1;
                ul_request r;
                int rc = decode_kvs(kvs, c->n, &r);
                /* The version field answers "version" for any other number. */
                int want = UVMLEASE_EBADTYPE;
                cr_expect_eq(rc, want, "%s with %s of type %d: got %s", c->name, kvs[bad].key,
                             (int)wrong[w], ul_status_name(rc));
            }
        }
    }
}

Test(codec, unknown_op_keeps_rid)
{
    kv kvs[] = {KU("v", 1), KS("op", "frobnicate"), KU("rid", 77)};
    ul_request r;
    cr_assert_eq(decode_kvs(kvs, 3, &r), UVMLEASE_EUNKNOWNOP);
    cr_assert_eq(r.rid, 77);
    cr_assert_eq(r.op, UL_OP_NONE);
    /* Case matters, and a prefix is not a name. */
    kv kvs2[] = {KU("v", 1), KS("op", "PING"), KU("rid", 1)};
    cr_assert_eq(decode_kvs(kvs2, 3, &r), UVMLEASE_EUNKNOWNOP);
    kv kvs3[] = {KU("v", 1), KS("op", "pin"), KU("rid", 1)};
    cr_assert_eq(decode_kvs(kvs3, 3, &r), UVMLEASE_EUNKNOWNOP);
    kv kvs4[] = {KU("v", 1), KS("op", ""), KU("rid", 1)};
    cr_assert_eq(decode_kvs(kvs4, 3, &r), UVMLEASE_EUNKNOWNOP);
}

Test(codec, version_rules)
{
    ul_request r;
    kv v2[] = {KU("v", 2), KS("op", "ping"), KU("rid", 5)};
    cr_assert_eq(decode_kvs(v2, 3, &r), UVMLEASE_EVERSION);
    cr_assert_eq(r.rid, 5, "a version error still names the request");
    cr_assert_eq(r.op, UL_OP_PING);
    kv v0[] = {KU("v", 0), KS("op", "ping"), KU("rid", 5)};
    cr_assert_eq(decode_kvs(v0, 3, &r), UVMLEASE_EVERSION);
    kv vneg[] = {KN("v", 1), KS("op", "ping"), KU("rid", 5)};
    cr_assert_eq(decode_kvs(vneg, 3, &r), UVMLEASE_EVERSION);
    /* A future version may have ops this one does not know: the version
     * decides first. */
    kv v9[] = {KU("v", 9), KS("op", "teleport"), KU("rid", 5)};
    cr_assert_eq(decode_kvs(v9, 3, &r), UVMLEASE_EVERSION);
    kv none[] = {KS("op", "ping"), KU("rid", 5)};
    cr_assert_eq(decode_kvs(none, 2, &r), UVMLEASE_EMISSING);
    kv vstr[] = {KS("v", "1"), KS("op", "ping"), KU("rid", 5)};
    cr_assert_eq(decode_kvs(vstr, 3, &r), UVMLEASE_EBADTYPE);
}

Test(codec, duplicate_keys_rejected)
{
    ul_request r;
    kv dup_rid[] = {KU("v", 1), KS("op", "ping"), KU("rid", 5), KU("rid", 6)};
    cr_assert_eq(decode_kvs(dup_rid, 4, &r), UVMLEASE_EMALFORMED);
    cr_assert_eq(r.rid, 0, "which rid? neither");
    kv dup_uvm[] = {KU("v", 1), KS("op", "show"), KU("rid", 5), KS("uvm", "a@vm"),
                    KS("uvm", "b@vm")};
    cr_assert_eq(decode_kvs(dup_uvm, 5, &r), UVMLEASE_EMALFORMED);
    kv dup_unknown[] = {KU("v", 1), KS("op", "ping"), KU("rid", 5), KU("x", 1), KU("x", 2)};
    cr_assert_eq(decode_kvs(dup_unknown, 5, &r), UVMLEASE_EMALFORMED);
    /* Empty keys are keys too (msgpack-c hands them out as NULL pointers). */
    const unsigned char dup_empty[] = {0x85, 0xa1, 'v',  0x01, 0xa2, 'o',  'p',
                                       0xa4, 'p',  'i',  'n',  'g',  0xa3, 'r',
                                       'i',  'd',  0x05, 0xa0, 0x01, 0xa0, 0x02};
    cr_assert_eq(ul_request_decode(dup_empty, sizeof dup_empty, &r), UVMLEASE_EMALFORMED);
    cr_assert_eq(ul_request_decode(dup_empty, sizeof dup_empty - 2, &r), UVMLEASE_ETRUNCATED);
}

Test(codec, unknown_keys_ignored)
{
    ul_request r;
    kv kvs[] = {KU("v", 1),
                KS("op", "show"),
                KU("rid", 5),
                KS("uvm", "a@vm"),
                KS("future", "x"),
                {"more", V_ARR, 0, NULL, 0},
                {"m", V_MAP, 0, NULL, 0},
                KS("label", "\x01 not checked: not a show field")};
    cr_assert_eq(decode_kvs(kvs, 8, &r), 0);
    cr_assert_str_eq(r.uvm, "a@vm");
    cr_assert_str_eq(r.label, "", "fields of other ops are not read");
}

Test(codec, top_level_and_key_types)
{
    ul_request r;
    const unsigned char arr[] = {0x93, 0x01, 0x02, 0x03};
    cr_assert_eq(ul_request_decode(arr, sizeof arr, &r), UVMLEASE_EBADTYPE);
    const unsigned char scalar[] = {0x05};
    cr_assert_eq(ul_request_decode(scalar, sizeof scalar, &r), UVMLEASE_EBADTYPE);
    /* {"v":1, "op":"ping", "rid":3, 7:1}: an integer key. */
    const unsigned char intkey[] = {0x84, 0xa1, 'v',  0x01, 0xa2, 'o', 'p',  0xa4, 'p', 'i',
                                    'n',  'g',  0xa3, 'r',  'i',  'd', 0x03, 0x07, 0x01};
    cr_assert_eq(ul_request_decode(intkey, sizeof intkey, &r), UVMLEASE_EBADTYPE);
    /* Not an object (section 3, step 5): nothing of it names the request. */
    cr_assert_eq(r.rid, 0);
    cr_assert_eq(r.op, UL_OP_NONE);
}

/* One key rule for every map at any depth (PROTOCOL.md sections 2 and 3),
 * also under keys the receiver does not know. */
Test(codec, every_map_is_an_object)
{
    ul_request r;
    /* {"v":1,"op":"ping","rid":3,"x":{...}} */
#define PING3_X                                                                                    \
    0x84, 0xa1, 'v', 0x01, 0xa2, 'o', 'p', 0xa4, 'p', 'i', 'n', 'g', 0xa3, 'r', 'i', 'd', 0x03,    \
        0xa1, 'x'
    const unsigned char ok[] = {PING3_X, 0x81, 0xa1, 'a', 0x01};
    cr_assert_eq(ul_request_decode(ok, sizeof ok, &r), 0);
    const unsigned char intkey[] = {PING3_X, 0x81, 0x07, 0x01};
    cr_assert_eq(ul_request_decode(intkey, sizeof intkey, &r), UVMLEASE_EBADTYPE);
    cr_assert_eq(r.rid, 0, "a broken object names nothing");
    cr_assert_eq(r.op, UL_OP_NONE);
    const unsigned char dup[] = {PING3_X, 0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02};
    cr_assert_eq(ul_request_decode(dup, sizeof dup, &r), UVMLEASE_EMALFORMED);
    cr_assert_eq(r.rid, 0);
    /* The first broken map decides: the top level before a nested one. */
    const unsigned char both[] = {0x85, 0xa1, 'v',  0x01, 0xa1, 'x',  0x81, 0xa1, 'a',  0x01,
                                  0xa1, 'x',  0x81, 0x07, 0x01, 0xa2, 'o',  'p',  0xa4, 'p',
                                  'i',  'n',  'g',  0xa3, 'r',  'i',  'd',  0x03};
    cr_assert_eq(ul_request_decode(both, sizeof both, &r), UVMLEASE_EMALFORMED);
#undef PING3_X

    /* Broker messages: a release reply with an unknown "x" holding
     * [{...}] (maps inside arrays count too). */
    ul_reply rep;
#define REL_X                                                                                      \
    0x87, 0xa1, 'v', 0x01, 0xa2, 'b', 'i', 0x07, 0xa4, 'k', 'i', 'n', 'd', 0xa5, 'r', 'e', 'p',    \
        'l', 'y', 0xa3, 'r', 'i', 'd', 0x01, 0xa2, 'o', 'p', 0xa7, 'r', 'e', 'l', 'e', 'a', 's',   \
        'e', 0xa3, 'e', 'r', 'r', 0x00, 0xa1, 'x', 0x91
    const unsigned char rok[] = {REL_X, 0x81, 0xa1, 'a', 0x01};
    cr_assert_eq(ul_reply_decode(rok, sizeof rok, &rep), 0);
    ul_reply_free(&rep);
    const unsigned char rint[] = {REL_X, 0x81, 0x07, 0x01};
    cr_assert_eq(ul_reply_decode(rint, sizeof rint, &rep), UVMLEASE_EBADTYPE);
    const unsigned char rdup[] = {REL_X, 0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02};
    cr_assert_eq(ul_reply_decode(rdup, sizeof rdup, &rep), UVMLEASE_EMALFORMED);
#undef REL_X
}

/* Which of rid and op an error reply can name, check by check
 * (PROTOCOL.md section 3, "What an error reply carries"). */
Test(codec, refusals_name_what_could_be_read)
{
    static const struct {
        const char *what;
        kv kvs[4];
        size_t n;
        int err;
        uint64_t rid;
        ul_op op;
    } cases[] = {
        {"version",
         {KU("v", 2), KS("op", "ping"), KU("rid", 5)},
         3,
         UVMLEASE_EVERSION,
         5,
         UL_OP_PING},
        {"no v", {KS("op", "ping"), KU("rid", 5)}, 2, UVMLEASE_EMISSING, 5, UL_OP_PING},
        {"rid 0",
         {KU("v", 1), KS("op", "ping"), KU("rid", 0)},
         3,
         UVMLEASE_EBADVALUE,
         0,
         UL_OP_PING},
        {"rid negative",
         {KU("v", 1), KS("op", "ping"), KN("rid", 4)},
         3,
         UVMLEASE_EBADVALUE,
         0,
         UL_OP_PING},
        {"rid a string",
         {KU("v", 1), KS("op", "ping"), KS("rid", "5")},
         3,
         UVMLEASE_EBADTYPE,
         0,
         UL_OP_PING},
        {"no rid", {KU("v", 1), KS("op", "ping")}, 2, UVMLEASE_EMISSING, 0, UL_OP_PING},
        {"unknown op",
         {KU("v", 1), KS("op", "nope"), KU("rid", 5)},
         3,
         UVMLEASE_EUNKNOWNOP,
         5,
         UL_OP_NONE},
        {"op not a string",
         {KU("v", 1), KU("op", 1), KU("rid", 5)},
         3,
         UVMLEASE_EBADTYPE,
         5,
         UL_OP_NONE},
        {"field",
         {KU("v", 1), KS("op", "show"), KU("rid", 5), KS("uvm", "a b")},
         4,
         UVMLEASE_EBADUVM,
         5,
         UL_OP_SHOW},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ul_request r;
        int rc = decode_kvs(cases[i].kvs, cases[i].n, &r);
        cr_expect_eq(rc, cases[i].err, "%s: %s", cases[i].what, ul_status_name(rc));
        cr_expect_eq(r.rid, cases[i].rid, "%s: rid %llu", cases[i].what, (unsigned long long)r.rid);
        cr_expect_eq(r.op, cases[i].op, "%s: op %d", cases[i].what, (int)r.op);
    }
}

Test(codec, value_ranges)
{
    ul_request r;
    kv rid0[] = {KU("v", 1), KS("op", "ping"), KU("rid", 0)};
    cr_assert_eq(decode_kvs(rid0, 3, &r), UVMLEASE_EBADVALUE);
    kv ridneg[] = {KU("v", 1), KS("op", "ping"), KN("rid", 3)};
    cr_assert_eq(decode_kvs(ridneg, 3, &r), UVMLEASE_EBADVALUE);

    kv acq[] = {KU("v", 1),    KS("op", "acquire"), KU("rid", 1),   KS("uvm", "u@vm"),
                KB("conf", 0), KN("timeout_ms", 2), KS("label", "")};
    cr_assert_eq(decode_kvs(acq, 7, &r), UVMLEASE_EBADVALUE, "timeout -2");
    acq[5] = (kv)KN("timeout_ms", 1);
    cr_assert_eq(decode_kvs(acq, 7, &r), 0);
    cr_assert_eq(r.timeout_ms, -1);
    acq[5] = (kv)KU("timeout_ms", 9007199254740991ull);
    cr_assert_eq(decode_kvs(acq, 7, &r), 0);
    acq[5] = (kv)KU("timeout_ms", 9007199254740992ull);
    cr_assert_eq(decode_kvs(acq, 7, &r), UVMLEASE_EBADVALUE, "timeout above 2^53-1");
    acq[5] = (kv)KU("timeout_ms", UINT64_MAX);
    cr_assert_eq(decode_kvs(acq, 7, &r), UVMLEASE_EBADVALUE);

    kv force[] = {KU("v", 1),        KS("op", "force-release"), KU("rid", 1),
                  KS("uvm", "u@vm"), KS("mode", "nuke"),        KS("reason", "r")};
    cr_assert_eq(decode_kvs(force, 6, &r), UVMLEASE_EBADVALUE, "mode");
    force[4] = (kv)KS("mode", "revoke");
    cr_assert_eq(decode_kvs(force, 6, &r), 0);
    cr_assert_eq(r.mode, UL_FORCE_REVOKE);
    cr_assert_eq(r.pid, 0, "no pid: all holders");
    force[5] = (kv)KS("reason", "");
    cr_assert_eq(decode_kvs(force, 6, &r), UVMLEASE_EBADTEXT, "a forced release says why");

    kv wc[] = {KU("v", 1), KS("op", "watch-child"), KU("rid", 1), KU("lease", 9), KU("pid", 0)};
    cr_assert_eq(decode_kvs(wc, 5, &r), UVMLEASE_EBADVALUE, "pid 0");
    wc[4] = (kv)KU("pid", 1ull << 31);
    cr_assert_eq(decode_kvs(wc, 5, &r), UVMLEASE_EBADVALUE, "pid above INT32_MAX");
    wc[3] = (kv)KU("lease", 0);
    wc[4] = (kv)KU("pid", 5);
    cr_assert_eq(decode_kvs(wc, 5, &r), UVMLEASE_EBADVALUE, "lease 0");

    kv lst[] = {KU("v", 1), KS("op", "list"), KU("rid", 1), KU("limit", 1ull << 32)};
    cr_assert_eq(decode_kvs(lst, 4, &r), UVMLEASE_EBADVALUE, "limit above uint32");
    kv lst2[] = {KU("v", 1), KS("op", "list"), KU("rid", 1), KS("after", "has space")};
    cr_assert_eq(decode_kvs(lst2, 4, &r), UVMLEASE_EBADUVM, "cursor is a UVM ID");
}

Test(codec, signed_integer_encodings_accepted)
{
    /* {"v": int8 1, "op": "ping", "rid": int16 300} */
    const unsigned char msg[] = {0x83, 0xa1, 'v', 0xd0, 0x01, 0xa2, 'o', 'p',  0xa4, 'p',
                                 'i',  'n',  'g', 0xa3, 'r',  'i',  'd', 0xd1, 0x01, 0x2c};
    ul_request r;
    cr_assert_eq(ul_request_decode(msg, sizeof msg, &r), 0);
    cr_assert_eq(r.rid, 300);
    /* ... and re-encoded in the canonical (smallest, unsigned) form. */
    ul_buf b = {0};
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    static const unsigned char canon[] = {0x83, 0xa1, 'v',  0x01, 0xa2, 'o', 'p',  0xa4, 'p', 'i',
                                          'n',  'g',  0xa3, 'r',  'i',  'd', 0xcd, 0x01, 0x2c};
    expect_bytes_eq(&b, canon, sizeof canon, "canonical", "signed");
    ul_buf_free(&b);
}

static int acquire_with_uvm(const char *uvm, size_t len)
{
    kv kvs[] = {KU("v", 1),    KS("op", "acquire"), KU("rid", 1), {"uvm", V_STR, 0, uvm, len},
                KB("conf", 1), KU("timeout_ms", 0)};
    ul_request r;
    return decode_kvs(kvs, 6, &r);
}

Test(codec, uvm_id_rules)
{
    char id[300];
    memset(id, 'a', sizeof id);
    cr_assert_eq(ul_uvm_id_check(id, 256), 0);
    cr_assert_eq(acquire_with_uvm(id, 256), 0);
    cr_assert_eq(ul_uvm_id_check(id, 257), UVMLEASE_EBADUVM);
    cr_assert_eq(acquire_with_uvm(id, 257), UVMLEASE_EBADUVM, "257 bytes");
    cr_assert_eq(ul_uvm_id_check("", 0), UVMLEASE_EBADUVM);
    /* An empty str: the packer helper takes slen 0 as strlen, so build it. */
    const unsigned char empty[] = {0x86, 0xa1, 'v',  0x01, 0xa2, 'o', 'p', 0xa7, 'a',  'c',  'q',
                                   'u',  'i',  'r',  'e',  0xa3, 'r', 'i', 'd',  0x01, 0xa3, 'u',
                                   'v',  'm',  0xa0, 0xa4, 'c',  'o', 'n', 'f',  0xc3, 0xaa, 't',
                                   'i',  'm',  'e',  'o',  'u',  't', '_', 'm',  's',  0x00};
    ul_request r;
    cr_assert_eq(ul_request_decode(empty, sizeof empty, &r), UVMLEASE_EBADUVM, "empty");
    cr_assert_eq(r.rid, 1);
    cr_assert_eq(r.op, UL_OP_ACQUIRE);

    static const char *const bad[] = {"has space", "tab\there",   "nl\n", "del\x7f",
                                      "nul",       "caf\xc3\xa9", "\xff", "ctl\x01"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = strlen(bad[i]);
        if (strcmp(bad[i], "nul") == 0)
            len = 4; /* "nul" and its NUL byte */
        cr_expect_eq(ul_uvm_id_check(bad[i], len), UVMLEASE_EBADUVM, "%zu", i);
        cr_expect_eq(acquire_with_uvm(bad[i], len), UVMLEASE_EBADUVM, "%zu", i);
    }
    cr_assert_eq(ul_uvm_id_check("!~@vm", 5), 0, "all printable ASCII but space");
    cr_assert_eq(ul_uvm_id_check(NULL, 3), UVMLEASE_EBADUVM);
}

static int acquire_with_label(const char *label, size_t len)
{
    kv kvs[] = {KU("v", 1),
                KS("op", "acquire"),
                KU("rid", 1),
                KS("uvm", "u@vm"),
                KB("conf", 1),
                KU("timeout_ms", 0),
                {"label", V_STR, 0, label, len}};
    ul_request r;
    return decode_kvs(kvs, 7, &r);
}

Test(codec, text_rules)
{
    static const struct {
        const char *s;
        int ok;
    } cases[] = {
        {"plain", 1},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 1}, /* e-acute, euro, emoji */
        {"\xef\xbf\xbd", 1},                              /* U+FFFD */
        {"\xf4\x8f\xbf\xbf", 1},                          /* U+10FFFF */
        {"\xc2\xa0", 1},                                  /* U+00A0, first after C1 */
        {"tab\t", 0},
        {"nl\n", 0},
        {"esc\x1b[31m", 0},
        {"del\x7f", 0},
        {"c1 \xc2\x9b", 0},  /* U+009B CSI */
        {"c1 \xc2\x80", 0},  /* U+0080 */
        {"lone \x80", 0},    /* continuation without lead */
        {"cut \xe2\x82", 0}, /* truncated sequence */
        {"cut \xf0\x9f\x98", 0},
        {"\xf8\x88\x80\x80\x80", 0}, /* 5-byte form */
        {"\xff", 0},
        {"\xc0\xaf", 0},         /* overlong '/' */
        {"\xc1\xbf", 0},         /* overlong */
        {"\xe0\x80\xaf", 0},     /* overlong 3-byte */
        {"\xe0\x9f\xbf", 0},     /* overlong U+07FF */
        {"\xf0\x80\x80\xaf", 0}, /* overlong 4-byte */
        {"\xf0\x8f\xbf\xbf", 0}, /* overlong U+FFFF */
        {"\xed\xa0\x80", 0},     /* surrogate U+D800 */
        {"\xed\xbf\xbf", 0},     /* surrogate U+DFFF */
        {"\xf4\x90\x80\x80", 0}, /* U+110000 */
        {"\xe2\x28\xa1", 0},     /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i].s);
        int want = cases[i].ok ? 0 : UVMLEASE_EBADTEXT;
        cr_expect_eq(ul_text_check(cases[i].s, len, 256), want, "case %zu", i);
        cr_expect_eq(acquire_with_label(cases[i].s, len), want, "case %zu on the wire", i);
    }
    /* An embedded NUL is a control character. */
    cr_expect_eq(ul_text_check("a\0b", 3, 256), UVMLEASE_EBADTEXT);
    cr_expect_eq(acquire_with_label("a\0b", 3), UVMLEASE_EBADTEXT);

    char long_label[300];
    memset(long_label, 'x', sizeof long_label);
    cr_expect_eq(acquire_with_label(long_label, 256), 0);
    cr_expect_eq(acquire_with_label(long_label, 257), UVMLEASE_EBADTEXT);
    cr_expect_eq(ul_text_check(long_label, 65, UL_MAX_PHASE), UVMLEASE_EBADTEXT);
    cr_expect_eq(ul_text_check("", 0, 0), 0);
    cr_expect_eq(ul_text_check(NULL, 0, 10), 0);
}

Test(codec, encoder_validates_and_leaves_buffer_alone)
{
    ul_buf b = {0};
    ul_request r;
    g_req_ping(&r);
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    size_t before = b.len;

    g_req_acquire(&r);
    strcpy(r.uvm, "bad id");
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EBADUVM);
    cr_assert_eq(b.len, before, "nothing appended on failure");
    g_req_acquire(&r);
    strcpy(r.label, "a\nb");
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EBADTEXT);
    g_req_acquire(&r);
    r.timeout_ms = -7;
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EBADVALUE);
    g_req_acquire(&r);
    memset(r.label, 'x', sizeof r.label); /* no terminating NUL */
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EBADTEXT);
    g_req_ping(&r);
    r.rid = 0;
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EBADVALUE);
    r.rid = 1;
    r.op = UL_OP_COUNT_;
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EUNKNOWNOP);
    g_req_force_revoke(&r);
    r.mode = 0;
    cr_assert_eq(ul_request_encode(&r, &b), UVMLEASE_EBADVALUE);
    cr_assert_eq(b.len, before);

    /* Appends after what is there, and reuses the capacity. */
    g_req_ping(&r);
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    cr_assert_eq(b.len, 2 * before);
    cr_assert_eq(memcmp(b.data, b.data + before, before), 0);
    char *data = b.data;
    b.len = 0;
    cr_assert_eq(ul_request_encode(&r, &b), 0);
    cr_assert_eq(b.data, data, "no reallocation when the buffer is big enough");
    ul_buf_free(&b);
    cr_assert_null(b.data);
    ul_buf_free(&b);
}

Test(codec, request_round_trips)
{
    ul_buf b = {0};
    for (size_t g = 0; g < N_GOLDEN; g++) {
        if (!s_golden[g].req)
            continue;
        ul_request want, got;
        s_golden[g].req(&want);
        /* Stretch every string to its limit. */
        if (want.op == UL_OP_ACQUIRE) {
            memset(want.uvm, '~', UL_MAX_UVM);
            want.uvm[UL_MAX_UVM] = '\0';
            for (int i = 0; i < UL_MAX_LABEL / 2; i++)
                memcpy(want.label + 2 * i, "\xc3\xa9", 2);
            want.label[UL_MAX_LABEL] = '\0';
        }
        b.len = 0;
        cr_assert_eq(ul_request_encode(&want, &b), 0, "%s", s_golden[g].name);
        cr_assert_leq(b.len, (size_t)UL_MAX_REQUEST);
        cr_assert_eq(ul_request_decode(b.data, b.len, &got), 0, "%s", s_golden[g].name);
        expect_req_eq(&got, &want, s_golden[g].name);
    }
    ul_buf_free(&b);
}

/* ------------------------------------------------------------ replies */

static int reply_decode_kvs(const kv *kvs, size_t n, ul_reply *out)
{
    unsigned char buf[8192];
    size_t len = pack_kvs(kvs, n, buf, sizeof buf);
    return ul_reply_decode(buf, len, out);
}

Test(codec, reply_rules)
{
    ul_reply r;
    kv ok[] = {KU("v", 1),   KU("bi", 7),         KS("kind", "reply"),
               KU("rid", 1), KS("op", "release"), KU("err", 0)};
    cr_assert_eq(reply_decode_kvs(ok, 6, &r), 0);
    ul_reply_free(&r);

    kv bi0[] = {KU("v", 1), KU("bi", 0), KS("kind", "reply"), KU("rid", 1), KU("err", 1)};
    cr_assert_eq(reply_decode_kvs(bi0, 5, &r), UVMLEASE_EBADVALUE);
    kv nobi[] = {KU("v", 1), KS("kind", "reply"), KU("rid", 1), KU("err", 1)};
    cr_assert_eq(reply_decode_kvs(nobi, 4, &r), UVMLEASE_EMISSING);
    kv v2[] = {KU("v", 2), KU("bi", 7), KS("kind", "reply"), KU("rid", 1), KU("err", 1)};
    cr_assert_eq(reply_decode_kvs(v2, 5, &r), UVMLEASE_EVERSION);
    kv kind[] = {KU("v", 1), KU("bi", 7), KS("kind", "gossip")};
    cr_assert_eq(reply_decode_kvs(kind, 3, &r), UVMLEASE_EBADVALUE);
    kv okop[] = {KU("v", 1), KU("bi", 7), KS("kind", "reply"), KU("rid", 1), KU("err", 0)};
    cr_assert_eq(reply_decode_kvs(okop, 5, &r), UVMLEASE_EMISSING, "success without op");
    kv badop[] = {KU("v", 1),   KU("bi", 7),   KS("kind", "reply"),
                  KU("rid", 1), KS("op", "x"), KU("err", 0)};
    cr_assert_eq(reply_decode_kvs(badop, 6, &r), UVMLEASE_EUNKNOWNOP);
    kv failed0[] = {KU("v", 1), KU("bi", 7), KS("kind", "acquire-failed"), KU("rid", 1),
                    KU("err", 0)};
    cr_assert_eq(reply_decode_kvs(failed0, 5, &r), UVMLEASE_EBADVALUE);
    kv acq_noq[] = {KU("v", 1),   KU("bi", 7),         KS("kind", "reply"),
                    KU("rid", 1), KS("op", "acquire"), KU("err", 0)};
    cr_assert_eq(reply_decode_kvs(acq_noq, 6, &r), UVMLEASE_EMISSING);
    /* An error reply carries no payload: the fields are not required. */
    kv acq_err[] = {KU("v", 1),   KU("bi", 7),         KS("kind", "reply"),
                    KU("rid", 1), KS("op", "acquire"), KU("err", UVMLEASE_EDRAINING)};
    cr_assert_eq(reply_decode_kvs(acq_err, 6, &r), 0);
    cr_assert_eq(r.err, UVMLEASE_EDRAINING);
    ul_reply_free(&r);
    kv dup[] = {KU("v", 1),          KU("bi", 7),  KU("bi", 8),
                KS("kind", "reply"), KU("rid", 1), KU("err", 1)};
    cr_assert_eq(reply_decode_kvs(dup, 6, &r), UVMLEASE_EMALFORMED);
    /* PROTOCOL.md section 5: `journal` is a name when present (never
     * ""), a cancel's `lease` a lease id (never 0). */
    kv hello[] = {KU("v", 1),   KU("bi", 7),       KS("kind", "reply"),
                  KU("rid", 1), KS("op", "ping"),  KU("err", 0),
                  KU("pid", 5), KS("server", "s"), KS("journal", "ok")};
    cr_assert_eq(reply_decode_kvs(hello, 9, &r), 0);
    ul_reply_free(&r);
    hello[8] = (kv)KS("journal", "");
    cr_assert_eq(reply_decode_kvs(hello, 9, &r), UVMLEASE_EBADTEXT);
    kv cancel[] = {KU("v", 1),         KU("bi", 7),  KS("kind", "reply"), KU("rid", 1),
                   KS("op", "cancel"), KU("err", 0), KU("lease", 3)};
    cr_assert_eq(reply_decode_kvs(cancel, 7, &r), 0);
    cr_assert_eq(r.lease, 3);
    ul_reply_free(&r);
    cancel[6] = (kv)KU("lease", 0);
    cr_assert_eq(reply_decode_kvs(cancel, 7, &r), UVMLEASE_EBADVALUE);
}

Test(codec, reply_encoder_rules)
{
    ul_buf b = {0};
    ul_reply r;
    g_rep_stats(&r);
    r.hists[0].le_us[1] = r.hists[0].le_us[0];
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADVALUE, "bounds must ascend");
    ul_reply_free(&r);
    g_rep_stats(&r);
    r.hists[0].count = 10;
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADVALUE, "more in buckets than in total");
    ul_reply_free(&r);
    g_rep_stats(&r);
    r.counters[0].lval[0] = 'x';
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADVALUE, "label value without key");
    ul_reply_free(&r);
    g_rep_stats(&r);
    strcpy(r.counters[0].name, "bad name");
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADTEXT, "metric names are identifiers");
    ul_reply_free(&r);
    g_rep_show(&r);
    r.uvms[0].holders[0].comm[0] = '\x1b';
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADTEXT);
    ul_reply_free(&r);
    g_rep_show(&r);
    r.n_uvms = 2;
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADVALUE, "show answers one UVM");
    r.n_uvms = 1;
    ul_reply_free(&r);
    g_rep_hello(&r);
    r.instance = 0;
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADVALUE);
    g_rep_hello(&r);
    r.kind = 0;
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EBADVALUE);
    g_rep_release(&r);
    r.op = UL_OP_NONE;
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_EMISSING, "success without op");
    cr_assert_eq(b.len, 0);
    ul_buf_free(&b);
}

Test(codec, reply_too_large)
{
    /* 256 UVMs of 16 holders with 256-byte labels: far above 1 MiB. */
    ul_reply r;
    rep_init(&r, UL_MSG_REPLY);
    r.rid = 1;
    r.op = UL_OP_LIST;
    r.n_uvms = UL_LIST_PAGE_MAX;
    r.uvms = calloc(r.n_uvms, sizeof *r.uvms);
    cr_assert_not_null(r.uvms);
    for (uint32_t i = 0; i < r.n_uvms; i++) {
        snprintf(r.uvms[i].uvm, sizeof r.uvms[i].uvm, "uvm-%u", i);
        r.uvms[i].n_holders = 16;
        r.uvms[i].holders = calloc(16, sizeof(ul_holder));
        cr_assert_not_null(r.uvms[i].holders);
        for (int h = 0; h < 16; h++) {
            holder_fill(&r.uvms[i].holders[h], 100, "c", "", "");
            memset(r.uvms[i].holders[h].label, 'l', UL_MAX_LABEL);
        }
    }
    ul_buf b = {0};
    cr_assert_eq(ul_reply_encode(&r, &b), UVMLEASE_ETOOLARGE);
    cr_assert_eq(b.len, 0);
    cr_assert_leq(b.cap, (size_t)2 * UL_MAX_REPLY, "stopped at the limit");
    /* Half the holders fit. */
    for (uint32_t i = 0; i < r.n_uvms; i++)
        r.uvms[i].n_holders = 8;
    cr_assert_eq(ul_reply_encode(&r, &b), 0);
    ul_reply got;
    cr_assert_eq(ul_reply_decode(b.data, b.len, &got), 0);
    cr_assert_eq(got.n_uvms, UL_LIST_PAGE_MAX);
    cr_assert_eq(got.uvms[255].n_holders, 8);
    ul_reply_free(&got);
    ul_reply_free(&r);
    ul_buf_free(&b);
}

Test(codec, reply_decode_error_frees)
{
    /* A list whose second UVM is broken: the first one's arrays were
     * allocated and must be gone, the struct zeroed. */
    ul_reply r;
    g_rep_list(&r);
    ul_buf b = {0};
    cr_assert_eq(ul_reply_encode(&r, &b), 0);
    ul_reply_free(&r);
    char *hit = memmem(b.data, b.len, "uvm-9@vm", 8);
    cr_assert_not_null(hit);
    hit[3] = ' ';
    ul_reply got;
    cr_assert_eq(ul_reply_decode(b.data, b.len, &got), UVMLEASE_EBADUVM);
    cr_assert_null(got.uvms);
    cr_assert_eq(got.n_uvms, 0);
    ul_reply_free(&got);
    ul_buf_free(&b);
    ul_reply zero = {0};
    ul_reply_free(&zero);
    ul_reply_free(NULL);
}

/* ------------------------------------------------------ names and codes */

Test(codec, status_names_from_the_list)
{
#define CHECK_(sym, num, wire, msg)                                                                \
    cr_expect_eq(UVMLEASE_##sym, num);                                                             \
    cr_expect_str_eq(ul_status_name(num), wire);                                                   \
    cr_expect_str_eq(ul_status_message(num), msg);                                                 \
    cr_expect_eq(ul_status_from_name(wire), num);
    UVMLEASE_ERRORS(CHECK_)
#undef CHECK_
    cr_expect_str_eq(ul_status_name(9999), "unknown");
    cr_expect_str_eq(ul_status_message(-1), "unknown");
    cr_expect_eq(ul_status_from_name("nope"), -1);
    cr_expect_eq(ul_status_from_name(NULL), -1);
}

/* The error table of PROTOCOL.md must list every code, as the list says. */
Test(codec, protocol_md_error_table_in_sync)
{
    char *text = ut_protocol_md();
    int rows = 0;
#define ROW_(sym, num, wire, msg)                                                                  \
    do {                                                                                           \
        char row_[512];                                                                            \
        snprintf(row_, sizeof row_, "| %d | `%s` | %s |", num, wire, msg);                         \
        cr_expect_not_null(strstr(text, row_), "PROTOCOL.md lacks the row: %s", row_);             \
        rows++;                                                                                    \
    } while (0);
    UVMLEASE_ERRORS(ROW_)
#undef ROW_
    /* No stale rows either: count the table's rows. */
    int doc_rows = 0;
    for (const char *p = strstr(text, "\n| "); p; p = strstr(p + 1, "\n| ")) {
        int num;
        char name[64];
        if (sscanf(p, "\n| %d | `%63[^`]` |", &num, name) == 2)
            doc_rows++;
    }
    cr_expect_eq(doc_rows, rows, "error table rows: %d in PROTOCOL.md, %d in the list", doc_rows,
                 rows);
    free(text);
}

Test(codec, op_and_event_names)
{
    for (int op = UL_OP_NONE + 1; op < UL_OP_COUNT_; op++) {
        const char *n = ul_op_name((ul_op)op);
        cr_assert_not_null(n, "op %d has no name", op);
        cr_expect_eq(ul_op_from_name(n, strlen(n)), (ul_op)op);
        cr_expect_eq(ul_op_is_admin((ul_op)op),
                     op == UL_OP_DRAIN || op == UL_OP_UNDRAIN || op == UL_OP_FORCE_RELEASE, "%s",
                     n);
    }
    cr_expect_null(ul_op_name(UL_OP_NONE));
    cr_expect_null(ul_op_name(UL_OP_COUNT_));
    cr_expect_null(ul_op_name((ul_op)-3));
    cr_expect_eq(ul_op_from_name("acquire", 3), UL_OP_NONE);
    cr_expect_eq(ul_op_from_name(NULL, 0), UL_OP_NONE);
    for (int t = 1; t < UL_EV_COUNT_; t++)
        cr_expect_not_null(ul_event_name((ul_event_type)t));
    cr_expect_null(ul_event_name(UL_EV_COUNT_));
    cr_expect_null(ul_event_name(0));
}

/* ------------------------------------------------------------- escaping */

static const char *esc(const char *s, size_t len, size_t outsz)
{
    static char out[512];
    size_t n = ul_escape(s, len, out, outsz);
    cr_assert_eq(n, strlen(out), "returned length matches");
    return out;
}

Test(codec, escape)
{
    cr_expect_str_eq(esc("plain text", 10, 512), "plain text");
    cr_expect_str_eq(esc("a\"b\\c", 5, 512), "a\\\"b\\\\c");
    cr_expect_str_eq(esc("l1\nl2\tx\r", 8, 512), "l1\\nl2\\tx\\r");
    cr_expect_str_eq(esc("\x1b[31mred", 8, 512), "\\x1b[31mred");
    cr_expect_str_eq(esc("del\x7f", 4, 512), "del\\x7f");
    cr_expect_str_eq(esc("nul\0x", 5, 512), "nul\\x00x");
    cr_expect_str_eq(esc("bad\xff\xfe", 5, 512), "bad\\xff\\xfe");
    cr_expect_str_eq(esc("csi\xc2\x9b", 5, 512), "csi\\xc2\\x9b");
    cr_expect_str_eq(esc("caf\xc3\xa9", 5, 512), "caf\xc3\xa9", "valid UTF-8 stays");
    cr_expect_str_eq(esc("\xc0\xaf", 2, 512), "\\xc0\\xaf", "overlong shown as bytes");
    cr_expect_str_eq(esc("\xed\xa0\x80", 3, 512), "\\xed\\xa0\\x80", "surrogate");
    cr_expect_str_eq(esc("cut\xe2\x82", 5, 512), "cut\\xe2\\x82");

    /* Truncation never splits a character or an escape. */
    cr_expect_str_eq(esc("abc", 3, 3), "ab");
    cr_expect_str_eq(esc("a\xc3\xa9", 3, 3), "a");
    cr_expect_str_eq(esc("a\xc3\xa9", 3, 4), "a\xc3\xa9");
    cr_expect_str_eq(esc("a\x1b", 2, 5), "a");
    cr_expect_str_eq(esc("a\x1b", 2, 6), "a\\x1b");
    cr_expect_str_eq(esc("a\"", 2, 3), "a");
    cr_expect_str_eq(esc("", 0, 1), "");
    cr_expect_str_eq(esc(NULL, 5, 8), "");

    char one = 'z';
    cr_expect_eq(ul_escape("abc", 3, &one, 0), 0);
    cr_expect_eq(one, 'z', "outsz 0 writes nothing");
    cr_expect_eq(ul_escape("abc", 3, &one, 1), 0);
    cr_expect_eq(one, '\0');
}

Test(codec, sanitize)
{
    char s[64];
    strcpy(s, "shim\x1b[0m");
    cr_expect_eq(ul_text_sanitize(s, 16), 8);
    cr_expect_str_eq(s, "shim?[0m");
    strcpy(s, "a\xff\xc2\x9b\xc3\xa9");
    ul_text_sanitize(s, 16);
    cr_expect_str_eq(s,
                     "a?"
                     "?\xc3\xa9",
                     "a bad byte and a C1 control: one '?' each");
    strcpy(s, "abc\xc3\xa9");
    cr_expect_eq(ul_text_sanitize(s, 4), 3, "cut before a split character");
    cr_expect_str_eq(s, "abc");
    strcpy(s, "x\xed\xa0\x80y");
    ul_text_sanitize(s, 16);
    cr_expect_eq(ul_text_check(s, strlen(s), 16), 0);
    cr_expect_eq(ul_text_sanitize(NULL, 3), 0);
}
