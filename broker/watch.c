/*
 * watch.c — the live event stream and the latency histograms, both fed by
 * table events: watchers (at most 4 per process, 64 in all) get every
 * event encoded once; a watcher whose connection is gone is dropped.
 */
#include "watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "send.h"
#include "ul_sys.h"

#define S_MAX_WATCHERS             64
#define S_MAX_WATCHERS_PER_PROCESS 4

/* Histogram bucket upper bounds, microseconds. */
static const uint64_t s_bounds_us[] = {
    1000,    2000,    5000,    10000,    25000,    50000,    100000,    250000,    500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000, 600000000,
};
#define S_NBOUNDS (sizeof s_bounds_us / sizeof s_bounds_us[0])

/* Phases with a histogram of their own; anything else counts as "other"
 * (phase names are client text: no unbounded label cardinality). */
static const char *const s_known_phases[] = {"cim-mount", "scratch-attach", "combine-layers",
                                             "guest-create", "other"};
#define S_NPHASES (sizeof s_known_phases / sizeof s_known_phases[0])

typedef struct hist {
    uint64_t counts[S_NBOUNDS];
    uint64_t sum_us;
    uint64_t count;
} hist;

typedef struct watcher {
    broute route;
    uint32_t pid;
} watcher;

struct ul_watch {
    watcher watchers[S_MAX_WATCHERS];
    uint32_t n_watchers;
    hist wait, hold, handoff, phase[S_NPHASES];
};

static struct ul_watch *s_state(uvmlease_broker *b)
{
    if (!b->watch)
        b->watch = calloc(1, sizeof *b->watch);
    return b->watch;
}

void ul_watch_free(uvmlease_broker *b)
{
    free(b->watch);
    b->watch = NULL;
}

static void s_observe(hist *h, uint64_t us)
{
    for (size_t i = 0; i < S_NBOUNDS; i++) {
        if (us <= s_bounds_us[i]) {
            h->counts[i]++;
            break;
        }
    }
    h->sum_us += us;
    h->count++;
}

static size_t s_phase_slot(const char *phase)
{
    for (size_t i = 0; i + 1 < S_NPHASES; i++)
        if (strcmp(phase, s_known_phases[i]) == 0)
            return i;
    return S_NPHASES - 1;
}

static bool s_same_route(const broute *a, const broute *r)
{
    return a->len == r->len && memcmp(a->id, r->id, a->len) == 0;
}

int ul_watch_subscribe(uvmlease_broker *b, const ul_peer *peer, bool unwatch, const char **why)
{
    struct ul_watch *a = s_state(b);
    *why = NULL;
    if (!a)
        return UVMLEASE_ENOMEM;
    uint32_t mine = 0;
    for (uint32_t i = 0; i < a->n_watchers; i++) {
        if (s_same_route(&a->watchers[i].route, peer->route)) {
            if (unwatch)
                a->watchers[i] = a->watchers[--a->n_watchers];
            return 0;
        }
        mine += a->watchers[i].pid == peer->pid;
    }
    if (unwatch) {
        *why = "not watching";
        return UVMLEASE_EINVAL;
    }
    if (mine >= S_MAX_WATCHERS_PER_PROCESS || a->n_watchers >= S_MAX_WATCHERS) {
        *why = mine >= S_MAX_WATCHERS_PER_PROCESS ? "too many watchers in this process"
                                                  : "too many watchers";
        return UVMLEASE_ERESOURCE;
    }
    a->watchers[a->n_watchers].route = *peer->route;
    a->watchers[a->n_watchers].pid = peer->pid;
    a->n_watchers++;
    return 0;
}

void ul_watch_emit(uvmlease_broker *b, ul_event *ev)
{
    struct ul_watch *a = b->watch;
    if (!a || a->n_watchers == 0)
        return;
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    rep.kind = UL_MSG_EVENT;
    ev->at_ms = ul_wall_ms();
    rep.event = *ev;
    if (ul_broker_encode(b, &rep) != 0)
        return;
    /* Encoded once for every watcher; a watcher whose connection is gone
     * is dropped. */
    for (uint32_t i = 0; i < a->n_watchers;) {
        int sent = ul_broker_send_raw(b, &a->watchers[i].route, b->out.data, b->out.len);
        if (sent != 0)
            b->undelivered[UL_MSG_EVENT]++;
        if (sent == -1)
            a->watchers[i] = a->watchers[--a->n_watchers];
        else
            i++;
    }
}

static void s_event_from_lease(ul_event *e, ul_event_type t, const lt_lease *l)
{
    memset(e, 0, sizeof *e);
    e->type = t;
    snprintf(e->uvm, sizeof e->uvm, "%s", l->uvm->id);
    const lt_owner *o = l->owner ? l->owner : l->child;
    e->pid = o ? o->id.pid : 0;
    snprintf(e->label, sizeof e->label, "%s", l->label);
    snprintf(e->phase, sizeof e->phase, "%s", l->phase);
    e->lease = l->id;
    e->fence = l->fence;
}

