/*
 * ctl_output_json.c — uvmleasectl's format for scripts: JSON values built
 * with jansson and serialized by jansson. Times are Unix milliseconds,
 * durations milliseconds; strings are carried as they are. One indented
 * document per command, except watch (one object per line) and ping (one
 * line).
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <string.h>

#include "ctl_output.h"
#include "ul_text.h"

/* ul_escape() turns one byte into at most four ("\xHH"). */
#define ESC_MAX (UL_MAX_REASON * 4 + 16)

/* Broker strings are valid UTF-8 (the codec checked); should one not be,
 * its escaped form is. */
static json_t *s_jstr(const char *s)
{
    json_t *v = json_string(s);
    if (!v) {
        char esc[ESC_MAX];
        ul_escape(s, strlen(s), esc, sizeof esc);
        v = json_string(esc);
    }
    return v;
}

/* jansson integers are signed 64-bit: a larger value (this broker never
 * sends one) is written as a decimal string rather than wrapped. */
static json_t *s_ju64(uint64_t v)
{
    if (v <= (uint64_t)INT64_MAX)
        return json_integer((json_int_t)v);
    char d[24];
    snprintf(d, sizeof d, "%" PRIu64, v);
    return json_string(d);
}

/*
 * Builders: s_set / s_add always take the reference to v, and once *ok is
 * false they only free what they are given, so a value is built with
 * straight-line calls and checked once at the end.
 */
static void s_set(bool *ok, json_t *obj, const char *key, json_t *v)
{
    if (!*ok || !obj || !v) {
        json_decref(v);
        *ok = false;
        return;
    }
    if (json_object_set_new(obj, key, v) != 0)
        *ok = false;
}

static void s_add(bool *ok, json_t *arr, json_t *v)
{
    if (!*ok || !arr || !v) {
        json_decref(v);
        *ok = false;
        return;
    }
    if (json_array_append_new(arr, v) != 0)
        *ok = false;
}

static json_t *s_done(bool ok, json_t *v)
{
    if (ok && v)
        return v;
    json_decref(v);
    return NULL;
}

static json_t *s_json_holder(const ul_holder *h, bool full)
{
    bool ok = true;
    json_t *o = json_object();
    s_set(&ok, o, "pid", json_integer(h->pid));
    s_set(&ok, o, "uid", json_integer(h->uid));
    s_set(&ok, o, "comm", s_jstr(h->comm));
    s_set(&ok, o, "label", s_jstr(h->label));
    s_set(&ok, o, "lease", s_ju64(h->lease));
    s_set(&ok, o, "fence", s_ju64(h->fence));
    s_set(&ok, o, "held_ms", s_ju64(h->held_ms));
    s_set(&ok, o, "phase", s_jstr(h->phase));
    s_set(&ok, o, "phase_ms", s_ju64(h->phase_ms));
    s_set(&ok, o, "overdue", json_boolean(h->overdue));
    s_set(&ok, o, "child_pid", json_integer(h->child_pid));
    if (full) {
        json_t *ph = json_array();
        for (uint32_t i = 0; i < h->n_phases && i < UL_PHASES_MAX; i++) {
            json_t *r = json_object();
            s_set(&ok, r, "phase", s_jstr(h->phases[i].phase));
            s_set(&ok, r, "at", s_ju64(h->phases[i].at_ms));
            s_add(&ok, ph, r);
        }
        s_set(&ok, o, "phases", ph);
    }
    return s_done(ok, o);
}

static json_t *s_json_waiter(const ul_waiter_info *w)
{
    bool ok = true;
    json_t *o = json_object();
    s_set(&ok, o, "pid", json_integer(w->pid));
    s_set(&ok, o, "uid", json_integer(w->uid));
    s_set(&ok, o, "comm", s_jstr(w->comm));
    s_set(&ok, o, "label", s_jstr(w->label));
    s_set(&ok, o, "waited_ms", s_ju64(w->waited_ms));
    s_set(&ok, o, "timeout_ms", json_integer(w->timeout_ms));
    return s_done(ok, o);
}

/* The list / show object. full adds the queue, the phase history and the
 * last release. */
