/*
 * events.c — what the broker does when the lease table reports an event
 * (lt_config.on_event). A small dispatcher hands each event to handlers
 * that do one thing each — persist it, tell the client it concerns, log
 * it, feed the watchers and histograms, account for the process — in that
 * order (the last one frees the reply routes the others use). Runs
 * inside a table call: nothing here calls back into the table.
 */
#include "events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "persist.h"
#include "procs.h"
#include "send.h"
#include "watch.h"

static void s_u64(char *out, size_t n, uint64_t v)
{
    snprintf(out, n, "%llu", (unsigned long long)v);
}

static uint32_t s_lease_pid(const lt_lease *l)
{
    const lt_owner *o = l->owner ? l->owner : l->child;
    return o ? o->id.pid : 0;
}

/* ---- log ------------------------------------------------------------------ */

static void s_log_lease(uvmlease_broker *b, const lt_event *ev)
{
    const lt_lease *l = ev->lease;
    const lt_owner *o = l->owner ? l->owner : l->child;
    char pid[16], lease[24], fence[24], dur[24];
    snprintf(pid, sizeof pid, "%u", s_lease_pid(l));
    s_u64(lease, sizeof lease, l->id);
    s_u64(fence, sizeof fence, l->fence);
    const char *comm = o ? o->id.comm : "";
    switch (ev->type) {
    case LT_EV_GRANTED:
        s_u64(dur, sizeof dur, l->waited_ms);
        ul_log(&b->log, UL_LOG_INFO, "grant", "uvm", l->uvm->id, "pid", pid, "comm", comm, "label",
               l->label, "lease", lease, "fence", fence, "waited_ms", dur, NULL);
        break;
    case LT_EV_RELEASED:
        s_u64(dur, sizeof dur, ev->now - l->granted_at);
        ul_log(&b->log, ev->reason == LT_R_RELEASED ? UL_LOG_INFO : UL_LOG_WARN, "release", "uvm",
               l->uvm->id, "pid", pid, "label", l->label, "lease", lease, "reason",
               lt_reason_name(ev->reason), "held_ms", dur, NULL);
        break;
    case LT_EV_OVERDUE:
        s_u64(dur, sizeof dur, ev->now - l->granted_at);
        ul_log(&b->log, UL_LOG_WARN, "lease overdue", "uvm", l->uvm->id, "pid", pid, "comm", comm,
               "label", l->label, "phase", l->phase, "held_ms", dur, NULL);
        break;
    default: /* LT_EV_PHASE */
        ul_log(&b->log, UL_LOG_INFO, "phase", "uvm", l->uvm->id, "pid", pid, "label", l->label,
               "phase", l->phase, NULL);
        break;
    }
}

static void s_log_waiter(uvmlease_broker *b, const lt_event *ev)
{
    const lt_waiter *w = ev->waiter;
    char pid[16], dur[24];
    snprintf(pid, sizeof pid, "%u", w->owner ? w->owner->id.pid : 0);
    if (ev->type == LT_EV_QUEUED) {
        ul_log(&b->log, UL_LOG_DEBUG, "queued", "uvm", w->uvm->id, "pid", pid, "label", w->label,
               NULL);
        return;
    }
    s_u64(dur, sizeof dur, ev->now - w->enqueued_at);
    const char *what = ev->err == UVMLEASE_ETIMEDOUT    ? "timeout"
                       : ev->err == UVMLEASE_ECANCELLED ? "cancel"
                                                        : "acquire failed";
    ul_log(&b->log, UL_LOG_INFO, what, "uvm", w->uvm->id, "pid", pid, "label", w->label, "err",
           ul_status_name(ev->err), "waited_ms", dur, NULL);
}

static void s_log(uvmlease_broker *b, const lt_event *ev)
{
    switch (ev->type) {
    case LT_EV_FAILED:
    case LT_EV_QUEUED:
        s_log_waiter(b, ev);
        break;
    case LT_EV_DRAIN:
    case LT_EV_UNDRAIN:
        ul_log(&b->log, UL_LOG_INFO, ev->type == LT_EV_DRAIN ? "drain" : "undrain", "uvm",
               ev->uvm ? ev->uvm->id : "", NULL);
        break;
    default:
        s_log_lease(b, ev);
        break;
    }
}