void ul_watch_table_event(uvmlease_broker *b, const lt_event *ev)
{
    struct ul_watch *a = s_state(b);
    if (!a)
        return;
    ul_event e;
    switch (ev->type) {
    case LT_EV_GRANTED:
        s_observe(&a->wait, ev->lease->waited_ms * 1000);
        if (ev->waiter && ev->lease->uvm->last.valid && ev->now >= ev->lease->uvm->last.at)
            s_observe(&a->handoff, (ev->now - ev->lease->uvm->last.at) * 1000);
        s_event_from_lease(&e, UL_EV_GRANT, ev->lease);
        e.duration_ms = ev->lease->waited_ms;
        break;
    case LT_EV_RELEASED:
        s_observe(&a->hold, (ev->now - ev->lease->granted_at) * 1000);
        if (ev->lease->phase[0])
            s_observe(&a->phase[s_phase_slot(ev->lease->phase)],
                      (ev->now - ev->lease->phase_at) * 1000);
        s_event_from_lease(&e, UL_EV_RELEASE, ev->lease);
        snprintf(e.reason, sizeof e.reason, "%s", lt_reason_name(ev->reason));
        e.duration_ms = ev->now - ev->lease->granted_at;
        break;
    case LT_EV_PHASE: {
        const lt_lease *l = ev->lease;
        /* The phase before this one just ended. */
        if (l->n_phases >= 2) {
            const lt_phase_rec *prev = &l->phases[l->n_phases - 2];
            /* Time with the phase cleared ("") belongs to no phase. */
            if (prev->phase[0])
                s_observe(&a->phase[s_phase_slot(prev->phase)], (ev->now - prev->at_ms) * 1000);
        }
        s_event_from_lease(&e, UL_EV_PHASE, l);
        break;
    }
    case LT_EV_OVERDUE:
        s_event_from_lease(&e, UL_EV_OVERDUE, ev->lease);
        e.duration_ms = ev->now - ev->lease->granted_at;
        break;
    case LT_EV_FAILED:
    case LT_EV_QUEUED: {
        const lt_waiter *w = ev->waiter;
        memset(&e, 0, sizeof e);
        /* A deadline that passed while no grant could be recorded is a
         * timeout too (PROTOCOL.md 6.3), not a cancel. */
        bool deadline = ev->err == UVMLEASE_ETIMEDOUT || ev->err == UVMLEASE_EJOURNAL;
        e.type = ev->type == LT_EV_QUEUED ? UL_EV_QUEUED : deadline ? UL_EV_TIMEOUT : UL_EV_CANCEL;
        snprintf(e.uvm, sizeof e.uvm, "%s", w->uvm->id);
        e.pid = w->owner ? w->owner->id.pid : 0;
        snprintf(e.label, sizeof e.label, "%s", w->label);
        if (ev->type == LT_EV_FAILED)
            snprintf(e.reason, sizeof e.reason, "%s", ul_status_name(ev->err));
        e.duration_ms = ev->now - w->enqueued_at;
        break;
    }
    default:
        /* drain / undrain are emitted by s_control, which knows who asked. */
        return;
    }
    ul_watch_emit(b, &e);
}

void ul_watch_proc_gone(uvmlease_broker *b, const bproc *p)
{
    struct ul_watch *a = b->watch;
    for (uint32_t i = 0; a && i < a->n_watchers;) {
        if (a->watchers[i].pid == p->pid)
            a->watchers[i] = a->watchers[--a->n_watchers];
        else
            i++;
    }
}

bool ul_watch_has(const uvmlease_broker *b, uint32_t pid)
{
    const struct ul_watch *a = b->watch;
    for (uint32_t i = 0; a && i < a->n_watchers; i++)
        if (a->watchers[i].pid == pid)
            return true;
    return false;
}

static void s_hist(ul_histogram *h, uint32_t *n, const char *name, const char *lkey,
                   const char *lval, const hist *src)
{
    ul_histogram *x = &h[(*n)++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    if (lkey) {
        snprintf(x->lkey, sizeof x->lkey, "%s", lkey);
        snprintf(x->lval, sizeof x->lval, "%s", lval);
    }
    x->n_buckets = S_NBOUNDS;
    for (size_t i = 0; i < S_NBOUNDS; i++) {
        x->le_us[i] = s_bounds_us[i];
        x->counts[i] = src->counts[i];
    }
    x->sum_us = src->sum_us;
    x->count = src->count;
}

uint32_t ul_watch_hists(uvmlease_broker *b, ul_histogram *out)
{
    struct ul_watch *a = s_state(b);
    if (!a)
        return 0;
    uint32_t nh = 0;
    s_hist(out, &nh, "wait_seconds", NULL, NULL, &a->wait);
    s_hist(out, &nh, "hold_seconds", NULL, NULL, &a->hold);
    s_hist(out, &nh, "handoff_seconds", NULL, NULL, &a->handoff);
    for (size_t i = 0; i < S_NPHASES; i++)
        s_hist(out, &nh, "phase_seconds", "phase", s_known_phases[i], &a->phase[i]);
    return nh;
}
