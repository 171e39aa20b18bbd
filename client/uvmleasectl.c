/*
 * uvmleasectl.c — command-line client of the uvmlease broker: the global
 * options, the table of commands, and the one driver that runs a command
 * as parse → connect → request → print.
 *
 *   uvmleasectl [--endpoint E] [--json] COMMAND [ARGS...]
 *
 * Global options may also follow the command name (up to a "--"). Data goes
 * to stdout, diagnostics to stderr. Exit codes: 0 ok, 1 failure, 2 usage —
 * except `run`, which exits with its command's status (ctl_run.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ul_client.h"
#include "ul_sys.h"

/* ------------------------------------------------------------ the table */

static const char s_list_help[] =
    "One line per UVM that has a lease, waiters, a drain or a quarantine; a standard\n"
    "UVM with several holders gets one line per holder. STATE is the most urgent of\n"
    "overdue, quarantined, draining, held, waiting. In the table, a UVM ID longer than\n"
    "20 characters is shown as its beginning, \"\xe2\x80\xa6\" and its \"@...\" suffix, and long\n"
    "labels and phases end in \"\xe2\x80\xa6\"; --wide (-w) prints them whole, as --json always\n"
    "does. \"-\" marks an empty cell.\n";

static const char s_show_help[] =
    "The holders of UVM with their phase history, the waiters in the order in which\n"
    "they will be granted, and the last release. Times are UTC; --json gives them as\n"
    "Unix milliseconds.\n";

static const char s_watch_help[] =
    "One line per broker event (queued, grant, release, timeout, cancel, phase,\n"
    "overdue, drain, undrain, force-release) until SIGINT, SIGTERM or SIGHUP, which\n"
    "end it with exit status 0. --json prints one JSON object per line. If the\n"
    "broker restarts, watch subscribes again and says on stderr that events may have\n"
    "been missed; if no broker answers for 3 seconds, it exits with status 1.\n";

static const char s_stats_help[] =
    "The broker's counters, gauges and latency histograms. Percentiles are the upper\n"
    "bound of the bucket they fall in. --prometheus prints the Prometheus text format\n"
    "(names prefixed uvmlease_, times in seconds), e.g. for node_exporter's textfile\n"
    "collector.\n";

static const char s_drain_help[] =
    "Stop new grants for UVM: its waiters and new acquires fail, current holders\n"
    "finish. Lasts until undrain, even while the UVM is idle. Needs uid 0 or the\n"
    "broker's admin group; the broker audits it with the reason.\n";

static const char s_undrain_help[] = "Let UVM be granted again after a drain. Needs uid 0 or "
                                     "the broker's admin group.\n";

static const char s_release_help[] =
    "Take UVM's lease away from its holder; audited by the broker with the reason.\n"
    "  revoke  release it now and grant the next waiter; the holder's later calls\n"
    "          report the lease revoked. Only for a holder that is wedged, not one\n"
    "          still working: the lease protects what it is doing.\n"
    "  kill    the broker sends the holder SIGTERM, then SIGKILL after its grace\n"
    "          period, and hands the lease on only once the holder has died.\n"
    "--pid picks one holder of a standard UVM (default: every holder).\n"
    "Needs uid 0 or the broker's admin group.\n";

