/*
 * ctl_output.c — the printers of uvmleasectl (see ctl_output.h).
 *
 * Text: every string a client chose (labels, phases, reasons, command
 * names, UVM IDs) goes through ul_escape() before it reaches a terminal.
 * JSON: built as jansson values and serialized by jansson. Prometheus: the
 * text exposition format 0.0.4.
 */
#include "ctl_output.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ul_sys.h"
#include "ul_text.h"

#define ELLIPSIS "\xe2\x80\xa6" /* "…": one column */

/* ul_escape() turns one byte into at most four ("\xHH"). */
#define CELL_MAX (UL_MAX_REASON * 4 + 16)

/* Width of the key column of key/value blocks (show). */
#define KEY_W 14

/* -------------------------------------------------------------- basics */

void ctl_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("uvmleasectl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void ctl_fmt_us(uint64_t us, char *out, size_t outsz)
{
    uint64_t ms = us / 1000;
    if (us < 1000)
        snprintf(out, outsz, "%" PRIu64 "us", us);
    else if (ms < 1000)
        snprintf(out, outsz, "%" PRIu64 "ms", ms);
    else if (ms < 60000)
        snprintf(out, outsz, "%" PRIu64 ".%" PRIu64 "s", ms / 1000, ms % 1000 / 100);
    else if (ms < 3600000)
        snprintf(out, outsz, "%" PRIu64 "m%02" PRIu64 "s", ms / 60000, ms % 60000 / 1000);
    else if (ms < 86400000)
        snprintf(out, outsz, "%" PRIu64 "h%02" PRIu64 "m", ms / 3600000, ms % 3600000 / 60000);
    else
        snprintf(out, outsz, "%" PRIu64 "d%02" PRIu64 "h", ms / 86400000, ms % 86400000 / 3600000);
}

void ctl_fmt_ms(uint64_t ms, char *out, size_t outsz)
{
    /* The broker counts in milliseconds: "0us" would claim a precision
     * it does not have. */
    if (ms == 0) {
        snprintf(out, outsz, "0ms");
        return;
    }
    if (ms > UINT64_MAX / 1000)
        ms = UINT64_MAX / 1000;
    ctl_fmt_us(ms * 1000, out, outsz);
}

void ctl_fmt_time(uint64_t unix_ms, char *out, size_t outsz)
{
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    char day[40];
    if (!gmtime_r(&t, &tm) || strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        snprintf(out, outsz, "@%" PRIu64 "ms", unix_ms);
        return;
    }
    snprintf(out, outsz, "%s.%03uZ", day, (unsigned)(unix_ms % 1000));
}

void ctl_fmt_seconds(uint64_t us, char *out, size_t outsz)
{
    uint64_t frac = us % 1000000;
    if (frac == 0) {
        snprintf(out, outsz, "%" PRIu64, us / 1000000);
        return;
    }
    char f[8];
    snprintf(f, sizeof f, "%06" PRIu64, frac);
    size_t n = strlen(f);
    while (n > 0 && f[n - 1] == '0')
        f[--n] = '\0';
    snprintf(out, outsz, "%" PRIu64 ".%s", us / 1000000, f);
}

void ctl_short_uvm(const char *uvm, char *out, size_t outsz)
{
    size_t len = strlen(uvm);
    if (len <= CTL_UVM_SHORT_MAX) {
        snprintf(out, outsz, "%s", uvm);
        return;
    }
    /* IDs are printable ASCII: one byte, one column. The suffix tells
     * kinds of ID apart ("@vm"); the beginning tells IDs apart. */
    const char *at = strrchr(uvm, '@');
    size_t suffix = at && (size_t)(uvm + len - at) <= CTL_UVM_SUFFIX_MAX ? strlen(at) : 0;
    size_t head = CTL_UVM_SHORT_MAX - 1 - suffix;
    snprintf(out, outsz, "%.*s" ELLIPSIS "%s", (int)head, uvm, suffix ? at : "");
}

/* A UVM keeps a class only while it has a lease or a waiter; an idle one
 * (drained, quarantined) has none, whatever the wire's default says. */
static const char *s_class(const ul_uvm_info *u)
{
    if (!u->n_holders && !u->waiter_count)
        return "-";
    return u->confidential ? "confidential" : "standard";
}

static const char *s_row_state(const ul_uvm_info *u, const ul_holder *h)
{
    if (h && h->overdue)
        return "overdue";
    if (u->quarantine_ms_left)
        return "quarantined";
    if (u->draining)
        return "draining";
    if (h)
        return "held";
    return u->waiter_count ? "waiting" : "idle";
}

const char *ctl_uvm_state(const ul_uvm_info *u)
{
    for (uint32_t i = 0; i < u->n_holders; i++)
        if (u->holders[i].overdue)
            return "overdue";
    return s_row_state(u, u->n_holders ? &u->holders[0] : NULL);
}

/* ---------------------------------------------------------- text cells */

/* Bytes of the display unit at p in ul_escape() output: an escape
 * sequence, one UTF-8 character, or one byte. */
static size_t s_unit(const char *p)
{
    unsigned char c = (unsigned char)p[0];
    size_t n = 1;
    if (c == '\\')
        n = p[1] == 'x' ? 4 : 2;
    else if (c >= 0xf0)
        n = 4;
    else if (c >= 0xe0)
        n = 3;
    else if (c >= 0xc0)
        n = 2;
    for (size_t i = 1; i < n; i++)
        if (!p[i])
            return i;
    return n;
}

static size_t s_unit_cols(const char *p, size_t n)
{
    return *p == '\\' ? n : 1;
}

/* Columns that escaped text takes. Any character counts as one column:
 * a wide (East Asian) one takes two and pushes the rest of its line. */
static size_t s_cols(const char *s)
{
    size_t cols = 0;
    for (const char *p = s; *p;) {
        size_t n = s_unit(p);
        cols += s_unit_cols(p, n);
        p += n;
    }
    return cols;
}

/* Client text made safe for a terminal; with fit, cut to width columns
 * with a final "…" when longer. Never cuts inside an escape sequence. */
static const char *s_cell(const char *raw, size_t width, bool fit, char *out, size_t outsz)
{
    ul_escape(raw, strlen(raw), out, outsz);
    if (!fit || width < 2 || s_cols(out) <= width)
        return out;
    size_t cols = 0;
    char *p = out;
    while (*p) {
        size_t n = s_unit(p);
        size_t w = s_unit_cols(p, n);
        if (cols + w > width - 1)
            break;
        cols += w;
        p += n;
    }
    if ((size_t)(p - out) + sizeof ELLIPSIS <= outsz)
        memcpy(p, ELLIPSIS, sizeof ELLIPSIS);
    return out;
}

typedef struct ctl_col {
    const char *title;
    size_t width;
    bool right;
} ctl_col;

static void s_pad(FILE *f, size_t n)
{
    while (n--)
        fputc(' ', f);
}

/* One table line, header or row: the same column widths for both, two
 * spaces apart. A cell wider than its column pushes the rest of the line
 * instead of being cut (cells that may be long are fitted beforehand). */
static void s_line(FILE *f, const char *indent, const ctl_col *cols, size_t n,
                   const char *const *cells)
{
    fputs(indent, f);
    for (size_t i = 0; i < n; i++) {
        size_t w = s_cols(cells[i]);
        size_t pad = w < cols[i].width ? cols[i].width - w : 0;
        if (i)
            fputs("  ", f);
        if (cols[i].right)
            s_pad(f, pad);
        fputs(cells[i], f);
        if (!cols[i].right && i + 1 < n)
            s_pad(f, pad);
    }
    fputc('\n', f);
}

static void s_header(FILE *f, const char *indent, const ctl_col *cols, size_t n)
{
    const char *titles[16];
    for (size_t i = 0; i < n && i < 16; i++)
        titles[i] = cols[i].title;
    s_line(f, indent, cols, n < 16 ? n : 16, titles);
}

/* The result of everything written so far. */
static int s_written(FILE *f)
{
    if (fflush(f) != 0 || ferror(f)) {
        if (errno == 0)
            errno = EIO;
        return -1;
    }
    return 0;
}

__attribute__((format(printf, 3, 4))) static void s_kv(FILE *f, const char *key, const char *fmt,
                                                       ...)
{
    fprintf(f, "%-*s", KEY_W, key);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
}

/* ---------------------------------------------------------- JSON values */

/* Broker strings are valid UTF-8 (the codec checked); should one not be,
 * its escaped form is. */
static json_t *s_jstr(const char *s)
{
    json_t *v = json_string(s);
    if (!v) {
        char esc[CELL_MAX];
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

/* What an event's duration_ms means, for the events that have one. */
static const char *s_event_duration_key(ul_event_type t)
{
    switch (t) {
    case UL_EV_GRANT:
    case UL_EV_TIMEOUT:
    case UL_EV_CANCEL:
        return "waited";
    case UL_EV_RELEASE:
    case UL_EV_OVERDUE:
        return "held";
    default:
        return NULL;
    }
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
    if (e->duration_ms || s_event_duration_key(e->type))
        s_set(&ok, o, "duration_ms", s_ju64(e->duration_ms));
    return s_done(ok, o);
}

static bool s_is_counter(const char *name)
{
    size_t n = strlen(name);
    return n >= 6 && strcmp(name + n - 6, "_total") == 0;
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
        s_add(&ok, s_is_counter(c->name) ? counters : gauges, x);
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
    return s_written(f);
}

/* ----------------------------------------------------------------- list */

enum {
    L_UVM,
    L_CLASS,
    L_STATE,
    L_PID,
    L_COMM,
    L_LABEL,
    L_PHASE,
    L_INPHASE,
    L_HELD,
    L_FENCE,
    L_WAITERS,
    L_N
};

static const ctl_col s_list_cols[L_N] = {
    [L_UVM] = {"UVM", CTL_UVM_SHORT_MAX, false},
    [L_CLASS] = {"CLASS", 12, false},
    [L_STATE] = {"STATE", 11, false},
    [L_PID] = {"PID", 7, true},
    [L_COMM] = {"COMM", 15, false},
    [L_LABEL] = {"LABEL", 20, false},
    [L_PHASE] = {"PHASE", 14, false},
    [L_INPHASE] = {"IN-PHASE", 8, true},
    [L_HELD] = {"HELD", 8, true},
    [L_FENCE] = {"FENCE", 16, true},
    [L_WAITERS] = {"WAITERS", 7, true},
};

static int s_list_text_head(ctl_output *o)
{
    s_header(o->f, "", s_list_cols, L_N);
    return s_written(o->f);
}

/* A UVM: one line per holder (standard UVMs may have several), or one
 * line without holder columns. */
static int s_list_text_row(ctl_output *o, const ctl_item *it)
{
    const ul_uvm_info *u = it->uvm;
    bool fit = !o->wide;
    char uvm[CELL_MAX], id[UL_MAX_UVM + 8], comm[CELL_MAX], label[CELL_MAX], phase[CELL_MAX];
    char pid[16], inph[24], held[24], fence[24], waiters[16];
    if (fit)
        ctl_short_uvm(u->uvm, id, sizeof id);
    else
        snprintf(id, sizeof id, "%s", u->uvm);
    snprintf(waiters, sizeof waiters, "%" PRIu32, u->waiter_count);
    const char *cells[L_N];
    cells[L_UVM] = s_cell(id, s_list_cols[L_UVM].width, fit, uvm, sizeof uvm);
    cells[L_CLASS] = s_class(u);
    cells[L_WAITERS] = waiters;
    uint32_t rows = u->n_holders ? u->n_holders : 1;
    for (uint32_t i = 0; i < rows; i++) {
        const ul_holder *h = u->n_holders ? &u->holders[i] : NULL;
        cells[L_STATE] = s_row_state(u, h);
        for (int c = L_PID; c <= L_FENCE; c++)
            cells[c] = "-";
        if (h) {
            snprintf(pid, sizeof pid, "%" PRIu32, h->pid);
            cells[L_PID] = pid;
            cells[L_COMM] = s_cell(h->comm, s_list_cols[L_COMM].width, fit, comm, sizeof comm);
            if (h->label[0])
                cells[L_LABEL] =
                    s_cell(h->label, s_list_cols[L_LABEL].width, fit, label, sizeof label);
            if (h->phase[0]) {
                cells[L_PHASE] =
                    s_cell(h->phase, s_list_cols[L_PHASE].width, fit, phase, sizeof phase);
                ctl_fmt_ms(h->phase_ms, inph, sizeof inph);
                cells[L_INPHASE] = inph;
            }
            ctl_fmt_ms(h->held_ms, held, sizeof held);
            cells[L_HELD] = held;
            snprintf(fence, sizeof fence, "%" PRIu64, h->fence);
            cells[L_FENCE] = fence;
        }
        s_line(o->f, "", s_list_cols, L_N, cells);
    }
    return s_written(o->f);
}

static int s_json_list_head(ctl_output *o)
{
    o->rows = json_array();
    if (!o->rows) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static int s_json_list_row(ctl_output *o, const ctl_item *it)
{
    bool ok = true;
    s_add(&ok, o->rows, s_json_uvm(it->uvm, false));
    if (!ok) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

static int s_json_list_tail(ctl_output *o)
{
    json_t *rows = o->rows;
    o->rows = NULL;
    return s_emit(o->f, rows, false);
}

/* ----------------------------------------------------------------- show */

enum { W_NUM, W_PID, W_COMM, W_LABEL, W_WAITED, W_TIMEOUT, W_N };

static const ctl_col s_waiter_cols[W_N] = {
    [W_NUM] = {"#", 4, true},         [W_PID] = {"PID", 7, true},
    [W_COMM] = {"COMM", 15, false},   [W_LABEL] = {"LABEL", 32, false},
    [W_WAITED] = {"WAITED", 8, true}, [W_TIMEOUT] = {"TIMEOUT", 8, true},
};

static void s_show_holder(ctl_output *o, const ul_holder *h)
{
    FILE *f = o->f;
    char a[CELL_MAX], b[CELL_MAX], d1[24], t[40];
    s_kv(f, "holder", "pid %" PRIu32 ", uid %" PRIu32 ", comm %s", h->pid, h->uid,
         s_cell(h->comm, 0, false, a, sizeof a));
    if (h->child_pid)
        s_kv(f, "  child", "pid %" PRIu32 " (the lease lasts until it has exited too)",
             h->child_pid);
    s_kv(f, "  label", "\"%s\"", s_cell(h->label, 0, false, a, sizeof a));
    s_kv(f, "  lease", "%" PRIu64, h->lease);
    s_kv(f, "  fence", "%" PRIu64, h->fence);
    ctl_fmt_ms(h->held_ms, d1, sizeof d1);
    s_kv(f, "  held", "%s", d1);
    ctl_fmt_ms(h->phase_ms, d1, sizeof d1);
    if (h->phase[0])
        s_kv(f, "  phase", "\"%s\" for %s", s_cell(h->phase, 0, false, a, sizeof a), d1);
    else
        s_kv(f, "  phase", "none reported");
    s_kv(f, "  overdue", "%s",
         h->overdue ? "yes: held longer than the broker's hold-warn time" : "no");
    for (uint32_t i = 0; i < h->n_phases && i < UL_PHASES_MAX; i++) {
        ctl_fmt_time(h->phases[i].at_ms, t, sizeof t);
        s_kv(f, i == 0 ? "  history" : "", "%s  \"%s\"", t,
             s_cell(h->phases[i].phase, 0, false, b, sizeof b));
    }
}

static int s_show_text(ctl_output *o, const ctl_item *it)
{
    const ul_uvm_info *u = it->uvm;
    FILE *f = o->f;
    bool fit = !o->wide;
    char a[CELL_MAX], d1[24], t[40];
    s_kv(f, "uvm", "%s", s_cell(u->uvm, 0, false, a, sizeof a));
    s_kv(f, "class", "%s", s_class(u));
    s_kv(f, "state", "%s", ctl_uvm_state(u));
    s_kv(f, "draining", "%s", u->draining ? "yes" : "no");
    ctl_fmt_ms(u->quarantine_ms_left, d1, sizeof d1);
    if (u->quarantine_ms_left)
        s_kv(f, "quarantine", "%s left", d1);
    else
        s_kv(f, "quarantine", "none");
    s_kv(f, "holders", "%" PRIu32, u->n_holders);
    s_kv(f, "waiters", "%" PRIu32, u->waiter_count);
    for (uint32_t i = 0; i < u->n_holders; i++) {
        fputc('\n', f);
        s_show_holder(o, &u->holders[i]);
    }
    fputc('\n', f);
    if (u->n_waiters == 0) {
        s_kv(f, "queue", "empty");
    } else {
        s_kv(f, "queue", "in grant order");
        s_header(f, "", s_waiter_cols, W_N);
        for (uint32_t i = 0; i < u->n_waiters; i++) {
            const ul_waiter_info *w = &u->waiters[i];
            char num[16], pid[16], comm[CELL_MAX], label[CELL_MAX], waited[24], timeout[24];
            snprintf(num, sizeof num, "%" PRIu32, i + 1);
            snprintf(pid, sizeof pid, "%" PRIu32, w->pid);
            ctl_fmt_ms(w->waited_ms, waited, sizeof waited);
            if (w->timeout_ms < 0)
                snprintf(timeout, sizeof timeout, "forever");
            else
                ctl_fmt_ms((uint64_t)w->timeout_ms, timeout, sizeof timeout);
            const char *cells[W_N] = {
                [W_NUM] = num,
                [W_PID] = pid,
                [W_COMM] = s_cell(w->comm, s_waiter_cols[W_COMM].width, fit, comm, sizeof comm),
                [W_LABEL] = w->label[0] ? s_cell(w->label, s_waiter_cols[W_LABEL].width, fit, label,
                                                 sizeof label)
                                        : "-",
                [W_WAITED] = waited,
                [W_TIMEOUT] = timeout,
            };
            s_line(f, "", s_waiter_cols, W_N, cells);
        }
        if (u->n_waiters < u->waiter_count)
            fprintf(f, "(%" PRIu32 " more waiters not shown)\n", u->waiter_count - u->n_waiters);
        fputc('\n', f);
    }
    if (u->has_last_release) {
        ctl_fmt_time(u->last_at_ms, t, sizeof t);
        ctl_fmt_ms(o->now > u->last_at_ms ? o->now - u->last_at_ms : 0, d1, sizeof d1);
        s_kv(f, "last release", "%s by pid %" PRIu32 " at %s (%s ago)",
             s_cell(u->last_reason, 0, false, a, sizeof a), u->last_pid, t, d1);
    } else {
        s_kv(f, "last release", "none");
    }
    return s_written(f);
}

static int s_show_json(ctl_output *o, const ctl_item *it)
{
    return s_emit(o->f, s_json_uvm(it->uvm, true), false);
}

/* ---------------------------------------------------------------- watch */

/* Wide enough for the longest event name, "force-release". */
#define EVENT_W 13

static int s_watch_text(ctl_output *o, const ctl_item *it)
{
    const ul_event *e = it->event;
    FILE *f = o->f;
    char t[40], a[CELL_MAX], d[24];
    const char *type = ul_event_name(e->type);
    ctl_fmt_time(e->at_ms, t, sizeof t);
    fprintf(f, "%s  %-*s  uvm=%s", t, EVENT_W, type ? type : "unknown",
            s_cell(e->uvm, 0, false, a, sizeof a));
    if (e->pid)
        fprintf(f, " pid=%" PRIu32, e->pid);
    if (e->label[0])
        fprintf(f, " label=\"%s\"", s_cell(e->label, 0, false, a, sizeof a));
    if (e->phase[0])
        fprintf(f, e->type == UL_EV_FORCE ? " mode=%s" : " phase=\"%s\"",
                s_cell(e->phase, 0, false, a, sizeof a));
    if (e->reason[0])
        fprintf(f, " reason=\"%s\"", s_cell(e->reason, 0, false, a, sizeof a));
    if (e->lease)
        fprintf(f, " lease=%" PRIu64, e->lease);
    if (e->fence)
        fprintf(f, " fence=%" PRIu64, e->fence);
    const char *dk = s_event_duration_key(e->type);
    if (dk) {
        ctl_fmt_ms(e->duration_ms, d, sizeof d);
        fprintf(f, " %s=%s", dk, d);
    }
    fputc('\n', f);
    return s_written(f);
}

static int s_watch_json(ctl_output *o, const ctl_item *it)
{
    return s_emit(o->f, s_json_event(it->event), true);
}

/* ---------------------------------------------------------------- stats */

enum { C_NAME, C_VALUE, C_N };
static const ctl_col s_counter_cols[C_N] = {{"COUNTER", 48, false}, {"VALUE", 12, true}};
static const ctl_col s_gauge_cols[C_N] = {{"GAUGE", 48, false}, {"VALUE", 12, true}};

enum { H_NAME, H_COUNT, H_MEAN, H_P50, H_P90, H_P99, H_N };
static const ctl_col s_hist_cols[H_N] = {
    [H_NAME] = {"HISTOGRAM", 48, false}, [H_COUNT] = {"COUNT", 12, true},
    [H_MEAN] = {"MEAN", 8, true},        [H_P50] = {"P50", 8, true},
    [H_P90] = {"P90", 8, true},          [H_P99] = {"P99", 8, true},
};

static void s_series_name(const char *name, const char *lkey, const char *lval, char *out,
                          size_t outsz)
{
    char n[CELL_MAX], v[CELL_MAX];
    s_cell(name, 0, false, n, sizeof n);
    if (!lkey[0]) {
        snprintf(out, outsz, "%s", n);
        return;
    }
    char k[CELL_MAX];
    snprintf(out, outsz, "%s{%s=\"%s\"}", n, s_cell(lkey, 0, false, k, sizeof k),
             s_cell(lval, 0, false, v, sizeof v));
}

/* The upper bound of the bucket holding the q-quantile (q in percent): an
 * upper estimate, as precise as the buckets. */
static void s_quantile(const ul_histogram *h, unsigned q, char *out, size_t outsz)
{
    if (h->count == 0) {
        snprintf(out, outsz, "-");
        return;
    }
    uint64_t rank = (h->count * q + 99) / 100, cum = 0;
    uint32_t n = h->n_buckets < UL_HIST_BUCKETS ? h->n_buckets : UL_HIST_BUCKETS;
    for (uint32_t i = 0; i < n; i++) {
        cum += h->counts[i];
        if (cum >= rank) {
            ctl_fmt_us(h->le_us[i], out, outsz);
            return;
        }
    }
    char d[24] = "0us";
    if (n)
        ctl_fmt_us(h->le_us[n - 1], d, sizeof d);
    snprintf(out, outsz, ">%s", d);
}

static void s_counter_table(FILE *f, const ul_reply *r, bool counters)
{
    const ctl_col *cols = counters ? s_counter_cols : s_gauge_cols;
    s_header(f, "", cols, C_N);
    for (uint32_t i = 0; i < r->n_counters; i++) {
        const ul_counter *c = &r->counters[i];
        if (s_is_counter(c->name) != counters)
            continue;
        char name[CELL_MAX * 3], value[24];
        s_series_name(c->name, c->lkey, c->lval, name, sizeof name);
        snprintf(value, sizeof value, "%" PRIu64, c->value);
        const char *cells[C_N] = {name, value};
        s_line(f, "", cols, C_N, cells);
    }
}

static int s_stats_text(ctl_output *o, const ctl_item *it)
{
    const ul_reply *r = it->stats;
    FILE *f = o->f;
    s_counter_table(f, r, true);
    fputc('\n', f);
    s_counter_table(f, r, false);
    fputc('\n', f);
    s_header(f, "", s_hist_cols, H_N);
    for (uint32_t i = 0; i < r->n_hists; i++) {
        const ul_histogram *h = &r->hists[i];
        char name[CELL_MAX * 3], count[24], mean[24], p50[24], p90[24], p99[24];
        s_series_name(h->name, h->lkey, h->lval, name, sizeof name);
        snprintf(count, sizeof count, "%" PRIu64, h->count);
        if (h->count)
            ctl_fmt_us(h->sum_us / h->count, mean, sizeof mean);
        else
            snprintf(mean, sizeof mean, "-");
        s_quantile(h, 50, p50, sizeof p50);
        s_quantile(h, 90, p90, sizeof p90);
        s_quantile(h, 99, p99, sizeof p99);
        const char *cells[H_N] = {name, count, mean, p50, p90, p99};
        s_line(f, "", s_hist_cols, H_N, cells);
    }
    return s_written(f);
}

static int s_stats_json(ctl_output *o, const ctl_item *it)
{
    return s_emit(o->f, s_json_stats(it->stats), false);
}

/* ----------------------------------------------------------- prometheus */

#define PROM_PREFIX "uvmlease_"

typedef struct prom_help {
    const char *name;
    const char *help;
} prom_help;

static const prom_help s_prom_help[] = {
    {"grants_total", "Leases granted."},
    {"releases_total", "Leases ended, by reason."},
    {"timeouts_total", "Waiting acquires that reached their timeout."},
    {"cancels_total", "Waiting acquires withdrawn by their clients."},
    {"drained_waiters_total", "Waiting acquires failed because their UVM was drained."},
    {"overdue_total", "Leases flagged overdue (held longer than hold-warn)."},
    {"busy_refusals_total", "Try-once acquires refused because the lease was held."},
    {"undelivered_total",
     "Broker messages that could not be sent (connection gone or full), by kind."},
    {"rejected_messages_total", "Requests rejected, by error."},
    {"holders", "Leases held now."},
    {"waiters", "Acquires waiting now."},
    {"uvms", "UVMs with a lease, a waiter, a drain or a quarantine now."},
    {"processes", "Client processes the broker tracks now."},
    {"wait_seconds", "Time from acquire to grant."},
    {"hold_seconds", "Time from grant to release."},
    {"handoff_seconds", "Time from a release to the next grant of the same UVM."},
    {"phase_seconds", "Time spent in each reported phase."},
};

/* HELP text and label values: the format's escapes (\\, \n; and \" in
 * label values). The broker's text has no control characters. */
static void s_prom_escaped(FILE *f, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", f);
        else if (*s == '\n')
            fputs("\\n", f);
        else if (quote && *s == '"')
            fputs("\\\"", f);
        else
            fputc(*s, f);
    }
}

static void s_prom_family(FILE *f, const char *name, const char *type)
{
    const char *help = NULL;
    for (size_t i = 0; i < sizeof s_prom_help / sizeof s_prom_help[0]; i++)
        if (strcmp(s_prom_help[i].name, name) == 0)
            help = s_prom_help[i].help;
    fprintf(f, "# HELP " PROM_PREFIX "%s ", name);
    if (help)
        fputs(help, f);
    else {
        fputs("Broker metric ", f);
        s_prom_escaped(f, name, false);
        fputc('.', f);
    }
    fprintf(f, "\n# TYPE " PROM_PREFIX "%s %s\n", name, type);
}

/* {lkey="lval"[,le="..."]}, or nothing. */
static void s_prom_labels(FILE *f, const char *lkey, const char *lval, const char *le)
{
    if (!lkey[0] && !le)
        return;
    fputc('{', f);
    if (lkey[0]) {
        fprintf(f, "%s=\"", lkey);
        s_prom_escaped(f, lval, true);
        fputc('"', f);
    }
    if (le)
        fprintf(f, "%sle=\"%s\"", lkey[0] ? "," : "", le);
    fputc('}', f);
}

/* A label key the format allows on this series: no reserved "__" names,
 * and "le" belongs to histogram buckets. */
static bool s_prom_label_ok(const char *lkey, bool histogram)
{
    return strncmp(lkey, "__", 2) != 0 && !(histogram && strcmp(lkey, "le") == 0);
}

static bool s_seen_before(const ul_reply *r, uint32_t i, bool hists)
{
    for (uint32_t k = 0; k < i; k++)
        if (strcmp(hists ? r->hists[k].name : r->counters[k].name,
                   hists ? r->hists[i].name : r->counters[i].name) == 0)
            return true;
    return false;
}

static bool s_counter_name_taken(const ul_reply *r, const char *name)
{
    for (uint32_t k = 0; k < r->n_counters; k++)
        if (strcmp(r->counters[k].name, name) == 0)
            return true;
    return false;
}

/*
 * Every series of one name is written under one HELP/TYPE pair, as the
 * format requires, whatever order the broker listed them in. Counters are
 * the names ending in _total, the other plain values gauges. The broker's
 * buckets count per bucket; Prometheus buckets are cumulative, with le in
 * seconds and a final le="+Inf" equal to _count.
 */
static int s_prometheus(ctl_output *o, const ctl_item *it)
{
    const ul_reply *r = it->stats;
    FILE *f = o->f;
    for (uint32_t i = 0; i < r->n_counters; i++) {
        const char *name = r->counters[i].name;
        if (s_seen_before(r, i, false))
            continue;
        s_prom_family(f, name, s_is_counter(name) ? "counter" : "gauge");
        for (uint32_t k = i; k < r->n_counters; k++) {
            const ul_counter *c = &r->counters[k];
            if (strcmp(c->name, name) != 0 || !s_prom_label_ok(c->lkey, false))
                continue;
            fprintf(f, PROM_PREFIX "%s", name);
            s_prom_labels(f, c->lkey, c->lval, NULL);
            fprintf(f, " %" PRIu64 "\n", c->value);
        }
    }
    for (uint32_t i = 0; i < r->n_hists; i++) {
        const char *name = r->hists[i].name;
        if (s_seen_before(r, i, true))
            continue;
        if (s_counter_name_taken(r, name)) {
            ctl_diag("stats: histogram %s skipped: a counter has its name", name);
            continue;
        }
        s_prom_family(f, name, "histogram");
        for (uint32_t k = i; k < r->n_hists; k++) {
            const ul_histogram *h = &r->hists[k];
            if (strcmp(h->name, name) != 0 || !s_prom_label_ok(h->lkey, true))
                continue;
            uint64_t cum = 0;
            uint32_t n = h->n_buckets < UL_HIST_BUCKETS ? h->n_buckets : UL_HIST_BUCKETS;
            char le[32];
            for (uint32_t b = 0; b < n; b++) {
                cum += h->counts[b];
                ctl_fmt_seconds(h->le_us[b], le, sizeof le);
                fprintf(f, PROM_PREFIX "%s_bucket", name);
                s_prom_labels(f, h->lkey, h->lval, le);
                fprintf(f, " %" PRIu64 "\n", cum);
            }
            /* The codec holds count >= the sum of the buckets; keep the
             * series monotonic even if a broker broke that. */
            uint64_t total = h->count > cum ? h->count : cum;
            fprintf(f, PROM_PREFIX "%s_bucket", name);
            s_prom_labels(f, h->lkey, h->lval, "+Inf");
            fprintf(f, " %" PRIu64 "\n", total);
            ctl_fmt_seconds(h->sum_us, le, sizeof le);
            fprintf(f, PROM_PREFIX "%s_sum", name);
            s_prom_labels(f, h->lkey, h->lval, NULL);
            fprintf(f, " %s\n", le);
            fprintf(f, PROM_PREFIX "%s_count", name);
            s_prom_labels(f, h->lkey, h->lval, NULL);
            fprintf(f, " %" PRIu64 "\n", total);
        }
    }
    return s_written(f);
}

/* --------------------------------------------------------------- action */

static int s_action_text(ctl_output *o, const ctl_item *it)
{
    const ctl_action *a = it->action;
    FILE *f = o->f;
    char u[CELL_MAX], d[CELL_MAX];
    s_cell(a->uvm, 0, false, u, sizeof u);
    const char *who = "every holder";
    char pid[32];
    if (a->pid) {
        snprintf(pid, sizeof pid, "pid %" PRIu32, a->pid);
        who = pid;
    }
    switch (a->op) {
    case UL_OP_DRAIN:
        fprintf(f, "drained %s: no new grants; its waiters fail, current holders finish", u);
        break;
    case UL_OP_UNDRAIN:
        fprintf(f, "undrained %s: grants resume", u);
        break;
    default:
        if (a->mode == UL_FORCE_KILL)
            fprintf(f, "killing the holder of %s (%s)", u, who);
        else
            fprintf(f, "revoked the lease of %s (%s)", u, who);
        break;
    }
    if (a->detail[0])
        fprintf(f, ": %s", s_cell(a->detail, 0, false, d, sizeof d));
    fputc('\n', f);
    return s_written(f);
}

static int s_action_json(ctl_output *o, const ctl_item *it)
{
    return s_emit(o->f, s_json_action(it->action), false);
}

/* ---------------------------------------------------------------- table */

static const ctl_output_ops s_ops[][2] = {
    [CTL_VIEW_LIST] = {{s_list_text_head, s_list_text_row, NULL, NULL},
                       {s_json_list_head, s_json_list_row, NULL, s_json_list_tail}},
    [CTL_VIEW_SHOW] = {{NULL, NULL, s_show_text, NULL}, {NULL, NULL, s_show_json, NULL}},
    [CTL_VIEW_WATCH] = {{NULL, s_watch_text, NULL, NULL}, {NULL, s_watch_json, NULL, NULL}},
    [CTL_VIEW_STATS] = {{NULL, NULL, s_stats_text, NULL}, {NULL, NULL, s_stats_json, NULL}},
    [CTL_VIEW_PROMETHEUS] = {{NULL, NULL, s_prometheus, NULL}, {NULL, NULL, s_prometheus, NULL}},
    [CTL_VIEW_ACTION] = {{NULL, NULL, s_action_text, NULL}, {NULL, NULL, s_action_json, NULL}},
};

int ctl_output_init(ctl_output *o, ctl_view view, bool json, bool wide, FILE *f)
{
    memset(o, 0, sizeof *o);
    if ((size_t)view >= sizeof s_ops / sizeof s_ops[0]) {
        errno = EINVAL;
        return -1;
    }
    o->ops = &s_ops[view][json ? 1 : 0];
    o->f = f;
    o->wide = wide;
    o->now = ul_wall_ms();
    return 0;
}

void ctl_output_free(ctl_output *o)
{
    json_decref(o->rows);
    o->rows = NULL;
}

int ctl_out_head(ctl_output *o)
{
    return o->ops->head ? o->ops->head(o) : 0;
}

int ctl_out_row(ctl_output *o, const ctl_item *it)
{
    return o->ops->row ? o->ops->row(o, it) : 0;
}

int ctl_out_result(ctl_output *o, const ctl_item *it)
{
    return o->ops->result ? o->ops->result(o, it) : 0;
}

int ctl_out_tail(ctl_output *o)
{
    return o->ops->tail ? o->ops->tail(o) : s_written(o->f);
}
