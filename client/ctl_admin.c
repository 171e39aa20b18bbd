/*
 * ctl_admin.c — the view and control commands of uvmleasectl: list, show,
 * watch, stats (open to anyone who can connect) and drain, undrain,
 * release --force (uid 0 or the broker's admin group; the broker decides
 * and audits).
 *
 * Each command checks its arguments before it connects, so a usage error
 * is exit 2 whether or not a broker runs, then sends raw protocol requests
 * through the library's connection and prints through ctl_output.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_output.h"
#include "ul_client.h"
#include "ul_sys.h"
#include "ul_text.h"
#include "uvmlease.h"

/* watch: how often it checks that the broker still answers, and how long
 * an answer may take before watch gives up. */
#define WATCH_PING_MS 1000
#define WATCH_DEAD_MS 3000
/* watch: events held while the output is slow; more are counted and
 * dropped, as the broker itself does for slow watchers. */
#define WATCH_QUEUE 1024

#define ESC_UVM (UL_MAX_UVM * 4 + 1)

typedef struct cmd_spec {
    const char *name;
    const char *synopsis;
    const char *help;
} cmd_spec;

static const cmd_spec s_list = {
    "list", "[--wide]",
    "One line per UVM that has a lease, waiters, a drain or a quarantine; a standard\n"
    "UVM with several holders gets one line per holder. STATE is the most urgent of\n"
    "overdue, quarantined, draining, held, waiting. In the table, a UVM ID longer than\n"
    "20 characters is shown as its beginning, \"\xe2\x80\xa6\" and its \"@...\" suffix, and long\n"
    "labels and phases end in \"\xe2\x80\xa6\"; --wide (-w) prints them whole, as --json always\n"
    "does. \"-\" marks an empty cell.\n"};

static const cmd_spec s_show = {
    "show", "UVM [--wide]",
    "The holders of UVM with their phase history, the waiters in the order in which\n"
    "they will be granted, and the last release. Times are UTC; --json gives them as\n"
    "Unix milliseconds.\n"};

static const cmd_spec s_watch = {
    "watch", "",
    "One line per broker event (queued, grant, release, timeout, cancel, phase,\n"
    "overdue, drain, undrain, force-release) until SIGINT, SIGTERM or SIGHUP, which\n"
    "end it with exit status 0. --json prints one JSON object per line. If the\n"
    "broker restarts, watch subscribes again and says on stderr that events may have\n"
    "been missed; if no broker answers for 3 seconds, it exits with status 1.\n"};

static const cmd_spec s_stats = {
    "stats", "[--prometheus]",
    "The broker's counters, gauges and latency histograms. Percentiles are the upper\n"
    "bound of the bucket they fall in. --prometheus prints the Prometheus text format\n"
    "(names prefixed uvmlease_, times in seconds), e.g. for node_exporter's textfile\n"
    "collector.\n"};

static const cmd_spec s_drain = {
    "drain", "UVM [--reason TEXT]",
    "Stop new grants for UVM: its waiters and new acquires fail, current holders\n"
    "finish. Lasts until undrain, even while the UVM is idle. Needs uid 0 or the\n"
    "broker's admin group; the broker audits it with the reason.\n"};

static const cmd_spec s_undrain = {"undrain", "UVM [--reason TEXT]",
                                   "Let UVM be granted again after a drain. Needs uid 0 or "
                                   "the broker's admin group.\n"};

static const cmd_spec s_release = {
    "release", "--force UVM --mode revoke|kill [--pid P] --reason TEXT",
    "Take UVM's lease away from its holder; audited by the broker with the reason.\n"
    "  revoke  release it now and grant the next waiter; the holder's later calls\n"
    "          report the lease revoked. Only for a holder that is wedged, not one\n"
    "          still working: the lease protects what it is doing.\n"
    "  kill    the broker sends the holder SIGTERM, then SIGKILL after its grace\n"
    "          period, and hands the lease on only once the holder has died.\n"
    "--pid picks one holder of a standard UVM (default: every holder).\n"
    "Needs uid 0 or the broker's admin group.\n"};

/* ------------------------------------------------------------- helpers */

__attribute__((format(printf, 2, 3))) static int s_usage(const cmd_spec *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "uvmleasectl: %s: ", c->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fprintf(stderr, "usage: uvmleasectl %s%s%s\n", c->name, c->synopsis[0] ? " " : "", c->synopsis);
    return CTL_EXIT_USAGE;
}

