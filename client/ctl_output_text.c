/*
 * ctl_output_text.c — uvmleasectl's format for people: aligned tables (list,
 * the queue in show, stats) and key/value blocks (show). Every string a
 * client chose (labels, phases, reasons, command names, UVM IDs) goes
 * through ul_escape() before it reaches a terminal.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "ctl_output.h"
#include "ctl_table.h"
#include "uvmlease.h"

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

/* Above the table: the one state that makes every row suspect. */
static int s_list_head(ctl_out *o, const ctl_item *it)
{
    if (it && it->kind == CTL_ITEM_BROKER && it->broker.journal == 0)
        fprintf(o->f, "JOURNAL FAILING: the broker cannot record leases; exclusive grants are "
                      "suspended until it can (see its log)\n");
    ctl_header(o->f, s_list_cols, L_N);
    return ctl_written(o->f);
}

/* A UVM: one line per holder (standard UVMs may have several), or one
 * line without holder columns. */
static int s_list_row(ctl_out *o, const ul_uvm_info *u)
{
    bool fit = !o->wide;
    char uvm[CTL_CELL_MAX], id[UL_MAX_UVM + 8], comm[CTL_CELL_MAX], label[CTL_CELL_MAX],
        phase[CTL_CELL_MAX];
    char pid[16], inph[24], held[24], fence[24], waiters[16];
    if (fit)
        ctl_short_uvm(u->uvm, id, sizeof id);
    else
        snprintf(id, sizeof id, "%s", u->uvm);
    snprintf(waiters, sizeof waiters, "%" PRIu32, u->waiter_count);
    const char *cells[L_N];
    cells[L_UVM] = ctl_cell(id, s_list_cols[L_UVM].width, fit, uvm, sizeof uvm);
    cells[L_CLASS] = ctl_uvm_class(u);
    cells[L_WAITERS] = waiters;
    uint32_t rows = u->n_holders ? u->n_holders : 1;
    for (uint32_t i = 0; i < rows; i++) {
        const ul_holder *h = u->n_holders ? &u->holders[i] : NULL;
        cells[L_STATE] = ctl_row_state(u, h);
        for (int c = L_PID; c <= L_FENCE; c++)
            cells[c] = "-";
        if (h) {
            snprintf(pid, sizeof pid, "%" PRIu32, h->pid);
            cells[L_PID] = pid;
            cells[L_COMM] = ctl_cell(h->comm, s_list_cols[L_COMM].width, fit, comm, sizeof comm);
            if (h->label[0])
                cells[L_LABEL] =
                    ctl_cell(h->label, s_list_cols[L_LABEL].width, fit, label, sizeof label);
            if (h->phase[0]) {
                cells[L_PHASE] =
                    ctl_cell(h->phase, s_list_cols[L_PHASE].width, fit, phase, sizeof phase);
                ctl_fmt_ms(h->phase_ms, inph, sizeof inph);
                cells[L_INPHASE] = inph;
            }
            ctl_fmt_ms(h->held_ms, held, sizeof held);
            cells[L_HELD] = held;
            snprintf(fence, sizeof fence, "%" PRIu64, h->fence);
            cells[L_FENCE] = fence;
        }
        ctl_line(o->f, s_list_cols, L_N, cells);
    }
    return ctl_written(o->f);
}

/* ----------------------------------------------------------------- show */

enum { W_NUM, W_PID, W_COMM, W_LABEL, W_WAITED, W_TIMEOUT, W_N };

static const ctl_col s_waiter_cols[W_N] = {
    [W_NUM] = {"#", 4, true},         [W_PID] = {"PID", 7, true},
    [W_COMM] = {"COMM", 15, false},   [W_LABEL] = {"LABEL", 32, false},
    [W_WAITED] = {"WAITED", 8, true}, [W_TIMEOUT] = {"TIMEOUT", 8, true},
};

