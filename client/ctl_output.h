/*
 * ctl_output.h — how uvmleasectl prints what the broker says.
 *
 * One struct ctl_output per format, each in a file of its own, as bgpctl
 * does: ctl_output_text.c (aligned tables and key/value blocks for
 * people), ctl_output_json.c (JSON built with jansson, for scripts) and
 * ctl_output_prom.c (the Prometheus text format, for metrics collectors).
 * A command picks one format at start-up and then only calls head / row /
 * result / tail with tagged items, so the formats cannot drift apart in
 * what they cover:
 *
 *   command           head     row         result          tail
 *   ping              -        -           BROKER          -
 *   list              BROKER   UVM (n)     -               yes
 *   show              -        -           UVM (+queue)    -
 *   watch             -        EVENT (n)   -               -
 *   stats             -        -           STATS           -
 *   drain, undrain,   -        -           ACTION          -
 *   release --force
 *
 * Every call returns 0, or -1 when the output could not be produced or
 * written (errno tells which: EPIPE when the reader went away, ENOMEM, and
 * EINVAL for an item the format does not print, e.g. a UVM in Prometheus).
 */
#ifndef UL_CTL_OUTPUT_H
#define UL_CTL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ul_proto.h"

/* What ping learnt, or (list) the broker's state above the table. */
typedef struct ctl_broker {
    uint32_t pid;
    const char *version;
    uint64_t instance;
    uint64_t rtt_us;
    int journal; /* 1 ok, 0 failing, -1 not said */
} ctl_broker;

/* What an admin command did. */
typedef struct ctl_action {
    ul_op op; /* UL_OP_DRAIN, UL_OP_UNDRAIN or UL_OP_FORCE_RELEASE */
    const char *uvm;
    ul_force_mode mode; /* force-release */
    uint32_t pid;       /* force-release: 0 = every holder */
    const char *reason; /* "" if none */
    const char *detail; /* the broker's words, "" if none */
} ctl_action;

typedef enum ctl_item_kind {
    CTL_ITEM_BROKER,
    CTL_ITEM_UVM,
    CTL_ITEM_EVENT,
    CTL_ITEM_STATS,
    CTL_ITEM_ACTION,
} ctl_item_kind;

/* One thing to print; kind says which member is set. Pointers are
 * borrowed for the call. */
typedef struct ctl_item {
    ctl_item_kind kind;
    union {
        ctl_broker broker;
        const ul_uvm_info *uvm;
        const ul_event *event;
        const ul_reply *stats;
        ctl_action action;
    };
} ctl_item;

typedef struct ctl_out ctl_out;

/* A format. A NULL member prints nothing for that call (tail: flushes). */
typedef struct ctl_output {
    int (*head)(ctl_out *o, const ctl_item *it);
    int (*row)(ctl_out *o, const ctl_item *it);
    int (*result)(ctl_out *o, const ctl_item *it);
    int (*tail)(ctl_out *o);
    void (*free)(ctl_out *o); /* what priv still holds */
} ctl_output;

extern const ctl_output ctl_output_text; /* ctl_output_text.c */
extern const ctl_output ctl_output_json; /* ctl_output_json.c */
extern const ctl_output ctl_output_prom; /* ctl_output_prom.c */

/* A printer at work: a format, where it writes, and what it keeps. */
struct ctl_out {
    const ctl_output *fmt;
    FILE *f;
    bool wide;    /* text: never shorten UVM IDs and labels */
    uint64_t now; /* wall clock, Unix ms, for "ago" in text */
    void *priv;   /* the format's own (JSON: the list built until tail) */
};

/* Set o up to print in fmt to f. Text shortens long UVM IDs, labels and
 * phases in tables unless wide is set. */
void ctl_out_init(ctl_out *o, const ctl_output *fmt, bool wide, FILE *f);
/* Free what a printer still holds (a JSON list cut short by an error). */
void ctl_out_free(ctl_out *o);

int ctl_out_head(ctl_out *o, const ctl_item *it);
int ctl_out_row(ctl_out *o, const ctl_item *it);
int ctl_out_result(ctl_out *o, const ctl_item *it);
int ctl_out_tail(ctl_out *o);

/* ---- pieces shared by the formats, the commands and the tests --------- */

/* "uvmleasectl: " + message + newline on stderr. */
__attribute__((format(printf, 1, 2))) void ctl_diag(const char *fmt, ...);

/* Client-chosen text made safe for a terminal (ul_escape) in out. */
const char *ctl_esc(const char *s, char *out, size_t outsz);

/* The one duration format for people, everywhere in uvmleasectl: "850us",
 * "850ms", "1.2s", "3m04s", "2h05m", "3d04h" (tenths and the smaller unit
 * are cut, never rounded up). ctl_fmt_ms never claims microseconds: 0 is
 * "0ms". */
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
 * "held", "waiting" or "idle"; of one holder's row (h may be NULL). */
const char *ctl_uvm_state(const ul_uvm_info *u);
const char *ctl_row_state(const ul_uvm_info *u, const ul_holder *h);
/* "confidential", "standard", or "-" for a UVM without lease or waiter. */
const char *ctl_uvm_class(const ul_uvm_info *u);

/* What an event's duration_ms means ("waited", "held"), NULL if none. */
const char *ctl_event_duration_key(ul_event_type t);
/* A counter (its name ends in _total) rather than a gauge. */
bool ctl_is_counter(const char *name);

/* The result of everything written to f so far: 0, or -1 with errno. */
int ctl_written(FILE *f);

#endif
