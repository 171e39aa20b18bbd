/*
 * admin.c — the admin view and control operations: list, show, watch,
 * stats (read-only, open to anyone who can connect) and drain, undrain,
 * force-release (uid 0 or the admin group, audited).
 *
 * Also the hooks the loop calls: table events become watch events and
 * histogram observations; forced kills have timers.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "kills.h"
#include "persist.h"
#include "procs.h"
#include "send.h"
#include "watch.h"
#include "conn.h"
#include "ul_sys.h"

#define S_LIST_HOLDERS_MAX 64

typedef struct ul_admin {
    /* Refused admin requests: audited, but a flood must not become a flood
     * of log lines (token bucket, as for rejected input). */
    ul_log_rate deny_rate; /* audit lines of refused requests */
} ul_admin;

static ul_admin *s_admin(uvmlease_broker *b)
{
    if (!b->admin)
        b->admin = calloc(1, sizeof *b->admin);
    return b->admin;
}

void ul_broker_admin_free(uvmlease_broker *b)
{
    free(b->admin);
    b->admin = NULL;
}

/* ---- authorization and audit ------------------------------------------- */

static bool s_is_admin(const uvmlease_broker *b, const ul_peer *peer)
{
    if (peer->uid == 0)
        return true;
    /* The connection's credentials carry only the primary gid: read the
     * supplementary groups of the pinned process (re-checked through its
     * pidfd, so a process that reused the pid cannot lend its groups). With
     * no admin group configured, only uid 0 is an administrator. */
    return b->have_admin_gid && ul_conn_peer_in_group(peer, (uint32_t)b->admin_gid);
}

static void s_audit(uvmlease_broker *b, const ul_peer *peer, const ul_request *req,
                    const char *result)
{
    char suppressed[24] = "0";
    if (strcmp(result, "denied") == 0) {
        uint64_t n = 0;
        /* 20 at once, then 5 a second. */
        if (!b->admin || !ul_log_rate_take(&b->admin->deny_rate, ul_now_ms(), 20, 5, &n))
            return;
        snprintf(suppressed, sizeof suppressed, "%llu", (unsigned long long)n);
    }
    char uid[16], pid[16], comm[UL_MAX_COMM + 1], target[16] = "";
    snprintf(uid, sizeof uid, "%u", peer->uid);
    snprintf(pid, sizeof pid, "%u", peer->pid);
    /* Read when the process was pinned: /proc/<pid> may be another's now. */
    snprintf(comm, sizeof comm, "%s", ul_conn_peer_comm(peer));
    if (req->op == UL_OP_FORCE_RELEASE && req->pid)
        snprintf(target, sizeof target, "%u", req->pid);
    const char *mode = req->op != UL_OP_FORCE_RELEASE ? ""
                       : req->mode == UL_FORCE_KILL   ? "kill"
                                                      : "revoke";
    ul_log(&b->log, UL_LOG_WARN, "audit", "action", ul_op_name(req->op), "mode", mode, "uvm",
           req->uvm, "target_pid", target, "uid", uid, "pid", pid, "comm", comm, "reason",
           req->reason, "result", result, "suppressed", suppressed, NULL);
}

/* ---- views ------------------------------------------------------------- */

static void s_fill_info(uvmlease_broker *b, const lt_uvm *u, uint64_t now, ul_uvm_info *info,
                        bool full, ul_holder *holders, uint32_t max_holders,
                        ul_waiter_info *waiters, uint32_t max_waiters)
{
    memset(info, 0, sizeof *info);
    snprintf(info->uvm, sizeof info->uvm, "%s", u->id);
    info->confidential = u->confidential;
    info->draining = u->draining;
    info->quarantine_ms_left = u->quarantine_until > now ? u->quarantine_until - now : 0;
    info->waiter_count = u->n_waiters;
    info->holders = holders;
    for (const lt_lease *l = lt_uvm_holders(u); l && info->n_holders < max_holders;
         l = lt_uvm_holder_next(u, l))
        ul_broker_fill_holder(b, l, now, &holders[info->n_holders++], full);
    if (!full)
        return;
    info->waiters = waiters;
    for (const lt_waiter *w = lt_uvm_waiters(u); w && info->n_waiters < max_waiters;
         w = lt_uvm_waiter_next(u, w)) {
        ul_waiter_info *wi = &waiters[info->n_waiters++];
        memset(wi, 0, sizeof *wi);
        if (w->owner) {
            wi->pid = w->owner->id.pid;
            wi->uid = w->owner->id.uid;
            snprintf(wi->comm, sizeof wi->comm, "%s", w->owner->id.comm);
        }
        snprintf(wi->label, sizeof wi->label, "%s", w->label);
        wi->waited_ms = now - w->enqueued_at;
        wi->timeout_ms = w->timeout_ms;
    }
    if (u->last.valid) {
        info->has_last_release = true;
        snprintf(info->last_reason, sizeof info->last_reason, "%s", lt_reason_name(u->last.reason));
        info->last_pid = u->last.pid;
        info->last_at_ms = ul_broker_wall_of(b, u->last.at);
    }
}

