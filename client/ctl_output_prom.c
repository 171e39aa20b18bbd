/*
 * ctl_output_prom.c — `uvmleasectl stats --prometheus`: the broker's
 * counters, gauges and histograms in the Prometheus text exposition format
 * 0.0.4, names prefixed uvmlease_, times in seconds.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include "ctl_output.h"

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

/* Every series of one plain-value name under one HELP/TYPE pair, as the
 * format requires, whatever order the broker listed them in. Counters are
 * the names ending in _total, the other plain values gauges. */
static void s_prom_counters(FILE *f, const ul_reply *r)
{
    for (uint32_t i = 0; i < r->n_counters; i++) {
        const char *name = r->counters[i].name;
        if (s_seen_before(r, i, false))
            continue;
        s_prom_family(f, name, ctl_is_counter(name) ? "counter" : "gauge");
        for (uint32_t k = i; k < r->n_counters; k++) {
            const ul_counter *c = &r->counters[k];
            if (strcmp(c->name, name) != 0 || !s_prom_label_ok(c->lkey, false))
                continue;
            fprintf(f, PROM_PREFIX "%s", name);
            s_prom_labels(f, c->lkey, c->lval, NULL);
            fprintf(f, " %" PRIu64 "\n", c->value);
        }
    }
}

/* One histogram series. The broker's buckets count per bucket; Prometheus
 * buckets are cumulative, with le in seconds and a final le="+Inf" equal
 * to _count. */
static void s_prom_hist(FILE *f, const char *name, const ul_histogram *h)
{
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
    /* The codec holds count >= the sum of the buckets; keep the series
     * monotonic even if a broker broke that. */
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

static void s_prom_hists(FILE *f, const ul_reply *r)
{
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
            if (strcmp(h->name, name) == 0 && s_prom_label_ok(h->lkey, true))
                s_prom_hist(f, name, h);
        }
    }
}

/* Only stats have a Prometheus form. */
static int s_result(ctl_out *o, const ctl_item *it)
{
    if (it->kind != CTL_ITEM_STATS) {
        errno = EINVAL;
        return -1;
    }
    s_prom_counters(o->f, it->stats);
    s_prom_hists(o->f, it->stats);
    return ctl_written(o->f);
}

const ctl_output ctl_output_prom = {
    .result = s_result,
};
