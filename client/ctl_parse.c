/*
 * ctl_parse.c — the argument parsers of uvmleasectl's commands (see ctl.h),
 * and the usage and help lines they print.
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "ul_text.h"

#define ESC_UVM (UL_MAX_UVM * 4 + 1)

/* ------------------------------------------------------------- helpers */

int ctl_usage(const ctl_cmd *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "uvmleasectl: %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fprintf(stderr, "usage: uvmleasectl %s%s%s\n", cmd->name, cmd->synopsis[0] ? " " : "",
            cmd->synopsis);
    return CTL_EXIT_USAGE;
}

int ctl_help(const ctl_cmd *cmd)
{
    printf("usage: uvmleasectl [--endpoint ipc://PATH] [--json] %s%s%s\n\n%s", cmd->name,
           cmd->synopsis[0] ? " " : "", cmd->synopsis, cmd->help);
    return CTL_EXIT_OK;
}

void ctl_getopt_reset(void)
{
    optind = 0; /* glibc: 0 also resets its internal state */
    opterr = 0;
}

int ctl_bad_option(const ctl_cmd *cmd, int o, char **argv)
{
    const char *arg = argv[optind - 1];
    if (o == ':')
        return ctl_usage(cmd, "%s needs a value", arg);
    if (optopt && strncmp(arg, "--", 2) != 0)
        return ctl_usage(cmd, "unknown option '-%c'", optopt);
    return ctl_usage(cmd, "unknown option '%s'", arg);
}

bool ctl_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

/* A UVM operand: exactly one, and a valid ID. Returns -1 when fine. */
static int s_uvm_operand(const ctl_cmd *cmd, int argc, char **argv, const char **uvm)
{
    if (optind >= argc)
        return ctl_usage(cmd, "which UVM?");
    if (optind + 1 < argc) {
        char esc[ESC_UVM];
        return ctl_usage(cmd, "unexpected argument '%s'",
                         ctl_esc(argv[optind + 1], esc, sizeof esc));
    }
    *uvm = argv[optind];
    if (ul_uvm_id_check(*uvm, strlen(*uvm)) != 0)
        return ctl_usage(cmd, "%s", uvmlease_strerror(UVMLEASE_EBADUVM));
    return -1;
}

static int s_no_operands(const ctl_cmd *cmd, int argc, char **argv)
{
    if (optind < argc) {
        char esc[ESC_UVM];
        return ctl_usage(cmd, "unexpected argument '%s'", ctl_esc(argv[optind], esc, sizeof esc));
    }
    return -1;
}

static int s_reason_check(const ctl_cmd *cmd, const char *reason)
{
    if (ul_text_check(reason, strlen(reason), UL_MAX_REASON) != 0)
        return ctl_usage(cmd, "--reason: at most %d bytes of UTF-8 without control characters",
                         UL_MAX_REASON);
    return -1;
}

/* Options without values: --wide (-w), --prometheus, --help (-h). shorts
 * is getopt's string for the short ones the command has. */
static int s_flags(const ctl_cmd *cmd, const char *shorts, const struct option *opts, int argc,
                   char **argv, ctl_args *a)
{
    memset(a, 0, sizeof *a);
    a->reason = "";
    int o;
    ctl_getopt_reset();
    while ((o = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        if (o == 'w')
            a->wide = true;
        else if (o == 'p')
            a->prometheus = true;
        else if (o == 'h')
            return ctl_help(cmd);
        else
            return ctl_bad_option(cmd, o, argv);
    }
    return -1;
}

/* ------------------------------------------------------------- parsers */

int ctl_parse_ping(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    memset(a, 0, sizeof *a);
    if (argc > 1) {
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
            printf("usage: uvmleasectl %s\n%s\n", cmd->name, cmd->summary);
            return CTL_EXIT_OK;
        }
        return ctl_usage(cmd, "unexpected argument '%s'", argv[1]);
    }
    return -1;
}

int ctl_parse_none(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    static const struct option opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int u = s_flags(cmd, ":h", opts, argc, argv, a);
    return u >= 0 ? u : s_no_operands(cmd, argc, argv);
}

int ctl_parse_list(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    static const struct option opts[] = {
        {"wide", no_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int u = s_flags(cmd, ":wh", opts, argc, argv, a);
    return u >= 0 ? u : s_no_operands(cmd, argc, argv);
}

int ctl_parse_show(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    static const struct option opts[] = {
        {"wide", no_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int u = s_flags(cmd, ":wh", opts, argc, argv, a);
    return u >= 0 ? u : s_uvm_operand(cmd, argc, argv, &a->uvm);
}

int ctl_parse_stats(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    static const struct option opts[] = {
        {"prometheus", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int u = s_flags(cmd, ":h", opts, argc, argv, a);
    if (u < 0)
        u = s_no_operands(cmd, argc, argv);
    if (u < 0 && a->prometheus && g->json)
        u = ctl_usage(cmd, "--prometheus and --json exclude each other");
    return u;
}

int ctl_parse_drain(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    static const struct option opts[] = {
        {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    a->reason = "";
    int o;
    ctl_getopt_reset();
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (o == 'r')
            a->reason = optarg;
        else if (o == 'h')
            return ctl_help(cmd);
        else
            return ctl_bad_option(cmd, o, argv);
    }
    int u = s_uvm_operand(cmd, argc, argv, &a->uvm);
    return u >= 0 ? u : s_reason_check(cmd, a->reason);
}

/* release's options; -1 when fine. */
static int s_release_opts(const ctl_cmd *cmd, int argc, char **argv, ctl_args *a, bool *force,
                          const char **mode)
{
    static const struct option opts[] = {
        {"force", no_argument, NULL, 'f'},     {"mode", required_argument, NULL, 'm'},
        {"pid", required_argument, NULL, 'p'}, {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},      {NULL, 0, NULL, 0},
    };
    int o;
    uint64_t v;
    ctl_getopt_reset();
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case 'f':
            *force = true;
            break;
        case 'm':
            *mode = optarg;
            break;
        case 'p':
            if (!ctl_parse_u64(optarg, INT32_MAX, &v) || v < 1)
                return ctl_usage(cmd, "--pid wants a process id");
            a->pid = (uint32_t)v;
            break;
        case 'r':
            a->reason = optarg;
            break;
        case 'h':
            return ctl_help(cmd);
        default:
            return ctl_bad_option(cmd, o, argv);
        }
    }
    return -1;
}

int ctl_parse_release(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    memset(a, 0, sizeof *a);
    bool force = false;
    const char *mode = NULL;
    int u = s_release_opts(cmd, argc, argv, a, &force, &mode);
    if (u < 0)
        u = s_uvm_operand(cmd, argc, argv, &a->uvm);
    if (u >= 0)
        return u;
    /* Only forced releases exist here: a lease is released by its holder. */
    if (!force)
        return ctl_usage(cmd, "only --force is possible: a lease is otherwise released by its "
                              "holder");
    if (!mode)
        return ctl_usage(cmd, "--mode revoke or --mode kill is required");
    if (strcmp(mode, "revoke") == 0)
        a->mode = UL_FORCE_REVOKE;
    else if (strcmp(mode, "kill") == 0)
        a->mode = UL_FORCE_KILL;
    else
        return ctl_usage(cmd, "--mode is revoke or kill");
    if (!a->reason || !a->reason[0])
        return ctl_usage(cmd, "--reason is required: it goes into the broker's audit log");
    return s_reason_check(cmd, a->reason);
}
