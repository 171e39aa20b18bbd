/*
 * ops.c — the client operations: hello/ping, acquire, cancel, release,
 * phase and watch-child. Admin and view operations are in admin.c.
 *
 * Every request reaching here was decoded and validated by the codec; the
 * caller's identity is the kernel's (ul_peer), never a message field.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops.h"
#include "persist.h"
#include "procs.h"
#include "send.h"
#include "conn.h"
#include "ul_sys.h"

/* Success; released: the lease a cancel released (0: none). */
static void s_reply_ok(uvmlease_broker *b, const ul_peer *peer, const ul_request *req,
                       uint64_t released)
{
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.lease = released;
    ul_broker_send(b, peer->route, &rep);
}

/* A copy of the route as long as it is (routing ids are a few bytes: a
 * held lease keeps one). */
static broute *s_route_copy(const broute *r)
{
    broute *c = malloc(offsetof(broute, id) + r->len);
    if (c) {
        c->len = r->len;
        memcpy(c->id, r->id, r->len);
    }
    return c;
}

/* The grant as the acquire's reply. One that cannot be sent is undone at
 * once: its holder would never know it has the UVM. */
static void s_reply_granted(uvmlease_broker *b, const ul_peer *peer, const ul_request *req,
                            const lt_lease *l)
{
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.lease = l->id;
    rep.fence = l->fence;
    snprintf(rep.uvm, sizeof rep.uvm, "%s", l->uvm->id);
    int sent = ul_broker_send(b, peer->route, &rep);
    if (sent != 0)
        ul_broker_grant_lost(b, l, sent);
    ul_broker_undo_lost(b);
}

static void s_reply_queued(uvmlease_broker *b, const ul_peer *peer, const ul_request *req,
                           uint32_t position)
{
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.queued = true;
    rep.position = position;
    snprintf(rep.uvm, sizeof rep.uvm, "%s", req->uvm);
    ul_broker_send(b, peer->route, &rep);
}

static void s_acquire(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    int err = 0;
    bproc *p = ul_conn_peer_proc(b, peer, &err);
    if (!p) {
        ul_broker_reply_error(b, peer, req, err, NULL);
        return;
    }
    /* A re-send (same process, same rid: the client saw a new broker
     * instance or lost a reply) is answered from what the acquire became,
     * whatever the per-process limit. */
    bool known = lt_rid_known(b->table, p->owner, req->rid);
    const lt_stats *st = lt_stats_get(b->table);
    if (!known &&
        (p->n_active >= UL_MAX_PER_PROCESS || st->holders + st->waiters >= b->max_leases)) {
        bool mine = p->n_active >= UL_MAX_PER_PROCESS;
        ul_broker_reply_error(b, peer, req, UVMLEASE_ERESOURCE,
                              mine ? "too many leases and waiting acquires for one process"
                                   : "too many leases and waiting acquires on this host");
        ul_broker_log_reject(b, peer->pid, UVMLEASE_ERESOURCE,
                             mine ? "per-process limit" : "host-wide limit");
        ul_broker_proc_maybe_forget(b, p);
        return;
    }
    broute *route = s_route_copy(peer->route);
    if (!route) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOMEM, NULL);
        return;
    }
    lt_acquire_args a = {
        .uvm = req->uvm,
        .confidential = req->confidential,
        .label = req->label,
        .rid = req->rid,
        .timeout_ms = req->timeout_ms,
        .user = route,
    };
    lt_acquire_result res;
    memset(&res, 0, sizeof res);
    uint64_t now = ul_now_ms();
    int rc = lt_acquire(b->table, p->owner, &a, now, &res);
    if (rc == 0 && res.resent) {
        /* Later messages follow the connection the re-send came on. */
        void **cur = res.lease ? &res.lease->user : &res.waiter->user;
        free(*cur);
        *cur = route;
        if (res.lease)
            s_reply_granted(b, peer, req, res.lease);
        else
            s_reply_queued(b, peer, req, res.position);
        return;
    }
    if (rc == 0 && (res.lease || res.waiter))
        p->n_active++;
    if (rc == 0 && res.lease) {
        s_reply_granted(b, peer, req, res.lease);
        return;
    }
    if (rc == 0 && res.waiter) {
        s_reply_queued(b, peer, req, res.position);
        ul_broker_undo_lost(b);
        return;
    }
    free(route);
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.err = (uint32_t)(rc ? rc : UVMLEASE_EINTERNAL);
    snprintf(rep.uvm, sizeof rep.uvm, "%s", req->uvm);
    if (rc == UVMLEASE_EBUSY && res.holder) {
        rep.has_holder = true;
        ul_broker_fill_holder(b, res.holder, now, &rep.holder, false);
    } else if (rc == UVMLEASE_EBUSY) {
        const lt_uvm *u = lt_uvm_find(b->table, req->uvm);
        snprintf(rep.detail, sizeof rep.detail, "%s",
                 u && u->quarantine_until > now ? "the UVM is quarantined after an abnormal release"
                                                : "the host-wide bring-up cap is reached");
    }
    ul_broker_send(b, peer->route, &rep);
    ul_broker_proc_maybe_forget(b, p);
}