static int s_help(const cmd_spec *c)
{
    printf("usage: uvmleasectl [--endpoint ipc://PATH] [--json] %s%s%s\n\n%s", c->name,
           c->synopsis[0] ? " " : "", c->synopsis, c->help);
    return CTL_EXIT_OK;
}

/* The answer to an unknown option or a missing value, from getopt's state. */
static int s_bad_option(const cmd_spec *c, int o, char **argv)
{
    const char *arg = argv[optind - 1];
    if (o == ':')
        return s_usage(c, "%s needs a value", arg);
    if (optopt && strncmp(arg, "--", 2) != 0)
        return s_usage(c, "unknown option '-%c'", optopt);
    return s_usage(c, "unknown option '%s'", arg);
}

static const char *s_esc(const char *s, char *out, size_t outsz)
{
    ul_escape(s, strlen(s), out, outsz);
    return out;
}

/* A UVM operand: exactly one, and a valid ID. Returns -1 when fine. */
static int s_uvm_operand(const cmd_spec *c, int argc, char **argv, const char **uvm)
{
    if (optind >= argc)
        return s_usage(c, "which UVM?");
    if (optind + 1 < argc) {
        char esc[ESC_UVM];
        return s_usage(c, "unexpected argument '%s'", s_esc(argv[optind + 1], esc, sizeof esc));
    }
    *uvm = argv[optind];
    if (ul_uvm_id_check(*uvm, strlen(*uvm)) != 0)
        return s_usage(c, "%s", uvmlease_strerror(UVMLEASE_EBADUVM));
    return -1;
}

static int s_no_operands(const cmd_spec *c, int argc, char **argv)
{
    if (optind < argc) {
        char esc[ESC_UVM];
        return s_usage(c, "unexpected argument '%s'", s_esc(argv[optind], esc, sizeof esc));
    }
    return -1;
}

/* getopt_long afresh (glibc: optind 0 also resets its internal state),
 * reporting errors itself. */
static void s_getopt_reset(void)
{
    optind = 0;
    opterr = 0;
}

static int s_connect(const ctl_opts *g, const char *cmd, uvmlease **c)
{
    int rc = uvmlease_connect(g->endpoint, c);
    if (rc == 0)
        return 0;
    int e = errno;
    char ep[300], esc[1300];
    if (ul_client_resolve_endpoint(g->endpoint, ep, sizeof ep) != 0)
        snprintf(ep, sizeof ep, "%s", g->endpoint ? g->endpoint : "?");
    ctl_diag("%s: cannot reach the broker at %s: %s", cmd, s_esc(ep, esc, sizeof esc),
             rc == UVMLEASE_ESYSTEM ? strerror(e) : uvmlease_strerror(rc));
    return -1;
}

/* The broker's refusal: its own explanation when it gave one (with the
 * status name, for scripts that grep), else the status's message. */
static void s_refused(const char *what, const ul_reply *rep)
{
    char detail[UL_MAX_DETAIL * 4 + 1], name[48];
    const char *n = ul_status_name((int)rep->err);
    if (strcmp(n, "unknown") == 0)
        snprintf(name, sizeof name, "error %" PRIu32, rep->err);
    else
        snprintf(name, sizeof name, "%s", n);
    if (rep->detail[0])
        ctl_diag("%s: refused (%s): %s", what, name, s_esc(rep->detail, detail, sizeof detail));
    else if (strcmp(n, "unknown") == 0)
        ctl_diag("%s: refused (%s)", what, name);
    else
        ctl_diag("%s: %s", what, uvmlease_strerror((int)rep->err));
}

/* Send q and wait for its answer. NULL after saying on stderr why not. */
static ul_reply *s_call(uvmlease *c, const char *what, ul_request *q, int64_t wait_ms)
{
    ul_reply *rep = NULL;
    int rc = ul_client_enter(c);
    if (rc == 0) {
        rc = ul_client_call(c, q, wait_ms, NULL, &rep);
        ul_client_leave(c);
    }
    if (rc) {
        ctl_diag("%s: %s", what, uvmlease_strerror(rc));
        return NULL;
    }
    if (rep->err) {
        s_refused(what, rep);
        ul_client_reply_free(rep);
        return NULL;
    }
    return rep;
}