static void s_show_holder(ctl_out *o, const ul_holder *h)
{
    FILE *f = o->f;
    char a[CTL_CELL_MAX], b[CTL_CELL_MAX], d1[24], t[40];
    ctl_kv(f, "holder", "pid %" PRIu32 ", uid %" PRIu32 ", comm %s", h->pid, h->uid,
           ctl_cell(h->comm, 0, false, a, sizeof a));
    if (h->child_pid)
        ctl_kv(f, "  child", "pid %" PRIu32 " (the lease lasts until it has exited too)",
               h->child_pid);
    ctl_kv(f, "  label", "\"%s\"", ctl_cell(h->label, 0, false, a, sizeof a));
    ctl_kv(f, "  lease", "%" PRIu64, h->lease);
    ctl_kv(f, "  fence", "%" PRIu64, h->fence);
    ctl_fmt_ms(h->held_ms, d1, sizeof d1);
    ctl_kv(f, "  held", "%s", d1);
    ctl_fmt_ms(h->phase_ms, d1, sizeof d1);
    if (h->phase[0])
        ctl_kv(f, "  phase", "\"%s\" for %s", ctl_cell(h->phase, 0, false, a, sizeof a), d1);
    else
        ctl_kv(f, "  phase", "none reported");
    ctl_kv(f, "  overdue", "%s",
           h->overdue ? "yes: held longer than the broker's hold-warn time" : "no");
    for (uint32_t i = 0; i < h->n_phases && i < UL_PHASES_MAX; i++) {
        ctl_fmt_time(h->phases[i].at_ms, t, sizeof t);
        ctl_kv(f, i == 0 ? "  history" : "", "%s  \"%s\"", t,
               ctl_cell(h->phases[i].phase, 0, false, b, sizeof b));
    }
}

static int s_show(ctl_out *o, const ul_uvm_info *u)
{
    FILE *f = o->f;
    bool fit = !o->wide;
    char a[CTL_CELL_MAX], d1[24], t[40];
    ctl_kv(f, "uvm", "%s", ctl_cell(u->uvm, 0, false, a, sizeof a));
    ctl_kv(f, "class", "%s", ctl_uvm_class(u));
    ctl_kv(f, "state", "%s", ctl_uvm_state(u));
    ctl_kv(f, "draining", "%s", u->draining ? "yes" : "no");
    ctl_fmt_ms(u->quarantine_ms_left, d1, sizeof d1);
    if (u->quarantine_ms_left)
        ctl_kv(f, "quarantine", "%s left", d1);
    else
        ctl_kv(f, "quarantine", "none");
    ctl_kv(f, "holders", "%" PRIu32, u->n_holders);
    ctl_kv(f, "waiters", "%" PRIu32, u->waiter_count);
    for (uint32_t i = 0; i < u->n_holders; i++) {
        fputc('\n', f);
        s_show_holder(o, &u->holders[i]);
    }
    fputc('\n', f);
    if (u->n_waiters == 0) {
        ctl_kv(f, "queue", "empty");
    } else {
        ctl_kv(f, "queue", "in grant order");
        ctl_header(f, s_waiter_cols, W_N);
        for (uint32_t i = 0; i < u->n_waiters; i++) {
            const ul_waiter_info *w = &u->waiters[i];
            char num[16], pid[16], comm[CTL_CELL_MAX], label[CTL_CELL_MAX], waited[24], timeout[24];
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
                [W_COMM] = ctl_cell(w->comm, s_waiter_cols[W_COMM].width, fit, comm, sizeof comm),
                [W_LABEL] = w->label[0] ? ctl_cell(w->label, s_waiter_cols[W_LABEL].width, fit,
                                                   label, sizeof label)
                                        : "-",
                [W_WAITED] = waited,
                [W_TIMEOUT] = timeout,
            };
            ctl_line(f, s_waiter_cols, W_N, cells);
        }
        if (u->n_waiters < u->waiter_count)
            fprintf(f, "(%" PRIu32 " more waiters not shown)\n", u->waiter_count - u->n_waiters);
        fputc('\n', f);
    }
    if (u->has_last_release) {
        ctl_fmt_time(u->last_at_ms, t, sizeof t);
        ctl_fmt_ms(o->now > u->last_at_ms ? o->now - u->last_at_ms : 0, d1, sizeof d1);
        ctl_kv(f, "last release", "%s by pid %" PRIu32 " at %s (%s ago)",
               ctl_cell(u->last_reason, 0, false, a, sizeof a), u->last_pid, t, d1);
    } else {
        ctl_kv(f, "last release", "none");
    }
    return ctl_written(f);
}

/* ---------------------------------------------------------------- watch */

/* Wide enough for the longest event name, "force-release". */
#define EVENT_W 13

