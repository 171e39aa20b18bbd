/*
 * ctl_output.h — how uvmleasectl prints what the broker says: aligned
 * tables and key/value blocks for people, JSON (built with jansson) for
 * scripts, and the Prometheus text format for metrics collectors.
 *
 * A command picks one printer at start-up (text or JSON, from --json) and
 * then only calls head / row / result / tail, so the two forms cannot
 * drift apart in what they cover:
 *
 *   view        head  row                result                  tail
 *   LIST        yes   ctl_item.uvm (n)   -                       yes
 *   SHOW        -     -                  ctl_item.uvm (+queue)   -
 *   WATCH       -     ctl_item.event (n) -                       -
 *   STATS       -     -                  ctl_item.stats          -
 *   PROMETHEUS  -     -                  ctl_item.stats          -
 *   ACTION      -     -                  ctl_item.action         -
 *
 * Every call returns 0, or -1 when the output could not be produced or
 * written (errno tells which: EPIPE when the reader went away, ENOMEM).
 */
#ifndef UL_CTL_OUTPUT_H
#define UL_CTL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ul_proto.h"

typedef enum ctl_view {
    CTL_VIEW_LIST,
    CTL_VIEW_SHOW,
    CTL_VIEW_WATCH,
    CTL_VIEW_STATS,
    CTL_VIEW_PROMETHEUS,
    CTL_VIEW_ACTION,
} ctl_view;

/* What an admin command did, for the ACTION view. */
typedef struct ctl_action {
    ul_op op; /* UL_OP_DRAIN, UL_OP_UNDRAIN or UL_OP_FORCE_RELEASE */
    const char *uvm;
    ul_force_mode mode; /* force-release */
    uint32_t pid;       /* force-release: 0 = every holder */
    const char *reason; /* "" if none */
    const char *detail; /* the broker's words, "" if none */
} ctl_action;

/* One thing to print; the view says which member is set. */
typedef struct ctl_item {
    const ul_uvm_info *uvm;
    const ul_event *event;
    const ul_reply *stats;
    const ctl_action *action;
} ctl_item;

typedef struct ctl_output ctl_output;

typedef struct ctl_output_ops {
    int (*head)(ctl_output *o);
    int (*row)(ctl_output *o, const ctl_item *it);
    int (*result)(ctl_output *o, const ctl_item *it);
    int (*tail)(ctl_output *o);
} ctl_output_ops;

struct ctl_output {
    const ctl_output_ops *ops;
    FILE *f;
    bool wide;           /* text: never shorten UVM IDs and labels */
    uint64_t now;        /* wall clock, Unix ms, for "ago" in text */
    struct json_t *rows; /* JSON list: the array built until tail */
};

/*
 * Set o up for one view in one form, writing to f. Text shortens long UVM
 * IDs, labels and phases in tables unless wide is set. PROMETHEUS is a text
 * format of its own and ignores json. -1 (EINVAL) for an unknown view.
 */
int ctl_output_init(ctl_output *o, ctl_view view, bool json, bool wide, FILE *f);
/* Free what a printer still holds (a JSON list not yet written). */
void ctl_output_free(ctl_output *o);

int ctl_out_head(ctl_output *o);
int ctl_out_row(ctl_output *o, const ctl_item *it);
int ctl_out_result(ctl_output *o, const ctl_item *it);
int ctl_out_tail(ctl_output *o);

/* ---- pieces shared with the commands and the tests -------------------- */

/* "uvmleasectl: " + message + newline on stderr. */
__attribute__((format(printf, 1, 2))) void ctl_diag(const char *fmt, ...);

/* Durations for people: "850us", "850ms", "1.2s", "3m04s", "2h05m",
 * "3d04h" (tenths and the smaller unit are cut, never rounded up). */
void ctl_fmt_us(uint64_t us, char *out, size_t outsz);
void ctl_fmt_ms(uint64_t ms, char *out, size_t outsz);
/* A wall-clock time (Unix ms) as ISO-8601 UTC: "2025-11-27T09:41:02.123Z". */
void ctl_fmt_time(uint64_t unix_ms, char *out, size_t outsz);
/* Microseconds as exact decimal seconds: 2500000 -> "2.5", 1000 -> "0.001". */
void ctl_fmt_seconds(uint64_t us, char *out, size_t outsz);

/*
 * A UVM ID as the list table shows it: whole when it has at most
 * CTL_UVM_SHORT_MAX characters; else cut to exactly that many columns:
 * its beginning, "…", and its "@..." suffix when that has at most
 * CTL_UVM_SUFFIX_MAX characters ("aaaa2a9e0b7d4e3f…@vm" for
 * "<64 hex>@vm"). JSON, `show` and `list --wide` give IDs whole.
 */
#define CTL_UVM_SHORT_MAX  20
#define CTL_UVM_SUFFIX_MAX 8
void ctl_short_uvm(const char *uvm, char *out, size_t outsz);

/* The most urgent state of a UVM: "overdue", "quarantined", "draining",
 * "held", "waiting" or "idle". */
const char *ctl_uvm_state(const ul_uvm_info *u);

#endif