static int s_write_failed(const char *cmd)
{
    ctl_diag("%s: cannot write the output: %s", cmd, strerror(errno));
    return CTL_EXIT_FAIL;
}

/* ----------------------------------------------------------------- list */

int ctl_cmd_list(const ctl_opts *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"wide", no_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool wide = false;
    int o;
    s_getopt_reset();
    while ((o = getopt_long(argc, argv, ":wh", opts, NULL)) != -1) {
        if (o == 'w')
            wide = true;
        else if (o == 'h')
            return s_help(&s_list);
        else
            return s_bad_option(&s_list, o, argv);
    }
    int u = s_no_operands(&s_list, argc, argv);
    if (u >= 0)
        return u;

    uvmlease *c;
    if (s_connect(g, "list", &c) != 0)
        return CTL_EXIT_FAIL;
    ctl_out out;
    ctl_out_init(&out, g->json ? &ctl_output_json : &ctl_output_text, wide, stdout);
    int code = CTL_EXIT_OK;
    bool headed = false;
    /* The broker answers in pages sorted by UVM ID; "after" is the cursor. */
    char after[UL_MAX_UVM + 1] = "";
    while (code == CTL_EXIT_OK) {
        ul_request q;
        memset(&q, 0, sizeof q);
        q.op = UL_OP_LIST;
        snprintf(q.after, sizeof q.after, "%s", after);
        ul_reply *rep = s_call(c, "list", &q, UVMLEASE_CALL_TIMEOUT_MS);
        if (!rep) {
            code = CTL_EXIT_FAIL;
            break;
        }
        if (!headed) {
            ctl_item head = {.kind = CTL_ITEM_BROKER,
                             .broker = {.journal = strcmp(rep->journal, "failing") == 0 ? 0 : 1}};
            headed = true;
            if (ctl_out_head(&out, &head) != 0)
                code = s_write_failed("list");
        }
        for (uint32_t i = 0; i < rep->n_uvms && code == CTL_EXIT_OK; i++) {
            ctl_item it = {.kind = CTL_ITEM_UVM, .uvm = &rep->uvms[i]};
            if (ctl_out_row(&out, &it) != 0)
                code = s_write_failed("list");
        }
        bool more = rep->more;
        if (more) {
            /* A cursor that does not advance would loop for ever. */
            const char *last = rep->n_uvms ? rep->uvms[rep->n_uvms - 1].uvm : NULL;
            if (!last || strcmp(last, after) <= 0) {
                ctl_diag("list: the broker's pages do not advance; stopping");
                code = CTL_EXIT_FAIL;
            } else {
                snprintf(after, sizeof after, "%s", last);
            }
        }
        ul_client_reply_free(rep);
        if (!more)
            break;
    }
    if (code == CTL_EXIT_OK && ctl_out_tail(&out) != 0)
        code = s_write_failed("list");
    ctl_out_free(&out);
    uvmlease_close(c);
    return code;
}

/* ----------------------------------------------------------------- show */

int ctl_cmd_show(const ctl_opts *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"wide", no_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool wide = false;
    int o;
    s_getopt_reset();
    while ((o = getopt_long(argc, argv, ":wh", opts, NULL)) != -1) {
        if (o == 'w')
            wide = true;
        else if (o == 'h')
            return s_help(&s_show);
        else
            return s_bad_option(&s_show, o, argv);
    }
    const char *uvm;
    int u = s_uvm_operand(&s_show, argc, argv, &uvm);
    if (u >= 0)
        return u;

    uvmlease *c;
    if (s_connect(g, "show", &c) != 0)
        return CTL_EXIT_FAIL;
    char esc[ESC_UVM], what[ESC_UVM + 16];
    snprintf(what, sizeof what, "show %s", s_esc(uvm, esc, sizeof esc));
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_SHOW;
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    int code = CTL_EXIT_FAIL;
    ul_reply *rep = s_call(c, what, &q, UVMLEASE_CALL_TIMEOUT_MS);
    if (rep && rep->n_uvms != 1) {
        ctl_diag("%s: the broker's answer holds no UVM", what);
    } else if (rep) {
        ctl_out out;
        ctl_out_init(&out, g->json ? &ctl_output_json : &ctl_output_text, wide, stdout);
        ctl_item it = {.kind = CTL_ITEM_UVM, .uvm = &rep->uvms[0]};
        code = ctl_out_result(&out, &it) == 0 ? CTL_EXIT_OK : s_write_failed("show");
        ctl_out_free(&out);
    }
    ul_client_reply_free(rep);
    uvmlease_close(c);
    return code;
}