/* ping and run print their own help (ctl_parse_ping, ctl_run_parse). */
static const ctl_cmd s_cmds[] = {
    {.name = "ping",
     .synopsis = "",
     .summary = "check that a broker answers (exit 0) or not (exit 1)",
     .parse = ctl_parse_ping,
     .op = UL_OP_PING,
     .request = ctl_request_one,
     .print = ctl_print_ping},
    {.name = "run",
     .synopsis = "--uvm ID [--confidential] [--timeout MS] [--label L] [--conflict-exit-code N] "
                 "-- CMD [ARGS...]",
     .summary = "hold a UVM's lease while CMD runs",
     .parse = ctl_run_parse,
     .session = ctl_run},
    {.name = "list",
     .synopsis = "[--wide]",
     .summary = "one row per UVM with a lease or waiters",
     .help = s_list_help,
     .parse = ctl_parse_list,
     .op = UL_OP_LIST,
     .request = ctl_request_list,
     .print = ctl_print_list},
    {.name = "show",
     .synopsis = "UVM [--wide]",
     .summary = "the holder, the waiter queue and the last release of a UVM",
     .help = s_show_help,
     .parse = ctl_parse_show,
     .op = UL_OP_SHOW,
     .request = ctl_request_one,
     .print = ctl_print_show},
    {.name = "watch",
     .synopsis = "",
     .summary = "stream grants, releases, timeouts and phases",
     .help = s_watch_help,
     .parse = ctl_parse_none,
     .session = ctl_watch},
    {.name = "stats",
     .synopsis = "[--prometheus]",
     .summary = "counters and latency histograms",
     .help = s_stats_help,
     .parse = ctl_parse_stats,
     .op = UL_OP_STATS,
     .request = ctl_request_one,
     .print = ctl_print_stats},
    {.name = "drain",
     .synopsis = "UVM [--reason TEXT]",
     .summary = "stop new grants for a UVM (admin)",
     .help = s_drain_help,
     .parse = ctl_parse_drain,
     .op = UL_OP_DRAIN,
     .request = ctl_request_one,
     .print = ctl_print_action},
    {.name = "undrain",
     .synopsis = "UVM [--reason TEXT]",
     .summary = "resume grants for a UVM (admin)",
     .help = s_undrain_help,
     .parse = ctl_parse_drain,
     .op = UL_OP_UNDRAIN,
     .request = ctl_request_one,
     .print = ctl_print_action},
    {.name = "release",
     .synopsis = "--force UVM --mode revoke|kill [--pid P] --reason TEXT",
     .summary = "forcibly release a UVM's lease (admin)",
     .help = s_release_help,
     .parse = ctl_parse_release,
     .op = UL_OP_FORCE_RELEASE,
     .request = ctl_request_one,
     .print = ctl_print_action},
};
#define N_CMDS (sizeof s_cmds / sizeof s_cmds[0])

static const ctl_cmd *s_cmd_find(const char *name)
{
    for (size_t i = 0; i < N_CMDS; i++)
        if (strcmp(s_cmds[i].name, name) == 0)
            return &s_cmds[i];
    return NULL;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: uvmleasectl [--endpoint ipc://PATH] [--json] COMMAND [ARGS...]\n\n"
               "commands:\n");
    for (size_t i = 0; i < N_CMDS; i++)
        fprintf(f, "  %-8s %s\n", s_cmds[i].name, s_cmds[i].summary);
    fprintf(f,
            "\nThe endpoint defaults to $UVMLEASE_ENDPOINT, else %s if it exists,\n"
            "else ipc://$XDG_RUNTIME_DIR/uvmlease/broker.sock.\n"
            "Exit codes: 0 ok, 1 failure, 2 usage; `run` exits with its command's status.\n",
            UVMLEASE_SYSTEM_ENDPOINT);
}

/* ----------------------------------------------------------- the driver */

/* Requests and their answers, each printed as it comes, until the command
 * has no more to ask. */
static int s_exchange(const ctl_cmd *cmd, uvmlease *c, const ctl_args *a, ctl_out *o)
{
    char what[UL_MAX_UVM * 4 + 32];
    ctl_what(cmd, a, what, sizeof what);
    ul_request q;
    memset(&q, 0, sizeof q);
    ul_reply *rep = NULL;
    int code = CTL_EXIT_OK;
    for (bool first = true; code == CTL_EXIT_OK; first = false) {
        int more = cmd->request(cmd, a, rep, &q);
        ul_client_reply_free(rep);
        rep = NULL;
        if (more <= 0) {
            code = more < 0 ? CTL_EXIT_FAIL : CTL_EXIT_OK;
            break;
        }
        uint64_t t0 = ul_now_us();
        rep = ctl_call(c, what, &q, UVMLEASE_CALL_TIMEOUT_MS);
        if (!rep)
            return CTL_EXIT_FAIL;
        ctl_answer ans = {.rep = rep, .rtt_us = ul_now_us() - t0, .first = first};
        code = cmd->print(cmd, o, a, &ans);
    }
    ul_client_reply_free(rep);
    if (code == CTL_EXIT_OK && ctl_out_tail(o) != 0)
        code = ctl_write_failed(cmd->name);
    return code;
}

