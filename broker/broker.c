/*
 * broker.c — the broker loop: one ROUTER socket, peer credentials from the
 * kernel, one pidfd per client process, and the lease table.
 *
 * Threading: everything below runs on the broker's own thread, except
 * uvmlease_broker_start/stop, which set up and tear down around it.
 */
#include "uvmlease_broker.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <zmq.h>

#include "broker_internal.h"
#include "conn.h"
#include "runtime.h"
#include "ul_sys.h"
#include "ul_text.h"

#define S_MAX_BATCH      512  /* messages handled per loop iteration */
#define S_MAX_PROCS      8192 /* client processes tracked at once */
#define S_IDLE_KEEP      256  /* idle processes kept tracked (saves pidfd_open + /proc reads) */
#define S_REJECT_BURST   20   /* rejected-input log lines: burst ... */
#define S_REJECT_PER_SEC 5    /* ... and sustained rate */

void uvmlease_broker_config_init(uvmlease_broker_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->serialize = LT_SERIALIZE_CONFIDENTIAL;
    cfg->hold_warn_ms = 300000;
    cfg->kill_grace_ms = 5000;
    cfg->log_level = UL_LOG_INFO;
}

/* ---- small helpers ---------------------------------------------------- */

static char *s_strdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void s_u64(char *out, size_t n, uint64_t v)
{
    snprintf(out, n, "%llu", (unsigned long long)v);
}

uint64_t ul_broker_wall_of(const uvmlease_broker *b, uint64_t mono_ms)
{
    return b->wall_base_ms + mono_ms;
}

/* ---- client processes ------------------------------------------------- */

static uint32_t s_pid_slot(const uvmlease_broker *b, uint32_t pid)
{
    return (pid * 2654435761u) & (b->proc_cap - 1);
}

static bproc *s_proc_find(uvmlease_broker *b, uint32_t pid)
{
    if (b->proc_cap == 0)
        return NULL;
    for (bproc *p = b->procs[s_pid_slot(b, pid)]; p; p = p->hnext)
        if (p->pid == pid)
            return p;
    return NULL;
}

static void s_proc_unlink(uvmlease_broker *b, bproc *p)
{
    if (ul_list_linked(&p->idle_link)) {
        ul_list_remove(&p->idle_link);
        b->n_idle--;
    }
    if (ul_list_linked(&p->check_link))
        ul_list_remove(&p->check_link);
    bproc **pp = &b->procs[s_pid_slot(b, p->pid)];
    while (*pp && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = p->hnext;
    b->n_procs--;
}

/* Free the reply routes stored in the owner's waiters and leases: the
 * process is gone, nothing will be sent to it. */
static void s_drop_routes(lt_owner *o)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &o->waiters)
    {
        lt_waiter *w = ul_container_of(pos, lt_waiter, owner_link);
        free(w->user);
        w->user = NULL;
    }
    ul_list_foreach_safe(pos, tmp, &o->leases)
    {
        lt_lease *l = ul_container_of(pos, lt_lease, owner_link);
        free(l->user);
        l->user = NULL;
    }
}

/* The process behind p is gone (or its pid was reused): end its leases,
 * waiters and anchors, and forget it. */
static void s_proc_gone(uvmlease_broker *b, bproc *p, lt_reason reason)
{
    uint64_t now = ul_now_ms();
    char pidbuf[16];
    snprintf(pidbuf, sizeof pidbuf, "%u", p->pid);
    ul_log(&b->log, UL_LOG_DEBUG, "process exit", "pid", pidbuf, "comm", p->comm, NULL);
    s_proc_unlink(b, p);
    if (p->pidfd >= 0) {
        epoll_ctl(b->epfd, EPOLL_CTL_DEL, p->pidfd, NULL);
        close(p->pidfd);
    }
    if (p->owner) {
        s_drop_routes(p->owner);
        lt_owner_exit(b->table, p->owner, reason, now);
        ul_broker_undo_lost(b);
    }
    ul_broker_proc_gone_hook(b, p);
    /* lt_owner_exit's events may have queued it for an idle check. */
    if (ul_list_linked(&p->check_link))
        ul_list_remove(&p->check_link);
    free(p);
}

/* Has the process behind a tracked pidfd exited? (A pid can be reused only
 * after its process died, and the pidfd says so.) */
static bool s_proc_dead(const bproc *p)
{
    struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
    return poll(&pfd, 1, 0) > 0;
}

static int s_proc_grow(uvmlease_broker *b)
{
    uint32_t ncap = b->proc_cap ? b->proc_cap * 2 : 64;
    bproc **n = calloc(ncap, sizeof *n);
    if (!n)
        return -1;
    bproc **old = b->procs;
    uint32_t ocap = b->proc_cap;
    b->procs = n;
    b->proc_cap = ncap;
    for (uint32_t i = 0; i < ocap; i++) {
        for (bproc *p = old[i], *next; p; p = next) {
            next = p->hnext;
            uint32_t s = s_pid_slot(b, p->pid);
            p->hnext = n[s];
            n[s] = p;
        }
    }
    free(old);
    return 0;
}