/* ---------------------------------------------------------------- stats */

int ctl_cmd_stats(const ctl_opts *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"prometheus", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool prom = false;
    int o;
    s_getopt_reset();
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (o == 'p')
            prom = true;
        else if (o == 'h')
            return s_help(&s_stats);
        else
            return s_bad_option(&s_stats, o, argv);
    }
    int u = s_no_operands(&s_stats, argc, argv);
    if (u >= 0)
        return u;
    if (prom && g->json)
        return s_usage(&s_stats, "--prometheus and --json exclude each other");

    uvmlease *c;
    if (s_connect(g, "stats", &c) != 0)
        return CTL_EXIT_FAIL;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_STATS;
    int code = CTL_EXIT_FAIL;
    ul_reply *rep = s_call(c, "stats", &q, UVMLEASE_CALL_TIMEOUT_MS);
    if (rep) {
        ctl_out out;
        ctl_out_init(&out,
                     prom      ? &ctl_output_prom
                     : g->json ? &ctl_output_json
                               : &ctl_output_text,
                     false, stdout);
        ctl_item it = {.kind = CTL_ITEM_STATS, .stats = rep};
        code = ctl_out_result(&out, &it) == 0 ? CTL_EXIT_OK : s_write_failed("stats");
        ctl_out_free(&out);
    }
    ul_client_reply_free(rep);
    uvmlease_close(c);
    return code;
}

/* ------------------------------------------------------- admin actions */

/* Send one admin request and print what it did. */
static int s_action(const ctl_opts *g, const cmd_spec *spec, const ul_request *proto)
{
    uvmlease *c;
    if (s_connect(g, spec->name, &c) != 0)
        return CTL_EXIT_FAIL;
    char esc[ESC_UVM], what[ESC_UVM + 16];
    snprintf(what, sizeof what, "%s %s", spec->name, s_esc(proto->uvm, esc, sizeof esc));
    ul_request q = *proto;
    int code = CTL_EXIT_FAIL;
    ul_reply *rep = s_call(c, what, &q, UVMLEASE_CALL_TIMEOUT_MS);
    if (rep) {
        ctl_item it = {.kind = CTL_ITEM_ACTION,
                       .action = {.op = proto->op,
                                  .uvm = proto->uvm,
                                  .mode = proto->mode,
                                  .pid = proto->pid,
                                  .reason = proto->reason,
                                  .detail = rep->detail}};
        ctl_out out;
        ctl_out_init(&out, g->json ? &ctl_output_json : &ctl_output_text, false, stdout);
        code = ctl_out_result(&out, &it) == 0 ? CTL_EXIT_OK : s_write_failed(spec->name);
        ctl_out_free(&out);
    }
    ul_client_reply_free(rep);
    uvmlease_close(c);
    return code;
}

static int s_reason_check(const cmd_spec *c, const char *reason)
{
    if (ul_text_check(reason, strlen(reason), UL_MAX_REASON) != 0)
        return s_usage(c, "--reason: at most %d bytes of UTF-8 without control characters",
                       UL_MAX_REASON);
    return -1;
}

static int s_drain_common(const ctl_opts *g, const cmd_spec *spec, ul_op op, int argc, char **argv)
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *reason = "";
    int o;
    s_getopt_reset();
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (o == 'r')
            reason = optarg;
        else if (o == 'h')
            return s_help(spec);
        else
            return s_bad_option(spec, o, argv);
    }
    const char *uvm;
    int u = s_uvm_operand(spec, argc, argv, &uvm);
    if (u < 0)
        u = s_reason_check(spec, reason);
    if (u >= 0)
        return u;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = op;
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    snprintf(q.reason, sizeof q.reason, "%s", reason);
    return s_action(g, spec, &q);
}

int ctl_cmd_drain(const ctl_opts *g, int argc, char **argv)
{
    return s_drain_common(g, &s_drain, UL_OP_DRAIN, argc, argv);
}

int ctl_cmd_undrain(const ctl_opts *g, int argc, char **argv)
{
    return s_drain_common(g, &s_undrain, UL_OP_UNDRAIN, argc, argv);
}