/* ---- persist (grants are written before they happen: ul_persist_grant) */

static void s_persist(uvmlease_broker *b, const lt_event *ev)
{
    if (ev->type == LT_EV_RELEASED)
        ul_persist_release(b, ev->lease->id);
}

/* ---- tell the client ---------------------------------------------------------- */

static void s_send_grant(uvmlease_broker *b, const lt_event *ev)
{
    const lt_lease *l = ev->lease;
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_GRANT;
    rep.rid = ev->waiter->rid;
    rep.lease = l->id;
    rep.fence = l->fence;
    snprintf(rep.uvm, sizeof rep.uvm, "%s", l->uvm->id);
    int sent = ul_broker_send(b, ev->waiter->user, &rep);
    /* A holder that never learns of its grant would keep the UVM for its
     * whole life: undone once the table call returns. */
    if (sent != 0)
        ul_broker_grant_lost(b, l, sent);
}

static void s_send_failed(uvmlease_broker *b, const lt_event *ev)
{
    const lt_waiter *w = ev->waiter;
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
    /* Nothing to undo when it cannot be sent: the waiter is gone anyway. */
    if (ul_broker_send(b, w->user, &rep) != 0)
        ul_log(&b->log, UL_LOG_INFO, "acquire end undeliverable", "uvm", w->uvm->id, NULL);
}

/* A killed holder is dead by the time its lease is released: nothing is
 * sent for a kill (PROTOCOL.md 6.2). */
static void s_send_revoked(uvmlease_broker *b, const lt_event *ev)
{
    const lt_lease *l = ev->lease;
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_REVOKED;
    rep.lease = l->id;
    snprintf(rep.uvm, sizeof rep.uvm, "%s", l->uvm->id);
    snprintf(rep.reason, sizeof rep.reason, "%s",
             b->revoke_reason ? b->revoke_reason : lt_reason_name(ev->reason));
    /* Nothing to undo: its later calls on the lease get "revoked". */
    if (ul_broker_send(b, l->user, &rep) != 0)
        ul_log(&b->log, UL_LOG_WARN, "revoke notice undeliverable", "uvm", l->uvm->id, NULL);
}

static void s_notify(uvmlease_broker *b, const lt_event *ev)
{
    if (ev->type == LT_EV_GRANTED && ev->waiter)
        s_send_grant(b, ev);
    else if (ev->type == LT_EV_FAILED)
        s_send_failed(b, ev);
    else if (ev->type == LT_EV_RELEASED && ev->reason == LT_R_REVOKED)
        s_send_revoked(b, ev);
}

/* ---- account for the process ------------------------------------------------- */

static void s_account(uvmlease_broker *b, const lt_event *ev)
{
    if (ev->type == LT_EV_FAILED) {
        free(ev->waiter->user);
        ev->waiter->user = NULL;
        ul_proc_inactive(b, ev->waiter->owner);
    } else if (ev->type == LT_EV_RELEASED) {
        lt_lease *l = ev->lease;
        free(l->user);
        l->user = NULL;
        ul_proc_inactive(b, l->owner);
        ul_proc_touch(b, l->child); /* an anchor is not counted, but may now be idle */
    }
}

typedef void (*s_handler)(uvmlease_broker *b, const lt_event *ev);

/* The client hears first; logging and watchers follow (they cost writes
 * the client need not wait for). */
static const s_handler s_handlers[] = {s_persist, s_notify, s_log, ul_watch_table_event, s_account};

void ul_broker_on_event(void *ctx, const lt_event *ev)
{
    uvmlease_broker *b = ctx;
    for (size_t i = 0; i < sizeof s_handlers / sizeof s_handlers[0]; i++)
        s_handlers[i](b, ev);
}