/*
 * The tracked process for a peer pid, created on first use: pidfd first,
 * then the start time, so the start time read belongs to the process the
 * pidfd watches. Returns NULL with *err set.
 */
bproc *ul_broker_proc_get(uvmlease_broker *b, uint32_t pid, uint32_t uid, int *err)
{
    bproc *p = s_proc_find(b, pid);
    if (p && s_proc_dead(p)) {
        s_proc_gone(b, p, p->kill_pending ? LT_R_KILLED : LT_R_HOLDER_EXIT);
        p = NULL;
    }
    if (p) {
        if (ul_list_linked(&p->idle_link)) {
            ul_list_remove(&p->idle_link);
            b->n_idle--;
        }
        return p;
    }
    if (b->n_procs >= S_MAX_PROCS) {
        *err = UVMLEASE_ERESOURCE;
        return NULL;
    }
    if (b->n_procs + 1 > b->proc_cap / 2 && s_proc_grow(b) < 0) {
        *err = UVMLEASE_ENOMEM;
        return NULL;
    }
    int fd = ul_pidfd_open((pid_t)pid);
    if (fd < 0) {
        /* The peer is already gone (ESRCH): nothing to hold for it. */
        *err = UVMLEASE_EPEER;
        return NULL;
    }
    uint64_t start = ul_proc_start_time((pid_t)pid);
    /* The sender may have exited (and its pid been reused) before we got
     * here: if the pidfd already reports a death, the start time read may
     * be another process's. Nothing is held for a sender that is gone. */
    struct pollfd gone = {.fd = fd, .events = POLLIN};
    if (start == 0 || poll(&gone, 1, 0) != 0) {
        close(fd);
        *err = UVMLEASE_EPEER;
        return NULL;
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        *err = UVMLEASE_ENOMEM;
        return NULL;
    }
    ul_list_init(&p->idle_link);
    ul_list_init(&p->check_link);
    p->pid = pid;
    p->uid = uid;
    p->start_time = start;
    p->pidfd = fd;
    ul_proc_comm((pid_t)pid, p->comm, sizeof p->comm);
    /* A process names itself: whatever bytes it chose must not reach a
     * reply (the codec refuses control characters) or a log unescaped. */
    ul_text_sanitize(p->comm, UL_MAX_COMM);
    lt_ident id = {.pid = pid, .uid = uid, .start_time = start};
    snprintf(id.comm, sizeof id.comm, "%s", p->comm);
    p->owner = lt_owner_new(b->table, &id);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    if (!p->owner || epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        if (p->owner)
            lt_owner_free(b->table, p->owner);
        close(fd);
        free(p);
        *err = UVMLEASE_ENOMEM;
        return NULL;
    }
    p->owner->user = p;
    uint32_t s = s_pid_slot(b, pid);
    p->hnext = b->procs[s];
    b->procs[s] = p;
    b->n_procs++;
    return p;
}

/* A tracked process whose owner has nothing left costs a pidfd. Keep the
 * most recently used ones (a shim acquires again soon, and re-tracking costs
 * pidfd_open and two /proc reads); forget the oldest beyond S_IDLE_KEEP. */
static void s_proc_forget(uvmlease_broker *b, bproc *p)
{
    s_proc_unlink(b, p);
    epoll_ctl(b->epfd, EPOLL_CTL_DEL, p->pidfd, NULL);
    close(p->pidfd);
    lt_owner_free(b->table, p->owner);
    free(p);
}

void ul_broker_proc_check_idle(uvmlease_broker *b)
{
    /* Undoing a lost grant ends a lease, which can leave a process idle. */
    ul_broker_undo_lost(b);
    while (!ul_list_empty(&b->check)) {
        bproc *p = ul_container_of(b->check.next, bproc, check_link);
        ul_list_remove(&p->check_link);
        ul_broker_proc_maybe_forget(b, p);
    }
}

void ul_broker_proc_maybe_forget(uvmlease_broker *b, bproc *p)
{
    if (!p || !p->owner || !lt_owner_idle(p->owner) || ul_broker_proc_pinned(b, p))
        return;
    if (!ul_list_linked(&p->idle_link)) {
        ul_list_insert_tail(&b->idle, &p->idle_link);
        b->n_idle++;
    }
    while (b->n_idle > S_IDLE_KEEP) {
        bproc *old = ul_container_of(b->idle.next, bproc, idle_link);
        s_proc_forget(b, old);
    }
}

/* ---- sending ---------------------------------------------------------- */

