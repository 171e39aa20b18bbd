/*
 * events.c — what the broker does when the lease table reports an event
 * (lt_config.on_event): log it, persist it, tell the client it concerns,
 * and let the process registry and the watchers know. Runs inside a table
 * call: nothing here calls back into the table.
 */
#include "events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "watch.h"
#include "persist.h"
#include "procs.h"
#include "send.h"

static void s_u64(char *out, size_t n, uint64_t v)
{
    snprintf(out, n, "%llu", (unsigned long long)v);
}

/* ---- table events ------------------------------------------------------ */

void ul_broker_on_event(void *ctx, const lt_event *ev)
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
        ul_proc_inactive(b, w->owner);
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
        ul_proc_inactive(b, l->owner);
        ul_proc_touch(b, l->child); /* an anchor is not counted, but may now be idle */
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
    ul_watch_table_event(b, ev);
}