static int s_cmp_uvm(const void *a, const void *b)
{
    const lt_uvm *const *x = a, *const *y = b;
    return strcmp((*x)->id, (*y)->id);
}

/* Every UVM entry sorted by id, so "after" is a stable cursor across pages
 * even when entries come and go in between. NULL on out of memory. */
static lt_uvm **s_list_sorted(uvmlease_broker *b, size_t *n)
{
    const lt_stats *st = lt_stats_get(b->table);
    size_t cap = st->uvms ? st->uvms : 1;
    lt_uvm **all = malloc(cap * sizeof *all);
    *n = 0;
    if (!all)
        return NULL;
    for (lt_uvm *u = lt_uvm_first(b->table); u && *n < cap; u = lt_uvm_next(b->table, u))
        all[(*n)++] = u;
    qsort(all, *n, sizeof *all, s_cmp_uvm);
    return all;
}

/* Index of the first entry after the cursor. */
static size_t s_list_after(lt_uvm **all, size_t n, const char *after)
{
    size_t lo = 0, hi = n;
    while (after[0] && lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(all[mid]->id, after) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return after[0] ? lo : 0;
}

/* Answer with the page v[0..page) (more: entries follow). Returns 1 when
 * the page does not fit in a reply (ask again with a shorter one), else 0
 * once the request is answered. */
static int s_list_page(uvmlease_broker *b, const ul_peer *peer, const ul_request *req, lt_uvm **v,
                       uint32_t page, bool more, bool last_try, uint64_t now)
{
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.n_uvms = page;
    rep.uvms = calloc(page ? page : 1, sizeof *rep.uvms);
    /* Holders of this page only (most UVMs have one). */
    size_t nh = 0;
    for (uint32_t i = 0; i < page; i++)
        nh += v[i]->n_holders < S_LIST_HOLDERS_MAX ? v[i]->n_holders : S_LIST_HOLDERS_MAX;
    ul_holder *holders = calloc(nh ? nh : 1, sizeof *holders);
    int again = 0;
    if (!rep.uvms || !holders) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOMEM, NULL);
        goto done;
    }
    size_t used = 0;
    for (uint32_t i = 0; i < page; i++) {
        s_fill_info(b, v[i], now, &rep.uvms[i], false, holders + used, S_LIST_HOLDERS_MAX, NULL, 0);
        used += rep.uvms[i].n_holders;
    }
    rep.more = more;
    snprintf(rep.journal, sizeof rep.journal, "%s", ul_persist_healthy(b) ? "ok" : "failing");
    /* Encoded here, not through ul_broker_encode: too-large is an expected
     * answer (halve the page), not an error to log. Only size is cured by
     * a shorter page; anything else is answered "internal" at once. */
    rep.version = UL_PROTO_VERSION;
    rep.instance = b->instance;
    b->out.len = 0;
    int rc = ul_reply_encode(&rep, &b->out);
    bool fits = rc == 0 && b->out.len <= UL_MAX_REPLY;
    bool hopeless = rc != 0 && rc != UVMLEASE_ETOOLARGE;
    if (hopeless)
        ul_broker_send(b, peer->route, &rep);
    else if (!fits && last_try)
        ul_broker_reply_error(b, peer, req, UVMLEASE_EINTERNAL, "entry too large");
    else if (!fits)
        again = 1;
    else if (ul_broker_send_raw(b, peer->route, b->out.data, b->out.len) != 0)
        b->undelivered[UL_MSG_REPLY]++; /* already encoded: send those bytes */
done:
    free(rep.uvms);
    free(holders);
    return again;
}

static void s_list(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    size_t n = 0;
    lt_uvm **all = s_list_sorted(b, &n);
    if (!all) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOMEM, NULL);
        return;
    }
    size_t first = s_list_after(all, n, req->after);
    uint32_t limit = req->limit && req->limit < UL_LIST_PAGE_MAX ? req->limit : UL_LIST_PAGE_MAX;
    uint64_t now = ul_now_ms();
    /* Long labels on many holders can exceed a reply frame: halve the page
     * until it fits; the client asks for the rest with "after". */
    for (;; limit /= 2) {
        uint32_t page = (uint32_t)(n - first < limit ? n - first : limit);
        if (!s_list_page(b, peer, req, all + first, page, first + page < n, limit == 1, now))
            break;
    }
    free(all);
}