int ul_broker_send_raw(uvmlease_broker *b, const broute *to, const void *data, size_t len)
{
    if (!to || to->len == 0)
        return -1;
    /* ZMQ_ROUTER_MANDATORY: a peer that is gone is reported (EHOSTUNREACH)
     * instead of silently dropped; one over its high-water mark gets
     * EAGAIN and the message is dropped: a client that stops reading
     * cannot grow our memory. */
    if (zmq_send(b->router, to->id, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return zmq_errno() == EHOSTUNREACH ? -1 : -2;
    if (zmq_send(b->router, data, len, ZMQ_DONTWAIT) < 0)
        return -2;
    return 0;
}

int ul_broker_encode(uvmlease_broker *b, ul_reply *rep)
{
    rep->version = UL_PROTO_VERSION;
    rep->instance = b->instance;
    b->out.len = 0;
    int rc = ul_reply_encode(rep, &b->out);
    if (rc != 0) {
        char code[16], rid[24];
        snprintf(code, sizeof code, "%d", rc);
        s_u64(rid, sizeof rid, rep->rid);
        const char *op = ul_op_name(rep->op);
        ul_log(&b->log, UL_LOG_ERROR, "cannot encode reply", "err", ul_status_name(rc), "code",
               code, "kind", rep->kind == UL_MSG_REPLY ? "reply" : "unasked", "rid", rid, "op",
               op ? op : "", NULL);
    }
    return rc;
}

/* A reply that cannot be encoded is a broker bug, but the request must
 * still be answered: a client would otherwise wait forever. The stand-in
 * carries only what always encodes (rid, op, a fixed detail). */
static int s_send_internal(uvmlease_broker *b, const broute *to, const ul_reply *failed, int why)
{
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_REPLY;
    rep.rid = failed->rid;
    rep.op = failed->op;
    rep.err = UVMLEASE_EINTERNAL;
    snprintf(rep.detail, sizeof rep.detail, "the broker could not encode its reply (%s)",
             ul_status_name(why));
    if (ul_broker_encode(b, &rep) != 0)
        return -2;
    return ul_broker_send_raw(b, to, b->out.data, b->out.len);
}

static int s_send(uvmlease_broker *b, const broute *to, ul_reply *rep)
{
    if (!to || to->len == 0)
        return -1;
    int rc = ul_broker_encode(b, rep);
    if (rc != 0) {
        /* Not delivered either way: a grant in it is undone by the caller. */
        if (rep->kind == UL_MSG_REPLY)
            s_send_internal(b, to, rep, rc);
        return -2;
    }
    return ul_broker_send_raw(b, to, b->out.data, b->out.len);
}

int ul_broker_send(uvmlease_broker *b, const broute *to, ul_reply *rep)
{
    int rc = s_send(b, to, rep);
    if (rc != 0 && (unsigned)rep->kind < sizeof b->undelivered / sizeof b->undelivered[0])
        b->undelivered[rep->kind]++;
    return rc;
}

/* ---- lost grants -------------------------------------------------------- */

void ul_broker_grant_lost(uvmlease_broker *b, const lt_lease *l, int sent)
{
    char pidbuf[16], lease[24];
    snprintf(pidbuf, sizeof pidbuf, "%u", l->pid);
    s_u64(lease, sizeof lease, l->id);
    ul_log(&b->log, UL_LOG_WARN, "grant undeliverable", "uvm", l->uvm->id, "pid", pidbuf, "lease",
           lease, "why", sent == -1 ? "connection gone" : "connection full", NULL);
    if (b->n_lost == b->lost_cap) {
        uint32_t ncap = b->lost_cap ? b->lost_cap * 2 : 16;
        uint64_t *n = realloc(b->lost, ncap * sizeof *n);
        if (!n) {
            /* The lease stays with a holder that does not know it until
             * that process exits or cancels the acquire. */
            ul_log(&b->log, UL_LOG_ERROR, "cannot undo an undeliverable grant", "lease", lease,
                   NULL);
            return;
        }
        b->lost = n;
        b->lost_cap = ncap;
    }
    b->lost[b->n_lost++] = l->id;
}

void ul_broker_undo_lost(uvmlease_broker *b)
{
    while (b->n_lost > 0) {
        uint64_t id = b->lost[--b->n_lost];
        lt_lease *l = lt_lease_find(b->table, id);
        /* Gone already (its holder exited meanwhile): nothing to undo. */
        if (l && l->owner)
            lt_release_as(b->table, l->owner, id, LT_R_UNDELIVERABLE, ul_now_ms());
    }
}

void ul_broker_fill_holder(const uvmlease_broker *b, const lt_lease *l, uint64_t now, ul_holder *h,
                           bool with_phases)
{
    memset(h, 0, sizeof *h);
    const lt_owner *o = l->owner ? l->owner : l->child;
    h->lease = l->id;
    h->fence = l->fence;
    if (o) {
        h->pid = o->id.pid;
        h->uid = o->id.uid;
        snprintf(h->comm, sizeof h->comm, "%s", o->id.comm);
    }
    if (l->child)
        h->child_pid = l->child->id.pid;
    snprintf(h->label, sizeof h->label, "%s", l->label);
    snprintf(h->phase, sizeof h->phase, "%s", l->phase);
    h->held_ms = now - l->granted_at;
    h->phase_ms = l->phase[0] ? now - l->phase_at : 0;
    h->overdue = l->overdue;
    if (with_phases) {
        /* The history shows the phases reported; a "" that cleared the
         * phase is no phase (a phase-record's phase is never empty). */
        for (uint32_t i = 0; i < l->n_phases && i < UL_PHASES_MAX; i++) {
            if (!l->phases[i].phase[0])
                continue;
            h->phases[h->n_phases] = l->phases[i];
            h->phases[h->n_phases++].at_ms = ul_broker_wall_of(b, l->phases[i].at_ms);
        }
    }
}

/* ---- table events ------------------------------------------------------ */

/* A lease or waiter of o ended inside a table call: count it, and look at
 * the process once the call has returned (forgetting it now would free an
 * owner the table is still using). */
static void s_proc_touch(uvmlease_broker *b, const lt_owner *o)
{
    bproc *p = o ? o->user : NULL;
    if (p && !ul_list_linked(&p->check_link))
        ul_list_insert_tail(&b->check, &p->check_link);
}

static void s_proc_inactive(uvmlease_broker *b, const lt_owner *o)
{
    bproc *p = o ? o->user : NULL;
    if (p && p->n_active > 0)
        p->n_active--;
    s_proc_touch(b, o);
}

static void s_on_event(void *ctx, const lt_event *ev)
{
    uvmlease_broker *b = ctx;
    char pidbuf[16] = "", fence[24] = "", lease[24] = "", dur[24] = "";
    switch (ev->type) {
    case LT_EV_GRANTED: {
        const lt_lease *l = ev->lease;
        const lt_owner *o = l->owner;
        snprintf(pidbuf, sizeof pidbuf, "%u", o ? o->id.pid : 0);
        s_u64(fence, sizeof fence, l->fence);
        s_u64(lease, sizeof lease, l->id);
        s_u64(dur, sizeof dur, l->waited_ms);
        ul_log(&b->log, UL_LOG_INFO, "grant", "uvm", l->uvm->id, "pid", pidbuf, "comm",
               o ? o->id.comm : "", "label", l->label, "lease", lease, "fence", fence, "waited_ms",
               dur, NULL);
        if (ev->waiter) {
            ul_reply rep;
            memset(&rep, 0, sizeof rep);
            rep.kind = UL_MSG_GRANT;
            rep.rid = ev->waiter->rid;
            rep.lease = l->id;
            rep.fence = l->fence;
            snprintf(rep.uvm, sizeof rep.uvm, "%s", l->uvm->id);
            int sent = ul_broker_send(b, ev->waiter->user, &rep);
            /* A holder that never learns of its grant would keep the UVM
             * for its whole life: undone once the table call returns. */
            if (sent != 0)
                ul_broker_grant_lost(b, l, sent);
        }
        break;
    }
    case LT_EV_FAILED: {
        const lt_waiter *w = ev->waiter;
        snprintf(pidbuf, sizeof pidbuf, "%u", w->owner ? w->owner->id.pid : 0);
        s_u64(dur, sizeof dur, ev->now - w->enqueued_at);
        const char *what = ev->err == UVMLEASE_ETIMEDOUT    ? "timeout"
                           : ev->err == UVMLEASE_ECANCELLED ? "cancel"
                                                            : "acquire failed";
        ul_log(&b->log, UL_LOG_INFO, what, "uvm", w->uvm->id, "pid", pidbuf, "label", w->label,
               "err", ul_status_name(ev->err), "waited_ms", dur, NULL);
        ul_reply rep;
        memset(&rep, 0, sizeof rep);
        rep.kind = UL_MSG_ACQUIRE_FAILED;
        rep.rid = w->rid;
        rep.err = (uint32_t)ev->err;
        snprintf(rep.uvm, sizeof rep.uvm, "%s", w->uvm->id);
        if (ev->holder) {
            rep.has_holder = true;
            ul_broker_fill_holder(b, ev->holder, ev->now, &rep.holder, false);
        }
        if (ul_broker_send(b, w->user, &rep) != 0)
            /* Nothing to undo: the waiter is gone either way. */
            ul_log(&b->log, UL_LOG_INFO, "acquire end undeliverable", "uvm", w->uvm->id, "pid",
                   pidbuf, NULL);
        free(w->user);
        ev->waiter->user = NULL;
        s_proc_inactive(b, w->owner);
        break;
    }
    case LT_EV_RELEASED: {
        lt_lease *l = ev->lease;
        const lt_owner *o = l->owner ? l->owner : l->child;
        snprintf(pidbuf, sizeof pidbuf, "%u", o ? o->id.pid : 0);
        s_u64(lease, sizeof lease, l->id);
        s_u64(dur, sizeof dur, ev->now - l->granted_at);
        ul_log(&b->log, ev->reason == LT_R_RELEASED ? UL_LOG_INFO : UL_LOG_WARN, "release", "uvm",
               l->uvm->id, "pid", pidbuf, "label", l->label, "lease", lease, "reason",
               lt_reason_name(ev->reason), "held_ms", dur, NULL);
        /* A killed holder is dead by the time its lease is released:
         * nothing is sent for a kill (PROTOCOL.md 6.2). */
        if (ev->reason == LT_R_REVOKED) {
            ul_reply rep;
            memset(&rep, 0, sizeof rep);
            rep.kind = UL_MSG_REVOKED;
            rep.lease = l->id;
            snprintf(rep.uvm, sizeof rep.uvm, "%s", l->uvm->id);
            snprintf(rep.reason, sizeof rep.reason, "%s",
                     b->revoke_reason ? b->revoke_reason : lt_reason_name(ev->reason));
            /* Nothing to undo: its later calls on the lease get "revoked". */
            if (ul_broker_send(b, l->user, &rep) != 0)
                ul_log(&b->log, UL_LOG_WARN, "revoke notice undeliverable", "uvm", l->uvm->id,
                       "pid", pidbuf, "lease", lease, NULL);
        }
        ul_persist_release(b, l->id);
        free(l->user);
        l->user = NULL;
        s_proc_inactive(b, l->owner);
        s_proc_touch(b, l->child); /* an anchor is not counted, but may now be idle */
        break;
    }
    case LT_EV_OVERDUE: {
        const lt_lease *l = ev->lease;
        const lt_owner *o = l->owner ? l->owner : l->child;
        snprintf(pidbuf, sizeof pidbuf, "%u", o ? o->id.pid : 0);
        s_u64(dur, sizeof dur, ev->now - l->granted_at);
        ul_log(&b->log, UL_LOG_WARN, "lease overdue", "uvm", l->uvm->id, "pid", pidbuf, "comm",
               o ? o->id.comm : "", "label", l->label, "phase", l->phase, "held_ms", dur, NULL);
        break;
    }
    case LT_EV_PHASE: {
        const lt_lease *l = ev->lease;
        snprintf(pidbuf, sizeof pidbuf, "%u", l->owner ? l->owner->id.pid : 0);
        ul_log(&b->log, UL_LOG_INFO, "phase", "uvm", l->uvm->id, "pid", pidbuf, "label", l->label,
               "phase", l->phase, NULL);
        break;
    }
    case LT_EV_QUEUED: {
        const lt_waiter *w = ev->waiter;
        snprintf(pidbuf, sizeof pidbuf, "%u", w->owner ? w->owner->id.pid : 0);
        ul_log(&b->log, UL_LOG_DEBUG, "queued", "uvm", w->uvm->id, "pid", pidbuf, "label", w->label,
               NULL);
        break;
    }
    case LT_EV_DRAIN:
    case LT_EV_UNDRAIN:
        ul_log(&b->log, UL_LOG_INFO, ev->type == LT_EV_DRAIN ? "drain" : "undrain", "uvm",
               ev->uvm ? ev->uvm->id : "", NULL);
        break;
    }
    ul_broker_event_hook(b, ev);
}

/* ---- rejected input ---------------------------------------------------- */

/* Token bucket: a flood of bad messages must not become a flood of log
 * lines. */
void ul_broker_log_reject(uvmlease_broker *b, uint32_t pid, int code, const char *what)
{
    uint64_t now = ul_now_ms();
    uint64_t elapsed = now - b->reject_refill_at;
    if (elapsed >= 1000 / S_REJECT_PER_SEC) {
        uint64_t add = elapsed * S_REJECT_PER_SEC / 1000;
        b->reject_tokens =
            b->reject_tokens + add > S_REJECT_BURST ? S_REJECT_BURST : b->reject_tokens + add;
        b->reject_refill_at = now;
    }
    b->rejected_total++;
    if ((unsigned)code < sizeof b->rejected_by_code / sizeof b->rejected_by_code[0])
        b->rejected_by_code[code]++;
    if (b->reject_tokens == 0) {
        b->reject_suppressed++;
        return;
    }
    b->reject_tokens--;
    char pidbuf[16], sup[24];
    snprintf(pidbuf, sizeof pidbuf, "%u", pid);
    s_u64(sup, sizeof sup, b->reject_suppressed);
    b->reject_suppressed = 0;
    ul_log(&b->log, UL_LOG_WARN, "rejected input", "pid", pidbuf, "err", ul_status_name(code),
           "what", what, "suppressed", sup, NULL);
}

/* ---- receiving --------------------------------------------------------- */

/* Receive one whole message. Returns 1 if one was handled, 0 if none was
 * waiting. */
static int s_recv_one(uvmlease_broker *b)
{
    zmq_msg_t idf, body;
    zmq_msg_init(&idf);
    if (zmq_msg_recv(&idf, b->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&idf);
        return 0;
    }
    broute route;
    memset(&route, 0, sizeof route);
    size_t idlen = zmq_msg_size(&idf);
    if (idlen > 0 && idlen <= sizeof route.id) {
        route.len = (uint8_t)idlen;
        memcpy(route.id, zmq_msg_data(&idf), idlen);
    }
    bool more = zmq_msg_more(&idf);
    zmq_msg_close(&idf);
    if (!more)
        return 1; /* a ROUTER always prefixes the identity; nothing to read */

    zmq_msg_init(&body);
    if (zmq_msg_recv(&body, b->router, 0) < 0) {
        zmq_msg_close(&body);
        return 1;
    }
    /* Identity is the connection's pinned process, never the pid read at
     * request time (conn.h). */
    ul_peer peer = {.route = &route};
    const char *why = NULL;
    int refused = ul_conn_identify(b, &body, &peer, &why);
    uint32_t pid = peer.pid;
    int extra = 0;
    if (zmq_msg_more(&body)) {
        /* Drain the remaining frames: one message, one body frame. */
        zmq_msg_t x;
        zmq_msg_init(&x);
        while (zmq_msg_recv(&x, b->router, 0) >= 0) {
            extra++;
            if (!zmq_msg_more(&x))
                break;
        }
        zmq_msg_close(&x);
    }
    if (b->log.min_level <= UL_LOG_DEBUG) {
        char pidbuf[16], lenbuf[16];
        snprintf(pidbuf, sizeof pidbuf, "%u", pid);
        snprintf(lenbuf, sizeof lenbuf, "%zu", zmq_msg_size(&body));
        ul_log(&b->log, UL_LOG_DEBUG, "message", "pid", pidbuf, "bytes", lenbuf, NULL);
    }
    if (refused) {
        /* Refused whatever it asks, before any table operation; decoding
         * only finds the rid, so the client can match the refusal to its
         * request. */
        ul_request req;
        ul_request_decode(zmq_msg_data(&body), zmq_msg_size(&body), &req);
        ul_broker_reply_error(b, &peer, &req, UVMLEASE_EPEER, why);
        ul_broker_log_reject(b, pid, UVMLEASE_EPEER, why);
    } else if (extra) {
        ul_broker_reply_error(b, &peer, NULL, UVMLEASE_EMULTIPART, "send one frame per message");
        ul_broker_log_reject(b, pid, UVMLEASE_EMULTIPART, "frames");
    } else {
        ul_broker_handle(b, &peer, zmq_msg_data(&body), zmq_msg_size(&body));
    }
    zmq_msg_close(&body);
    return 1;
}

/* ---- the loop ---------------------------------------------------------- */

static void s_handle_exits(uvmlease_broker *b)
{
    struct epoll_event evs[64];
    int n = epoll_wait(b->epfd, evs, 64, 0);
    for (int i = 0; i < n; i++) {
        bproc *p = evs[i].data.ptr;
        s_proc_gone(b, p, p->kill_pending ? LT_R_KILLED : LT_R_HOLDER_EXIT);
    }
}

static void *s_run(void *arg)
{
    uvmlease_broker *b = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    zmq_pollitem_t items[3 + UL_CONN_NITEMS] = {
        {.socket = b->router, .events = ZMQ_POLLIN},
        {.fd = b->stop_efd, .events = ZMQ_POLLIN},
        {.fd = b->epfd, .events = ZMQ_POLLIN},
    };
    ul_conn_pollitems(b, items + 3);
    for (;;) {
        uint64_t now = ul_now_ms();
        uint64_t next = lt_tick(b->table, now);
        uint64_t next2 = ul_broker_timers(b, now);
        uint64_t next3 = ul_persist_tick(b, now);
        uint64_t next4 = ul_heartbeat_tick(b, now);
        ul_broker_proc_check_idle(b);
        if (next2 < next)
            next = next2;
        if (next3 < next)
            next = next3;
        if (next4 < next)
            next = next4;
        long timeout = -1;
        if (next != LT_NEVER)
            timeout = next > now ? (long)(next - now) : 0;
        if (timeout > 60000)
            timeout = 60000;
        int rc = zmq_poll(items, 3 + UL_CONN_NITEMS, timeout);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            if (zmq_errno() == ETERM)
                break;
            ul_log(&b->log, UL_LOG_ERROR, "poll failed", "err", zmq_strerror(zmq_errno()), NULL);
            break;
        }
        if (items[1].revents & ZMQ_POLLIN)
            break;
        /* Connections first: a message is identified by the process pinned
         * when its connection was accepted. */
        ul_conn_service(b, items + 3);
        /* Deaths first: a message that follows a death must not find the
         * dead holder still holding. */
        if (items[2].revents & ZMQ_POLLIN)
            s_handle_exits(b);
        if (items[0].revents & ZMQ_POLLIN) {
            /* Deadlines that passed while we slept are settled before any
             * release is processed, and the table refuses to grant a
             * waiter whose deadline has passed in any case. */
            lt_tick(b->table, ul_now_ms());
            ul_broker_undo_lost(b);
            for (int i = 0; i < S_MAX_BATCH; i++)
                if (!s_recv_one(b))
                    break;
            ul_broker_proc_check_idle(b);
        }
    }
    return NULL;
}

/* ---- start / stop ------------------------------------------------------ */

static void s_free(uvmlease_broker *b)
{
    if (!b)
        return;
    ul_conn_close(b);
    if (b->router)
        zmq_close(b->router);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    if (b->procs) {
        for (uint32_t i = 0; i < b->proc_cap; i++) {
            for (bproc *p = b->procs[i], *next; p; p = next) {
                next = p->hnext;
                if (p->pidfd >= 0)
                    close(p->pidfd);
                if (p->owner)
                    s_drop_routes(p->owner);
                free(p);
            }
        }
        free(b->procs);
    }
    ul_broker_admin_free(b);
    ul_persist_close(b);
    free(b->lost);
    lt_free(&b->table);
    ul_runtime_close(&b->rt);
    if (b->stop_efd >= 0)
        close(b->stop_efd);
    if (b->epfd >= 0)
        close(b->epfd);
    ul_buf_free(&b->out);
    free(b->socket_group);
    free(b->admin_group_name);
    free(b);
}

/* A broker with its configuration copied and nothing opened yet. */
static uvmlease_broker *s_new(const uvmlease_broker_config *cfg)
{
    uvmlease_broker *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->stop_efd = -1;
    b->epfd = -1;
    b->rt.lock_fd = -1;
    b->cfg = *cfg;
    b->socket_group = s_strdup_or_null(cfg->socket_group);
    b->admin_group_name = s_strdup_or_null(cfg->admin_group);
    b->cfg.runtime_dir = NULL;
    b->cfg.endpoint = NULL;
    b->cfg.socket_group = b->socket_group;
    b->cfg.admin_group = b->admin_group_name;
    b->max_leases = cfg->max_leases ? cfg->max_leases : UL_MAX_ACTIVE_TOTAL;
    b->log.min_level = cfg->log_level;
    b->log.sink = cfg->log_sink;
    b->log.ctx = cfg->log_ctx;
    b->instance = ul_random64();
    ul_list_init(&b->idle);
    ul_list_init(&b->check);
    b->reject_tokens = S_REJECT_BURST;
    b->reject_refill_at = ul_now_ms();
    b->wall_base_ms = ul_wall_ms() - ul_now_ms();
    return b;
}

static void s_log_journal(uvmlease_broker *b, const ul_journal_load *ld, size_t restored)
{
    if (ld->created && !ld->n)
        return;
    char r[24], d[24], torn[24], bad[24], sup[24];
    s_u64(r, sizeof r, restored);
    s_u64(d, sizeof d, ld->n - restored);
    s_u64(torn, sizeof torn, ld->torn);
    s_u64(bad, sizeof bad, ld->invalid);
    s_u64(sup, sizeof sup, ld->superseded);
    bool warn = ld->torn || ld->invalid || ld->header_lost;
    ul_log(&b->log, warn ? UL_LOG_WARN : UL_LOG_INFO, "journal read", "path",
           ul_journal_path(b->journal), "restored", r, "holder_gone", d, "torn_rolled_back", torn,
           "invalid_dropped", bad, "superseded", sup, "header", ld->header_lost ? "lost" : "ok",
           NULL);
}

/* The journal, the lease table above its high-water marks, and the
 * leases whose holders still run. */
static int s_open_state(uvmlease_broker *b, char *err, size_t errsz)
{
    ul_journal_load ld;
    int rc = ul_persist_open(b, &ld, err, errsz);
    if (rc)
        return rc;
    /* Lease ids and fences only go up, across broker instances too: above
     * the journal's marks, and above the wall clock in microseconds for a
     * journal lost with the host's tmpfs. */
    uint64_t floor = ul_wall_us();
    lt_config tc = {
        .serialize = b->cfg.serialize,
        .max_active = b->cfg.max_active,
        .quarantine_ms = b->cfg.quarantine_ms,
        .hold_warn_ms = b->cfg.hold_warn_ms,
        .fence_floor = floor > ld.fence_hw ? floor : ld.fence_hw,
        .lease_id_floor = floor > ld.lease_hw ? floor : ld.lease_hw,
        /* Peers choose UVM ids: a secret hash key keeps them from
         * crafting collisions. */
        .hash_key = {ul_random64(), ul_random64()},
        .on_event = s_on_event,
        .persist = ul_persist_grant,
        .ctx = b,
    };
    b->table = lt_new(&tc);
    b->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    b->zctx = zmq_ctx_new();
    if (!b->table || b->stop_efd < 0 || b->epfd < 0 || !b->zctx) {
        snprintf(err, errsz, "cannot allocate broker resources: %s", strerror(errno));
        free(ld.recs);
        return UVMLEASE_ESYSTEM;
    }
    size_t restored = ul_persist_restore(b, &ld);
    s_log_journal(b, &ld, restored);
    free(ld.recs);
    return 0;
}

static int s_open_socket(uvmlease_broker *b, char *err, size_t errsz)
{
    zmq_ctx_set(b->zctx, ZMQ_IO_THREADS, 1);
    zmq_ctx_set(b->zctx, ZMQ_BLOCKY, 0);
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    int linger = 0, mandatory = 1;
    int64_t maxmsg = UL_MAX_REQUEST;
    int hwm = 1000;
    if (!b->router || zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) < 0 ||
        zmq_setsockopt(b->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) < 0 ||
        zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm) < 0 ||
        zmq_setsockopt(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm) < 0) {
        snprintf(err, errsz, "cannot create socket: %s", zmq_strerror(zmq_errno()));
        return UVMLEASE_ESYSTEM;
    }
    int rc = ul_conn_open(b, err, errsz);
    if (rc)
        return rc;
    if (zmq_bind(b->router, b->rt.endpoint) < 0) {
        snprintf(err, errsz, "cannot bind %s: %s", b->rt.endpoint, zmq_strerror(zmq_errno()));
        return UVMLEASE_ESYSTEM;
    }
    return ul_runtime_secure_socket(&b->rt, err, errsz);
}