static int s_event(ctl_out *o, const ul_event *e)
{
    FILE *f = o->f;
    char t[40], a[CTL_CELL_MAX], d[24];
    const char *type = ul_event_name(e->type);
    ctl_fmt_time(e->at_ms, t, sizeof t);
    fprintf(f, "%s  %-*s  uvm=%s", t, EVENT_W, type ? type : "unknown",
            ctl_cell(e->uvm, 0, false, a, sizeof a));
    if (e->pid)
        fprintf(f, " pid=%" PRIu32, e->pid);
    if (e->label[0])
        fprintf(f, " label=\"%s\"", ctl_cell(e->label, 0, false, a, sizeof a));
    if (e->phase[0])
        fprintf(f, e->type == UL_EV_FORCE ? " mode=%s" : " phase=\"%s\"",
                ctl_cell(e->phase, 0, false, a, sizeof a));
    if (e->reason[0])
        fprintf(f, " reason=\"%s\"", ctl_cell(e->reason, 0, false, a, sizeof a));
    if (e->lease)
        fprintf(f, " lease=%" PRIu64, e->lease);
    if (e->fence)
        fprintf(f, " fence=%" PRIu64, e->fence);
    const char *dk = ctl_event_duration_key(e->type);
    if (dk) {
        ctl_fmt_ms(e->duration_ms, d, sizeof d);
        fprintf(f, " %s=%s", dk, d);
    }
    fputc('\n', f);
    return ctl_written(f);
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
    char n[CTL_CELL_MAX], v[CTL_CELL_MAX];
    ctl_cell(name, 0, false, n, sizeof n);
    if (!lkey[0]) {
        snprintf(out, outsz, "%s", n);
        return;
    }
    char k[CTL_CELL_MAX];
    snprintf(out, outsz, "%s{%s=\"%s\"}", n, ctl_cell(lkey, 0, false, k, sizeof k),
             ctl_cell(lval, 0, false, v, sizeof v));
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
    ctl_header(f, cols, C_N);
    for (uint32_t i = 0; i < r->n_counters; i++) {
        const ul_counter *c = &r->counters[i];
        if (ctl_is_counter(c->name) != counters)
            continue;
        char name[CTL_CELL_MAX * 3], value[24];
        s_series_name(c->name, c->lkey, c->lval, name, sizeof name);
        snprintf(value, sizeof value, "%" PRIu64, c->value);
        const char *cells[C_N] = {name, value};
        ctl_line(f, cols, C_N, cells);
    }
}

static int s_stats(ctl_out *o, const ul_reply *r)
{
    FILE *f = o->f;
    s_counter_table(f, r, true);
    fputc('\n', f);
    s_counter_table(f, r, false);
    fputc('\n', f);
    ctl_header(f, s_hist_cols, H_N);
    for (uint32_t i = 0; i < r->n_hists; i++) {
        const ul_histogram *h = &r->hists[i];
        char name[CTL_CELL_MAX * 3], count[24], mean[24], p50[24], p90[24], p99[24];
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
        ctl_line(f, s_hist_cols, H_N, cells);
    }
    return ctl_written(f);
}

/* --------------------------------------------------------------- action */

static int s_action(ctl_out *o, const ctl_action *a)
{
    FILE *f = o->f;
    char u[CTL_CELL_MAX], d[CTL_CELL_MAX];
    ctl_cell(a->uvm, 0, false, u, sizeof u);
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
        fprintf(f, ": %s", ctl_cell(a->detail, 0, false, d, sizeof d));
    fputc('\n', f);
    return ctl_written(f);
}

/* ----------------------------------------------------------------- ping */

static int s_broker(ctl_out *o, const ctl_broker *b)
{
    char esc[UVMLEASE_VERSION_MAX * 4 + 1];
    fprintf(o->f,
            "broker pid %d version %s instance %016" PRIx64 " round trip %" PRIu64
            "us journal %s\n",
            (int)b->pid, ctl_esc(b->version, esc, sizeof esc), b->instance, b->rtt_us,
            b->journal == 1   ? "ok"
            : b->journal == 0 ? "FAILING"
                              : "unknown");
    if (b->journal == 0)
        ctl_diag("ping: the broker cannot record leases: exclusive grants are suspended");
    return ctl_written(o->f);
}

/* ------------------------------------------------------------- the format */

static int s_row(ctl_out *o, const ctl_item *it)
{
    switch (it->kind) {
    case CTL_ITEM_UVM:
        return s_list_row(o, it->uvm);
    case CTL_ITEM_EVENT:
        return s_event(o, it->event);
    default:
        errno = EINVAL;
        return -1;
    }
}

static int s_result(ctl_out *o, const ctl_item *it)
{
    switch (it->kind) {
    case CTL_ITEM_BROKER:
        return s_broker(o, &it->broker);
    case CTL_ITEM_UVM:
        return s_show(o, it->uvm);
    case CTL_ITEM_STATS:
        return s_stats(o, it->stats);
    case CTL_ITEM_ACTION:
        return s_action(o, &it->action);
    default:
        errno = EINVAL;
        return -1;
    }
}

const ctl_output ctl_output_text = {
    .head = s_list_head,
    .row = s_row,
    .result = s_result,
};