static void s_show(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    const lt_uvm *u = lt_uvm_find(b->table, req->uvm);
    if (!u) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_EUNKNOWNUVM, NULL);
        return;
    }
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_REPLY;
    rep.rid = req->rid;
    rep.op = req->op;
    ul_uvm_info info;
    uint32_t nh = u->n_holders < S_LIST_HOLDERS_MAX ? u->n_holders : S_LIST_HOLDERS_MAX;
    uint32_t nw = u->n_waiters < UL_SHOW_WAITERS_MAX ? u->n_waiters : UL_SHOW_WAITERS_MAX;
    ul_holder *holders = calloc(nh ? nh : 1, sizeof *holders);
    ul_waiter_info *waiters = calloc(nw ? nw : 1, sizeof *waiters);
    if (!holders || !waiters) {
        free(holders);
        free(waiters);
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOMEM, NULL);
        return;
    }
    s_fill_info(b, u, ul_now_ms(), &info, true, holders, nh, waiters, nw);
    rep.n_uvms = 1;
    rep.uvms = &info;
    ul_broker_send(b, peer->route, &rep);
    free(holders);
    free(waiters);
}

static void s_counter(ul_counter *c, uint32_t *n, const char *name, const char *lkey,
                      const char *lval, uint64_t v)
{
    ul_counter *x = &c[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    if (lkey) {
        snprintf(x->lkey, sizeof x->lkey, "%s", lkey);
        snprintf(x->lval, sizeof x->lval, "%s", lval);
    }
    x->value = v;
}

static void s_stats(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    ul_admin *a = s_admin(b);
    if (!a) {
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOMEM, NULL);
        return;
    }
    const lt_stats *st = lt_stats_get(b->table);
    ul_counter counters[128];
    ul_histogram hists[UL_WATCH_HISTS];
    uint32_t nc = 0, nh = 0;
    s_counter(counters, &nc, "grants_total", NULL, NULL, st->grants);
    for (int r = 0; r < LT_R_COUNT_; r++)
        s_counter(counters, &nc, "releases_total", "reason", lt_reason_name((lt_reason)r),
                  st->releases[r]);
    s_counter(counters, &nc, "timeouts_total", NULL, NULL, st->timeouts);
    s_counter(counters, &nc, "cancels_total", NULL, NULL, st->cancels);
    s_counter(counters, &nc, "drained_waiters_total", NULL, NULL, st->drained_waiters);
    s_counter(counters, &nc, "overdue_total", NULL, NULL, st->overdue);
    s_counter(counters, &nc, "busy_refusals_total", NULL, NULL, st->busy_refusals);
    /* Broker messages that could not be sent (connection gone or full). */
    static const ul_msg_kind kinds[] = {UL_MSG_REPLY, UL_MSG_GRANT, UL_MSG_ACQUIRE_FAILED,
                                        UL_MSG_REVOKED, UL_MSG_EVENT};
    static const char *const kind_names[] = {"reply", "grant", "acquire-failed", "revoked",
                                             "event"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        s_counter(counters, &nc, "undelivered_total", "kind", kind_names[i],
                  b->undelivered[kinds[i]]);
    for (int code = 1; code < 128 && nc < 56; code++)
        if (b->rejected_by_code[code])
            s_counter(counters, &nc, "rejected_messages_total", "error", ul_status_name(code),
                      b->rejected_by_code[code]);
    s_counter(counters, &nc, "holders", NULL, NULL, st->holders);
    s_counter(counters, &nc, "waiters", NULL, NULL, st->waiters);
    s_counter(counters, &nc, "uvms", NULL, NULL, st->uvms);
    s_counter(counters, &nc, "processes", NULL, NULL, b->n_procs);
    s_counter(counters, &nc, "journal_healthy", NULL, NULL, ul_persist_healthy(b) ? 1 : 0);
    s_counter(counters, &nc, "journal_write_failures_total", NULL, NULL,
              ul_journal_write_failures(b->journal));
    s_counter(counters, &nc, "journal_slots", NULL, NULL, ul_journal_slots(b->journal));
    s_counter(counters, &nc, "journal_slots_used", NULL, NULL, ul_journal_used(b->journal));
    s_counter(counters, &nc, "grants_held_back_total", NULL, NULL, st->persist_failures);
    nh = ul_watch_hists(b, hists);
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_REPLY;
    rep.rid = req->rid;
    rep.op = req->op;
    rep.n_counters = nc;
    rep.counters = counters;
    rep.n_hists = nh;
    rep.hists = hists;
    ul_broker_send(b, peer->route, &rep);
}

/* ---- watch ------------------------------------------------------------- */

static void s_watch(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    int err = 0;
    bproc *p = ul_conn_peer_proc(b, peer, &err);
    if (!p) {
        ul_broker_reply_error(b, peer, req, err, NULL);
        return;
    }
    const char *why = NULL;
    err = ul_watch_subscribe(b, peer, req->op == UL_OP_UNWATCH, &why);
    ul_broker_reply_error(b, peer, req, err, why);
    ul_broker_proc_maybe_forget(b, p);
}

/* ---- control ----------------------------------------------------------- */

static void s_control(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    s_admin(b);
    if (!s_is_admin(b, peer)) {
        s_audit(b, peer, req, "denied");
        ul_broker_reply_error(b, peer, req, UVMLEASE_EPERM,
                              b->have_admin_gid
                                  ? "needs uid 0 or membership in the broker's admin group"
                                  : "needs uid 0 (the broker has no admin group)");
        return;
    }
    uint64_t now = ul_now_ms();
    int rc;
    uint32_t signalled = 0;
    char detail[UL_MAX_DETAIL + 1] = "";
    switch (req->op) {
    case UL_OP_DRAIN:
    case UL_OP_UNDRAIN:
        rc = req->op == UL_OP_DRAIN ? lt_drain(b->table, req->uvm, now)
                                    : lt_undrain(b->table, req->uvm, now);
        ul_broker_undo_lost(b);
        if (rc == 0) {
            ul_event e;
            memset(&e, 0, sizeof e);
            e.type = req->op == UL_OP_DRAIN ? UL_EV_DRAIN : UL_EV_UNDRAIN;
            snprintf(e.uvm, sizeof e.uvm, "%s", req->uvm);
            e.pid = peer->pid;
            snprintf(e.reason, sizeof e.reason, "%s", req->reason);
            ul_watch_emit(b, &e);
        }
        break;
    default: {
        lt_uvm *u = lt_uvm_find(b->table, req->uvm);
        if (!u) {
            rc = UVMLEASE_EUNKNOWNUVM;
            break;
        }
        if (req->mode == UL_FORCE_KILL) {
            rc = ul_kills_start(b, u, req->pid, now, &signalled);
            if (rc == 0)
                snprintf(detail, sizeof detail,
                         "signalled %u process(es); the lease is handed on once they are dead",
                         signalled);
        } else {
            b->revoke_reason = req->reason;
            rc = lt_revoke(b->table, req->uvm, req->pid, now);
            b->revoke_reason = NULL;
            ul_broker_undo_lost(b); /* the next waiters' grants may be lost */
        }
        if (rc == 0) {
            ul_event e;
            memset(&e, 0, sizeof e);
            e.type = UL_EV_FORCE;
            snprintf(e.uvm, sizeof e.uvm, "%s", req->uvm);
            e.pid = req->pid;
            snprintf(e.reason, sizeof e.reason, "%s", req->reason);
            snprintf(e.phase, sizeof e.phase, "%s", req->mode == UL_FORCE_KILL ? "kill" : "revoke");
            ul_watch_emit(b, &e);
        }
        break;
    }
    }
    s_audit(b, peer, req, rc == 0 ? "ok" : ul_status_name(rc));
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_REPLY;
    rep.rid = req->rid;
    rep.op = req->op;
    rep.err = (uint32_t)rc;
    snprintf(rep.detail, sizeof rep.detail, "%s", detail);
    ul_broker_send(b, peer->route, &rep);
}

void ul_admin_handle(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    switch (req->op) {
    case UL_OP_LIST:
        s_list(b, peer, req);
        break;
    case UL_OP_SHOW:
        s_show(b, peer, req);
        break;
    case UL_OP_STATS:
        s_stats(b, peer, req);
        break;
    case UL_OP_WATCH:
    case UL_OP_UNWATCH:
        s_watch(b, peer, req);
        break;
    case UL_OP_DRAIN:
    case UL_OP_UNDRAIN:
    case UL_OP_FORCE_RELEASE:
        s_control(b, peer, req);
        break;
    default:
        ul_broker_reply_error(b, peer, req, UVMLEASE_ENOTIMPL, NULL);
        break;
    }
}