static int s_execute(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv)
{
    ctl_args a;
    int code = cmd->parse(cmd, g, argc, argv, &a);
    if (code >= 0)
        return code;
    if (cmd->session)
        return cmd->session(cmd, g, &a);
    uvmlease *c;
    if (ctl_connect(g, cmd->name, &c) != 0)
        return CTL_EXIT_FAIL;
    const ctl_output *fmt = a.prometheus ? &ctl_output_prom
                            : g->json    ? &ctl_output_json
                                         : &ctl_output_text;
    ctl_out o;
    ctl_out_init(&o, fmt, a.wide, stdout);
    code = s_exchange(cmd, c, &a, &o);
    ctl_out_free(&o);
    uvmlease_close(c);
    return code;
}

/* ------------------------------------------------------------------ main */

/*
 * Pick the global options out of the whole line (before or after the
 * command name), stopping at "--"; what is left goes to the command, in
 * rest (argv[0] its name). -1 to go on, else the exit code.
 */
static int s_split(int argc, char **argv, ctl_opts *g, const ctl_cmd **cmd, char **rest, int *n)
{
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--") == 0) {
            while (i < argc)
                rest[(*n)++] = argv[i++];
            break;
        }
        if (strcmp(s, "--json") == 0) {
            g->json = true;
        } else if (strcmp(s, "--endpoint") == 0) {
            if (i + 1 >= argc) {
                ctl_diag("--endpoint needs a value");
                return CTL_EXIT_USAGE;
            }
            g->endpoint = argv[++i];
        } else if (strncmp(s, "--endpoint=", 11) == 0) {
            g->endpoint = s + 11;
        } else if (!*cmd && (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)) {
            s_usage(stdout);
            return CTL_EXIT_OK;
        } else if (!*cmd && strcmp(s, "--version") == 0) {
            printf("uvmleasectl %s\n", uvmlease_version());
            return CTL_EXIT_OK;
        } else if (!*cmd && s[0] == '-') {
            ctl_diag("unknown option '%s'", s);
            s_usage(stderr);
            return CTL_EXIT_USAGE;
        } else {
            if (!*cmd && !(*cmd = s_cmd_find(s))) {
                ctl_diag("unknown command '%s'", s);
                s_usage(stderr);
                return CTL_EXIT_USAGE;
            }
            rest[(*n)++] = argv[i];
        }
    }
    rest[*n] = NULL;
    return -1;
}

int main(int argc, char **argv)
{
    ctl_opts g = {NULL, false};
    /* Static, so it stays reachable for as long as the command runs. */
    static char **rest;
    rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) {
        ctl_diag("out of memory");
        return CTL_EXIT_FAIL;
    }
    const ctl_cmd *cmd = NULL;
    int n = 0;
    int code = s_split(argc, argv, &g, &cmd, rest, &n);
    if (code >= 0)
        return code;
    if (!cmd) {
        s_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    if (g.endpoint) {
        char ep[300], esc[1024];
        if (ul_client_resolve_endpoint(g.endpoint, ep, sizeof ep) != 0) {
            ctl_diag("bad endpoint '%s': expected ipc://PATH",
                     ctl_esc(g.endpoint, esc, sizeof esc));
            return CTL_EXIT_USAGE;
        }
    }
    return s_execute(cmd, &g, n, rest);
}