int ctl_cmd_release(const ctl_opts *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"force", no_argument, NULL, 'f'},     {"mode", required_argument, NULL, 'm'},
        {"pid", required_argument, NULL, 'p'}, {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0},
    };
    const cmd_spec *spec = &s_release;
    bool force = false;
    const char *mode = NULL, *reason = NULL;
    uint32_t pid = 0;
    int o;
    s_getopt_reset();
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case 'f':
            force = true;
            break;
        case 'm':
            mode = optarg;
            break;
        case 'p': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (optarg[0] < '0' || optarg[0] > '9' || *end || errno || v < 1 || v > INT32_MAX)
                return s_usage(spec, "--pid wants a process id");
            pid = (uint32_t)v;
            break;
        }
        case 'r':
            reason = optarg;
            break;
        case 'h':
            return s_help(spec);
        default:
            return s_bad_option(spec, o, argv);
        }
    }
    const char *uvm;
    int u = s_uvm_operand(spec, argc, argv, &uvm);
    if (u >= 0)
        return u;
    /* Only forced releases exist here: a lease is released by its holder. */
    if (!force)
        return s_usage(spec, "only --force is possible: a lease is otherwise released by its "
                             "holder");
    ul_force_mode m;
    if (!mode)
        return s_usage(spec, "--mode revoke or --mode kill is required");
    if (strcmp(mode, "revoke") == 0)
        m = UL_FORCE_REVOKE;
    else if (strcmp(mode, "kill") == 0)
        m = UL_FORCE_KILL;
    else
        return s_usage(spec, "--mode is revoke or kill");
    if (!reason || !reason[0])
        return s_usage(spec, "--reason is required: it goes into the broker's audit log");
    u = s_reason_check(spec, reason);
    if (u >= 0)
        return u;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_FORCE_RELEASE;
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    q.mode = m;
    q.pid = pid;
    snprintf(q.reason, sizeof q.reason, "%s", reason);
    return s_action(g, spec, &q);
}

/* ---------------------------------------------------------------- watch */

/*
 * Events arrive on the library's I/O thread. They are queued for the main
 * thread, which alone writes: a reader that stops reading then blocks the
 * main thread, never the I/O thread (which keeps answering and
 * receiving), and the queue bounds what is kept meanwhile.
 */
typedef struct watch_queue {
    pthread_mutex_t mu;
    ul_event *ev; /* ring of WATCH_QUEUE */
    size_t first, n;
    uint64_t dropped;
    int efd; /* eventfd: something was queued */
} watch_queue;

static void s_watch_on_event(void *ctx, const ul_reply *rep)
{
    watch_queue *wq = ctx;
    pthread_mutex_lock(&wq->mu);
    if (wq->n < WATCH_QUEUE)
        wq->ev[(wq->first + wq->n++) % WATCH_QUEUE] = rep->event;
    else
        wq->dropped++;
    pthread_mutex_unlock(&wq->mu);
    uint64_t one = 1;
    ssize_t w = write(wq->efd, &one, sizeof one);
    (void)w; /* EAGAIN: the counter is saturated, the main thread wakes anyway */
}

static int s_watch_print(watch_queue *wq, ctl_out *out)
{
    uint64_t v;
    ssize_t r = read(wq->efd, &v, sizeof v);
    (void)r;
    for (;;) {
        ul_event e;
        pthread_mutex_lock(&wq->mu);
        bool have = wq->n > 0;
        if (have) {
            e = wq->ev[wq->first];
            wq->first = (wq->first + 1) % WATCH_QUEUE;
            wq->n--;
        }
        uint64_t dropped = wq->dropped;
        wq->dropped = 0;
        pthread_mutex_unlock(&wq->mu);
        if (dropped)
            ctl_diag("watch: %" PRIu64 " events dropped: the output did not keep up", dropped);
        if (!have)
            return 0;
        ctl_item it = {.kind = CTL_ITEM_EVENT, .event = &e};
        if (ctl_out_row(out, &it) != 0)
            return -1;
    }
}

static int s_watch_subscribe(uvmlease *c, uint64_t *instance)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_WATCH;
    ul_reply *rep = s_call(c, "watch", &q, UVMLEASE_CALL_TIMEOUT_MS);
    if (!rep)
        return -1;
    *instance = rep->instance;
    ul_client_reply_free(rep);
    return 0;
}

