/*
 * ctl_output.c — the printer interface of uvmleasectl and the pieces its
 * formats share (see ctl_output.h): durations, times, short IDs, states.
 * The formats themselves are ctl_output_text.c, ctl_output_json.c and
 * ctl_output_prom.c.
 */
#include "ctl_output.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "ul_sys.h"
#include "ul_text.h"

#define ELLIPSIS "\xe2\x80\xa6" /* "…": one column */

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

const char *ctl_esc(const char *s, char *out, size_t outsz)
{
    ul_escape(s, strlen(s), out, outsz);
    return out;
}

int ctl_written(FILE *f)
{
    if (fflush(f) != 0 || ferror(f)) {
        if (errno == 0)
            errno = EIO;
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------- durations */

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

/* ---------------------------------------------------------- UVM facts */

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
const char *ctl_uvm_class(const ul_uvm_info *u)
{
    if (!u->n_holders && !u->waiter_count)
        return "-";
    return u->confidential ? "confidential" : "standard";
}

const char *ctl_row_state(const ul_uvm_info *u, const ul_holder *h)
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
    return ctl_row_state(u, u->n_holders ? &u->holders[0] : NULL);
}

/* What an event's duration_ms means, for the events that have one. */
const char *ctl_event_duration_key(ul_event_type t)
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

bool ctl_is_counter(const char *name)
{
    size_t n = strlen(name);
    return n >= 6 && strcmp(name + n - 6, "_total") == 0;
}

/* ------------------------------------------------------------ dispatch */

void ctl_out_init(ctl_out *o, const ctl_output *fmt, bool wide, FILE *f)
{
    memset(o, 0, sizeof *o);
    o->fmt = fmt;
    o->f = f;
    o->wide = wide;
    o->now = ul_wall_ms();
}

void ctl_out_free(ctl_out *o)
{
    if (o->fmt->free)
        o->fmt->free(o);
    o->priv = NULL;
}

int ctl_out_head(ctl_out *o, const ctl_item *it)
{
    return o->fmt->head ? o->fmt->head(o, it) : 0;
}

int ctl_out_row(ctl_out *o, const ctl_item *it)
{
    return o->fmt->row ? o->fmt->row(o, it) : 0;
}

int ctl_out_result(ctl_out *o, const ctl_item *it)
{
    return o->fmt->result ? o->fmt->result(o, it) : 0;
}

int ctl_out_tail(ctl_out *o)
{
    return o->fmt->tail ? o->fmt->tail(o) : ctl_written(o->f);
}
