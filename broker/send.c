/*
 * send.c — everything that leaves the broker: encoding (a reply that cannot
 * be encoded still gets an answer), sending to a route, counting what could
 * not be sent, undoing grants that could not be delivered, and the
 * rate-limited log of rejected input.
 */
#include "send.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "ul_sys.h"

/* The table's fields are copied into wire fields of the same size. */
_Static_assert(LT_MAX_UVM == UL_MAX_UVM && LT_MAX_LABEL == UL_MAX_LABEL &&
                   LT_MAX_PHASE == UL_MAX_PHASE && LT_MAX_COMM == UL_MAX_COMM &&
                   LT_PHASES_MAX == UL_PHASES_MAX,
               "lease table and wire limits differ");

#define S_REJECT_PER_SEC 5 /* rejected-input log lines: sustained rate (burst: UL_REJECT_BURST) */

static void s_u64(char *out, size_t n, uint64_t v)
{
    snprintf(out, n, "%llu", (unsigned long long)v);
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
            ul_phase_rec *r = &h->phases[h->n_phases++];
            memcpy(r->phase, l->phases[i].phase, sizeof r->phase);
            r->at_ms = ul_broker_wall_of(b, l->phases[i].at_ms);
        }
    }
}

/* ---- rejected input ---------------------------------------------------- */

/* Token bucket: a flood of bad messages must not become a flood of log
 * lines. */
void ul_broker_log_reject(uvmlease_broker *b, uint32_t pid, int code, const char *what)
{
    b->rejected_total++;
    if ((unsigned)code < sizeof b->rejected_by_code / sizeof b->rejected_by_code[0])
        b->rejected_by_code[code]++;
    uint64_t suppressed = 0;
    if (!ul_log_rate_take(&b->reject_rate, ul_now_ms(), UL_REJECT_BURST, S_REJECT_PER_SEC,
                          &suppressed))
        return;
    char pidbuf[16], sup[24];
    snprintf(pidbuf, sizeof pidbuf, "%u", pid);
    s_u64(sup, sizeof sup, suppressed);
    ul_log(&b->log, UL_LOG_WARN, "rejected input", "pid", pidbuf, "err", ul_status_name(code),
           "what", what, "suppressed", sup, NULL);
}

/* ---- replies ------------------------------------------------------------ */

void ul_reply_init(ul_reply *rep, const ul_request *req)
{
    memset(rep, 0, sizeof *rep);
    rep->kind = UL_MSG_REPLY;
    if (req) {
        rep->rid = req->rid;
        rep->op = req->op;
    }
}

void ul_broker_reply_error(uvmlease_broker *b, const ul_peer *peer, const ul_request *req, int code,
                           const char *detail)
{
    ul_reply rep;
    ul_reply_init(&rep, req);
    rep.err = (uint32_t)code;
    if (detail)
        snprintf(rep.detail, sizeof rep.detail, "%s", detail);
    ul_broker_send(b, peer->route, &rep);
}