static json_t *s_json_uvm(const ul_uvm_info *u, bool full)
{
    bool ok = true;
    json_t *o = json_object();
    s_set(&ok, o, "uvm", s_jstr(u->uvm));
    s_set(&ok, o, "class", json_string(u->confidential ? "confidential" : "standard"));
    json_t *hs = json_array();
    for (uint32_t i = 0; i < u->n_holders; i++)
        s_add(&ok, hs, s_json_holder(&u->holders[i], full));
    s_set(&ok, o, "holders", hs);
    s_set(&ok, o, "waiter_count", json_integer(u->waiter_count));
    s_set(&ok, o, "draining", json_boolean(u->draining));
    s_set(&ok, o, "quarantine_ms_left", s_ju64(u->quarantine_ms_left));
    if (full) {
        json_t *ws = json_array();
        for (uint32_t i = 0; i < u->n_waiters; i++)
            s_add(&ok, ws, s_json_waiter(&u->waiters[i]));
        s_set(&ok, o, "waiters", ws);
        json_t *last = json_null();
        if (u->has_last_release) {
            last = json_object();
            s_set(&ok, last, "reason", s_jstr(u->last_reason));
            s_set(&ok, last, "pid", json_integer(u->last_pid));
            s_set(&ok, last, "at", s_ju64(u->last_at_ms));
        }
        s_set(&ok, o, "last_release", last);
    }
    return s_done(ok, o);
}

static json_t *s_json_event(const ul_event *e)
{
    bool ok = true;
    const char *type = ul_event_name(e->type);
    json_t *o = json_object();
    s_set(&ok, o, "type", json_string(type ? type : "unknown"));
    s_set(&ok, o, "at", s_ju64(e->at_ms));
    s_set(&ok, o, "uvm", s_jstr(e->uvm));
    if (e->pid)
        s_set(&ok, o, "pid", json_integer(e->pid));
    if (e->label[0])
        s_set(&ok, o, "label", s_jstr(e->label));
    /* A forced release carries its mode where other events carry a phase. */
    if (e->phase[0])
        s_set(&ok, o, e->type == UL_EV_FORCE ? "mode" : "phase", s_jstr(e->phase));
    if (e->reason[0])
        s_set(&ok, o, "reason", s_jstr(e->reason));
    if (e->lease)
        s_set(&ok, o, "lease", s_ju64(e->lease));
    if (e->fence)
        s_set(&ok, o, "fence", s_ju64(e->fence));
    if (e->duration_ms || ctl_event_duration_key(e->type))
        s_set(&ok, o, "duration_ms", s_ju64(e->duration_ms));
    return s_done(ok, o);
}

static json_t *s_json_labels(const char *lkey, const char *lval)
{
    bool ok = true;
    json_t *l = json_object();
    if (lkey[0])
        s_set(&ok, l, lkey, s_jstr(lval));
    return s_done(ok, l);
}

static json_t *s_json_stats(const ul_reply *r)
{
    bool ok = true;
    json_t *o = json_object();
    json_t *counters = json_array(), *gauges = json_array(), *hists = json_array();
    for (uint32_t i = 0; i < r->n_counters; i++) {
        const ul_counter *c = &r->counters[i];
        json_t *x = json_object();
        s_set(&ok, x, "name", s_jstr(c->name));
        s_set(&ok, x, "labels", s_json_labels(c->lkey, c->lval));
        s_set(&ok, x, "value", s_ju64(c->value));
        s_add(&ok, ctl_is_counter(c->name) ? counters : gauges, x);
    }
    for (uint32_t i = 0; i < r->n_hists; i++) {
        const ul_histogram *h = &r->hists[i];
        json_t *x = json_object(), *b = json_array();
        for (uint32_t k = 0; k < h->n_buckets && k < UL_HIST_BUCKETS; k++) {
            json_t *bk = json_object();
            s_set(&ok, bk, "le_us", s_ju64(h->le_us[k]));
            s_set(&ok, bk, "count", s_ju64(h->counts[k]));
            s_add(&ok, b, bk);
        }
        s_set(&ok, x, "name", s_jstr(h->name));
        s_set(&ok, x, "labels", s_json_labels(h->lkey, h->lval));
        s_set(&ok, x, "count", s_ju64(h->count));
        s_set(&ok, x, "sum_us", s_ju64(h->sum_us));
        s_set(&ok, x, "buckets", b);
        s_add(&ok, hists, x);
    }
    s_set(&ok, o, "counters", counters);
    s_set(&ok, o, "gauges", gauges);
    s_set(&ok, o, "histograms", hists);
    return s_done(ok, o);
}