static int s_start(uvmlease_broker *b, const uvmlease_broker_config *cfg, pid_t *other_pid,
                   char *err, size_t errsz)
{
    if (cfg->admin_group) {
        gid_t g;
        if (ul_resolve_group(cfg->admin_group, &g) < 0) {
            snprintf(err, errsz, "unknown admin group '%s'", cfg->admin_group);
            return UVMLEASE_EINVAL;
        }
        b->admin_gid = g;
        b->have_admin_gid = true;
    }
    int rc = ul_runtime_open(&b->rt, cfg->runtime_dir, cfg->endpoint, cfg->socket_group, other_pid,
                             err, errsz);
    if (!rc)
        rc = s_open_state(b, err, errsz);
    if (!rc)
        rc = s_open_socket(b, err, errsz);
    if (!rc && pthread_create(&b->thread, NULL, s_run, b) != 0) {
        snprintf(err, errsz, "cannot start broker thread");
        rc = UVMLEASE_ESYSTEM;
    }
    return rc;
}

int uvmlease_broker_start(const uvmlease_broker_config *cfg, uvmlease_broker **out,
                          pid_t *other_pid, char *err, size_t errsz)
{
    if (errsz)
        err[0] = '\0';
    if (other_pid)
        *other_pid = 0;
    *out = NULL;
    uvmlease_broker *b = s_new(cfg);
    if (!b) {
        snprintf(err, errsz, "out of memory");
        return UVMLEASE_ENOMEM;
    }
    int rc = s_start(b, cfg, other_pid, err, errsz);
    if (rc) {
        s_free(b);
        return rc;
    }
    char inst[24], pidbuf[16], slots[24];
    snprintf(inst, sizeof inst, "%016llx", (unsigned long long)b->instance);
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)getpid());
    s_u64(slots, sizeof slots, b->max_leases);
    ul_log(&b->log, UL_LOG_INFO, "broker started", "endpoint", b->rt.endpoint, "instance", inst,
           "pid", pidbuf, "serialize",
           cfg->serialize == LT_SERIALIZE_ALL    ? "all"
           : cfg->serialize == LT_SERIALIZE_NONE ? "none"
                                                 : "confidential",
           "max_leases", slots, "journal", ul_journal_path(b->journal), NULL);
    *out = b;
    return 0;
}

void uvmlease_broker_stop(uvmlease_broker **bp)
{
    if (!bp || !*bp)
        return;
    uvmlease_broker *b = *bp;
    uint64_t one = 1;
    if (write(b->stop_efd, &one, sizeof one) < 0) {
        /* eventfd writes only fail on overflow; the loop wakes anyway. */
    }
    pthread_join(b->thread, NULL);
    const lt_stats *st = lt_stats_get(b->table);
    char h[24], w[24];
    s_u64(h, sizeof h, st->holders);
    s_u64(w, sizeof w, st->waiters);
    ul_log(&b->log, UL_LOG_INFO, "broker stopped", "endpoint", b->rt.endpoint, "holders", h,
           "waiters", w, NULL);
    s_free(b);
    *bp = NULL;
}

const char *uvmlease_broker_endpoint(const uvmlease_broker *b)
{
    return b->rt.endpoint;
}

uint64_t uvmlease_broker_instance(const uvmlease_broker *b)
{
    return b->instance;
}