/* The broker still answers, and is the one we subscribed to: a restarted
 * broker has no watchers, so subscribe to it again. */
static int s_watch_check(uvmlease *c, uint64_t *instance)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_PING;
    ul_reply *rep = NULL;
    int rc = ul_client_enter(c);
    if (rc == 0) {
        rc = ul_client_call(c, &q, WATCH_DEAD_MS, NULL, &rep);
        ul_client_leave(c);
    }
    if (rc) {
        ctl_diag("watch: the broker stopped answering (%s)", uvmlease_strerror(rc));
        return -1;
    }
    uint64_t now_bi = rep->instance;
    ul_client_reply_free(rep);
    if (now_bi == *instance)
        return 0;
    ctl_diag("watch: the broker restarted; events in between were missed; watching again");
    return s_watch_subscribe(c, instance);
}

static void s_watch_unsubscribe(uvmlease *c)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_UNWATCH;
    ul_reply *rep = NULL;
    /* Best effort: the broker also forgets a watcher whose process died. */
    if (ul_client_enter(c) == 0) {
        ul_client_call(c, &q, 500, NULL, &rep);
        ul_client_leave(c);
    }
    ul_client_reply_free(rep);
}

int ctl_cmd_watch(const ctl_opts *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int o;
    s_getopt_reset();
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (o == 'h')
            return s_help(&s_watch);
        return s_bad_option(&s_watch, o, argv);
    }
    int u = s_no_operands(&s_watch, argc, argv);
    if (u >= 0)
        return u;

    /* Blocked before any thread exists, and taken through a signalfd, so
     * a stop request is seen by the loop below and nowhere else. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    int sfd = signalfd(-1, &stop, SFD_CLOEXEC | SFD_NONBLOCK);
    watch_queue wq;
    memset(&wq, 0, sizeof wq);
    pthread_mutex_init(&wq.mu, NULL);
    wq.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    wq.ev = calloc(WATCH_QUEUE, sizeof *wq.ev);
    int code = CTL_EXIT_FAIL;
    uvmlease *c = NULL;
    if (sfd < 0 || wq.efd < 0 || !wq.ev) {
        ctl_diag("watch: %s", strerror(errno ? errno : ENOMEM));
        goto out;
    }
    if (s_connect(g, "watch", &c) != 0)
        goto out;
    ul_client_on_event(c, s_watch_on_event, &wq);
    uint64_t instance = 0;
    if (s_watch_subscribe(c, &instance) != 0)
        goto out;

    ctl_out out;
    ctl_out_init(&out, g->json ? &ctl_output_json : &ctl_output_text, true, stdout);
    uint64_t next_check = ul_now_ms() + WATCH_PING_MS;
    int result = -1;
    while (result < 0) {
        uint64_t now = ul_now_ms();
        int timeout = next_check > now ? (int)(next_check - now) : 0;
        struct pollfd p[2] = {{.fd = wq.efd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
        int n = poll(p, 2, timeout);
        if (n < 0 && errno != EINTR) {
            ctl_diag("watch: poll: %s", strerror(errno));
            result = CTL_EXIT_FAIL;
            break;
        }
        if (n > 0 && (p[0].revents & POLLIN) && s_watch_print(&wq, &out) != 0) {
            result = s_write_failed("watch");
            break;
        }
        if (n > 0 && (p[1].revents & POLLIN)) {
            struct signalfd_siginfo si;
            ssize_t r = read(sfd, &si, sizeof si);
            (void)r;
            result = CTL_EXIT_OK;
            break;
        }
        if (ul_now_ms() >= next_check) {
            if (s_watch_check(c, &instance) != 0)
                result = CTL_EXIT_FAIL;
            next_check = ul_now_ms() + WATCH_PING_MS;
        }
    }
    /* What arrived before the stop is still printed. */
    if (result == CTL_EXIT_OK && s_watch_print(&wq, &out) != 0)
        result = s_write_failed("watch");
    ctl_out_free(&out);
    ul_client_on_event(c, NULL, NULL);
    if (result == CTL_EXIT_OK)
        s_watch_unsubscribe(c);
    code = result;
out:
    uvmlease_close(c);
    free(wq.ev);
    if (wq.efd >= 0)
        close(wq.efd);
    if (sfd >= 0)
        close(sfd);
    pthread_mutex_destroy(&wq.mu);
    return code;
}