static json_t *s_json_action(const ctl_action *a)
{
    bool ok = true;
    const char *op = ul_op_name(a->op);
    json_t *o = json_object();
    s_set(&ok, o, "action", json_string(op ? op : "unknown"));
    s_set(&ok, o, "uvm", s_jstr(a->uvm));
    s_set(&ok, o, "ok", json_true());
    if (a->op == UL_OP_FORCE_RELEASE) {
        s_set(&ok, o, "mode", json_string(a->mode == UL_FORCE_KILL ? "kill" : "revoke"));
        s_set(&ok, o, "pid", json_integer(a->pid));
    }
    s_set(&ok, o, "reason", s_jstr(a->reason));
    s_set(&ok, o, "detail", s_jstr(a->detail));
    return s_done(ok, o);
}

/* Write one JSON value and a newline: indented, or on one line (JSON
 * lines, for streams). Takes the reference. */
static int s_emit(FILE *f, json_t *v, bool one_line)
{
    if (!v) {
        errno = ENOMEM;
        return -1;
    }
    size_t flags = (one_line ? JSON_COMPACT : JSON_INDENT(2)) | JSON_PRESERVE_ORDER;
    int rc = json_dumpf(v, f, flags);
    json_decref(v);
    if (rc != 0) {
        if (errno == 0)
            errno = EIO;
        return -1;
    }
    fputc('\n', f);
    return ctl_written(f);
}

static json_t *s_json_broker(const ctl_broker *b)
{
    bool ok = true;
    char inst[24];
    snprintf(inst, sizeof inst, "%016" PRIx64, b->instance);
    json_t *o = json_object();
    s_set(&ok, o, "pid", json_integer(b->pid));
    s_set(&ok, o, "version", s_jstr(b->version));
    s_set(&ok, o, "instance", json_string(inst));
    s_set(&ok, o, "rtt_us", s_ju64(b->rtt_us));
    s_set(&ok, o, "journal",
          b->journal == 1   ? json_string("ok")
          : b->journal == 0 ? json_string("failing")
                            : json_null());
    return s_done(ok, o);
}

/* ----------------------------------------------------------------- list */

static int s_list_head(ctl_out *o, const ctl_item *it)
{
    (void)it;
    json_decref(o->priv);
    o->priv = json_array();
    if (!o->priv) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static int s_list_tail(ctl_out *o)
{
    json_t *rows = o->priv;
    o->priv = NULL;
    if (!rows)
        return ctl_written(o->f);
    return s_emit(o->f, rows, false);
}

static void s_free(ctl_out *o)
{
    json_decref(o->priv);
    o->priv = NULL;
}

/* ------------------------------------------------------------- the format */

static int s_row(ctl_out *o, const ctl_item *it)
{
    bool ok = true;
    switch (it->kind) {
    case CTL_ITEM_UVM:
        s_add(&ok, o->priv, s_json_uvm(it->uvm, false));
        if (!ok) {
            errno = ENOMEM;
            return -1;
        }
        return 0;
    case CTL_ITEM_EVENT:
        return s_emit(o->f, s_json_event(it->event), true);
    default:
        errno = EINVAL;
        return -1;
    }
}

static int s_result(ctl_out *o, const ctl_item *it)
{
    switch (it->kind) {
    case CTL_ITEM_BROKER:
        return s_emit(o->f, s_json_broker(&it->broker), true);
    case CTL_ITEM_UVM:
        return s_emit(o->f, s_json_uvm(it->uvm, true), false);
    case CTL_ITEM_STATS:
        return s_emit(o->f, s_json_stats(it->stats), false);
    case CTL_ITEM_ACTION:
        return s_emit(o->f, s_json_action(&it->action), false);
    default:
        errno = EINVAL;
        return -1;
    }
}

const ctl_output ctl_output_json = {
    .head = s_list_head,
    .row = s_row,
    .result = s_result,
    .tail = s_list_tail,
    .free = s_free,
};