/*
 * Cancel: a waiting acquire is removed. One already granted to this process
 * is released (reason "released": the process itself gives it up) and its
 * lease id goes into the reply: a client cancels an acquire it has given up
 * on, so it never used that lease, whose grant came too late or was lost
 * (e.g. in a broker crash between journalling and sending it).
 */
static int s_cancel(uvmlease_broker *b, lt_owner *o, uint64_t rid, uint64_t now, uint64_t *released)
{
    int rc = lt_cancel(b->table, o, rid, now);
    lt_lease *l = rc == UVMLEASE_ENOTWAITING ? lt_lease_by_rid(b->table, o, rid) : NULL;
    if (!l)
        return rc;
    uint64_t id = l->id;
    rc = lt_release(b->table, o, id, now);
    if (rc == 0)
        *released = id;
    return rc;
}

/* cancel, release, phase: operations on something the caller already has. */
static void s_owned_op(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    int err = 0;
    bproc *p = ul_conn_peer_proc(b, peer, &err);
    if (!p) {
        ul_broker_reply_error(b, peer, req, err, NULL);
        return;
    }
    uint64_t now = ul_now_ms();
    uint64_t released = 0;
    int rc;
    switch (req->op) {
    case UL_OP_CANCEL:
        rc = s_cancel(b, p->owner, req->target_rid, now, &released);
        break;
    case UL_OP_RELEASE:
        rc = lt_release(b->table, p->owner, req->lease, now);
        break;
    default:
        rc = lt_phase(b->table, p->owner, req->lease, req->phase, now);
        break;
    }
    ul_broker_undo_lost(b); /* the release or cancel may have granted */
    if (rc)
        ul_broker_reply_error(b, peer, req, rc, NULL);
    else
        s_reply_ok(b, peer, req, released);
    ul_broker_proc_maybe_forget(b, p);
}

/* uvmleasectl run: the broker also watches the command it started, so the
 * lease outlives a killed uvmleasectl until the command is gone too. */
static void s_watch_child(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    if (req->pid == 0 || req->pid == peer->pid) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOTCHILD, NULL);
        return;
    }
    int err = 0;
    bproc *p = ul_conn_peer_proc(b, peer, &err);
    if (!p) {
        ul_broker_reply_error(b, peer, req, err, NULL);
        return;
    }
    /* The child's pidfd first, then its parent: a pid that was reused
     * between the two would show as dead through the pidfd, and the
     * parent read belongs to the process the pidfd holds. */
    bproc *c = ul_broker_proc_get(b, req->pid, peer->uid, &err);
    if (!c) {
        ul_broker_reply_error(b, peer, req, err, NULL);
        ul_broker_proc_maybe_forget(b, p);
        return;
    }
    if (ul_proc_ppid((pid_t)req->pid) != (pid_t)peer->pid || !ul_pidfd_alive(c->pidfd)) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOTCHILD, NULL);
        ul_broker_proc_maybe_forget(b, c);
        ul_broker_proc_maybe_forget(b, p);
        return;
    }
    int rc = lt_attach_child(b->table, p->owner, req->lease, c->owner);
    if (rc) {
        ul_broker_reply_error(b, peer, req, rc, NULL);
        ul_broker_proc_maybe_forget(b, c);
        ul_broker_proc_maybe_forget(b, p);
        return;
    }
    /* The anchor holds in memory either way; the caller learns that a
     * broker restart before the journal recovers would not keep it. */
    if (ul_persist_child(b, req->lease, c) != 0) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_EJOURNAL,
                              "the child is watched, but cannot be recorded yet");
        return;
    }
    s_reply_ok(b, peer, req, 0);
}

static void s_hello(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.broker_pid = (uint32_t)getpid();
    snprintf(rep.server, sizeof rep.server, "uvmleased/%s", UL_VERSION);
    snprintf(rep.journal, sizeof rep.journal, "%s", ul_persist_healthy(b) ? "ok" : "failing");
    ul_broker_send(b, peer->route, &rep);
}

void ul_ops_handle(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    switch (req->op) {
    case UL_OP_HELLO:
    case UL_OP_PING:
        s_hello(b, peer, req);
        break;
    case UL_OP_ACQUIRE:
        s_acquire(b, peer, req);
        break;
    case UL_OP_CANCEL:
    case UL_OP_RELEASE:
    case UL_OP_PHASE:
        s_owned_op(b, peer, req);
        break;
    case UL_OP_WATCH_CHILD:
        s_watch_child(b, peer, req);
        break;
    default:
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOTIMPL, NULL);
        break;
    }
}
