/*
 * ctl.h — what the parts of uvmleasectl share: the global options, the exit
 * codes, the command table's entry and the steps an entry names.
 *
 * Every command is one entry of the table in uvmleasectl.c: a name, an
 * argument parser, and either a request and a printer, which one driver
 * runs as parse → connect → request → print (ping, list, show, stats,
 * drain, undrain, release), or a session of its own (run, watch). Parsers
 * never connect, so a usage error is exit 2 whether or not a broker runs.
 */
#ifndef UL_CTL_H
#define UL_CTL_H

#include <stdbool.h>
#include <stdint.h>

#include "ctl_output.h"
#include "ul_proto.h"
#include "uvmlease.h"

#define CTL_EXIT_OK    0
#define CTL_EXIT_FAIL  1
#define CTL_EXIT_USAGE 2

typedef struct ctl_opts {
    const char *endpoint; /* NULL: the library's default */
    bool json;
} ctl_opts;

/* What a command's arguments say, as its parser found them. */
typedef struct ctl_args {
    const char *uvm;    /* show, drain, undrain, release, run */
    bool wide;          /* list, show: IDs and labels whole */
    bool prometheus;    /* stats */
    const char *reason; /* drain, undrain ("" if none), release */
    ul_force_mode mode; /* release */
    uint32_t pid;       /* release: one holder; 0 = every holder */
    bool confidential;  /* run */
    int64_t timeout_ms; /* run */
    const char *label;  /* run */
    int conflict;       /* run: the exit status when the lease is not obtained */
    char **cmd;         /* run: CMD and its arguments */
} ctl_args;

/* One answer of the broker, as a printer gets it. */
typedef struct ctl_answer {
    const ul_reply *rep;
    uint64_t rtt_us; /* from sending the request to its answer */
    bool first;      /* the command's first answer */
} ctl_answer;

typedef struct ctl_cmd ctl_cmd;

struct ctl_cmd {
    const char *name;
    const char *synopsis;
    const char *summary; /* one line, for `uvmleasectl --help` */
    const char *help;    /* for `COMMAND --help`, after the usage line */
    /* Fill a from argv (argv[0] = the command's name, global options
     * taken out): -1 to go on, else the exit code (2 after a usage error,
     * 0 after --help). */
    int (*parse)(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
    /* The next request: 1 with q filled, 0 when there is none, -1 when the
     * answers cannot be followed (said why). prev is the last answer (NULL
     * before the first); q holds the last request (zeroed before the
     * first). */
    int (*request)(const ctl_cmd *cmd, const ctl_args *a, const ul_reply *prev, ul_request *q);
    /* Print one answer through o: an exit code. */
    int (*print)(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans);
    /* Instead of request and print: everything after parsing. */
    int (*session)(const ctl_cmd *cmd, const ctl_opts *g, const ctl_args *a);
    ul_op op; /* what ctl_request_one asks */
};

/* ---- ctl_parse.c: argument parsers, usage and help */

int ctl_parse_ping(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_parse_none(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_parse_list(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_parse_show(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_parse_stats(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_parse_drain(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_parse_release(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);

/* "uvmleasectl: NAME: message" and the usage line on stderr; returns 2. */
__attribute__((format(printf, 2, 3))) int ctl_usage(const ctl_cmd *cmd, const char *fmt, ...);
/* The usage line and cmd->help on stdout; returns 0. */
int ctl_help(const ctl_cmd *cmd);
/* getopt_long afresh, reporting errors itself. */
void ctl_getopt_reset(void);
/* The answer to an unknown option or a missing value, from getopt's state
 * (o: what getopt_long returned). */
int ctl_bad_option(const ctl_cmd *cmd, int o, char **argv);
/* Strict unsigned decimal within [0, max]. */
bool ctl_parse_u64(const char *s, uint64_t max, uint64_t *out);

/* ---- ctl_request.c: talking to the broker; the driver's steps */

/* Connect; on failure say on stderr why ("CMD: cannot reach the broker at
 * ENDPOINT: ..."). 0 or -1. _why leaves saying it to the caller. */
int ctl_connect(const ctl_opts *g, const char *cmd, uvmlease **c);
int ctl_connect_why(const ctl_opts *g, uvmlease **c, char *why, size_t whysz);
/* Send q and wait for its answer. NULL after saying on stderr why not
 * (what names the command, e.g. "show x@vm"), the broker's refusals
 * included. */
ul_reply *ctl_call(uvmlease *c, const char *what, ul_request *q, int64_t wait_ms);
/* The command as diagnostics name it: its name and UVM, escaped. */
void ctl_what(const ctl_cmd *cmd, const ctl_args *a, char *out, size_t outsz);
/* "cannot write the output" on stderr; returns 1. */
int ctl_write_failed(const char *cmd);

int ctl_request_one(const ctl_cmd *cmd, const ctl_args *a, const ul_reply *prev, ul_request *q);
int ctl_request_list(const ctl_cmd *cmd, const ctl_args *a, const ul_reply *prev, ul_request *q);

int ctl_print_ping(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans);
int ctl_print_list(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans);
int ctl_print_show(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans);
int ctl_print_stats(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans);
int ctl_print_action(const ctl_cmd *cmd, ctl_out *o, const ctl_args *a, const ctl_answer *ans);

/* ---- sessions: ctl_watch.c, ctl_run.c */

int ctl_watch(const ctl_cmd *cmd, const ctl_opts *g, const ctl_args *a);
int ctl_run_parse(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a);
int ctl_run(const ctl_cmd *cmd, const ctl_opts *g, const ctl_args *a);

#endif
