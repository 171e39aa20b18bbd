/*
 * main.c — uvmleased: options, signals, then the broker's own thread.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "accept_guard.h"
#include "ul_proto.h"
#include "config.h"
#include "notify.h"
#include "uvmlease_broker.h"

static void s_usage(FILE *f)
{
    fprintf(f, "usage: uvmleased [options]\n"
               "\n"
               "Arbitrates exclusive bring-up leases for confidential utility VMs.\n"
               "Runs in the foreground; SIGTERM or SIGINT stops it (stopping releases nothing).\n"
               "\n"
               "  --runtime-dir DIR     private directory: lock, lease journal, socket\n"
               "                        (default /run/uvmlease as root, else\n"
               "                        $XDG_RUNTIME_DIR/uvmlease)\n"
               "  --endpoint ipc://PATH socket elsewhere (nothing else is put beside it)\n"
               "  --socket-group GROUP  group that may connect (directory and socket)\n"
               "  --admin-group GROUP   group allowed to drain and force releases\n"
               "  --serialize MODE      confidential (default) | all | none\n"
               "  --max-active N        host-wide cap on exclusive bring-ups (0 = none)\n"
               "  --quarantine-ms MS    lock a UVM this long after an abnormal release (0)\n"
               "  --hold-warn-ms MS     flag leases held longer as overdue (300000)\n"
               "  --kill-grace-ms MS    force-release kill: SIGTERM to SIGKILL (5000)\n"
               "  --max-leases N        leases plus waiters on the host (16384); sizes the\n"
               "                        lease journal, 1 KiB each, reserved at start\n"
               "  --force-journal       start although the journal is damaged in a way\n"
               "                        that could hide a live lease (check holders first)\n"
               "  --log-level LEVEL     debug | info (default) | warn | error\n"
               "  --config FILE         settings file, one key per flag (default\n"
               "                        " UL_CONFIG_FILE ", if present);\n"
               "                        flags override it\n"
               "  --check-config        validate the settings, print them, and exit\n"
               "  --help, --version\n");
}

static int s_bad(const char *opt, const char *val, const char *why)
{
    fprintf(stderr, "uvmleased: invalid value '%s' for %s: %s\n", val, opt, why);
    return 2;
}

/* Every connection costs descriptors, and the broker sizes its connection
 * limits from the soft limit: take all the hard limit allows. Only the
 * daemon does this; an embedded broker leaves process-wide limits alone. */
static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            fprintf(stderr, "uvmleased: cannot raise the descriptor limit: %s\n", strerror(errno));
    }
}

enum {
    O_RUNTIME = 1,
    O_ENDPOINT,
    O_SGROUP,
    O_AGROUP,
    O_SERIALIZE,
    O_MAXACT,
    O_QUAR,
    O_WARN,
    O_GRACE,
    O_LOGLEVEL,
    O_MAXLEASES,
    O_FORCEJ,
    O_CONFIG,
    O_CHECK,
    O_HELP,
    O_VERSION
};

/* Options named like the settings file's keys (ul_config_set): the order
 * matches the enum above, so opts[c - 1] is option c. */
static const struct option s_opts[] = {
    {"runtime-dir", required_argument, NULL, O_RUNTIME},
    {"endpoint", required_argument, NULL, O_ENDPOINT},
    {"socket-group", required_argument, NULL, O_SGROUP},
    {"admin-group", required_argument, NULL, O_AGROUP},
    {"serialize", required_argument, NULL, O_SERIALIZE},
    {"max-active", required_argument, NULL, O_MAXACT},
    {"quarantine-ms", required_argument, NULL, O_QUAR},
    {"hold-warn-ms", required_argument, NULL, O_WARN},
    {"kill-grace-ms", required_argument, NULL, O_GRACE},
    {"log-level", required_argument, NULL, O_LOGLEVEL},
    {"max-leases", required_argument, NULL, O_MAXLEASES},
    {"force-journal", no_argument, NULL, O_FORCEJ},
    {"config", required_argument, NULL, O_CONFIG},
    {"check-config", no_argument, NULL, O_CHECK},
    {"help", no_argument, NULL, O_HELP},
    {"version", no_argument, NULL, O_VERSION},
    {NULL, 0, NULL, 0},
};

typedef struct s_args {
    const char *conf; /* --config, or NULL for the default file */
    bool check;       /* --check-config */
    int loaded;       /* ul_config_load: 0 read, 1 absent (defaults) */
} s_args;

/* First pass: where the settings come from, so the file is read before
 * any flag is applied over it. */
static void s_prescan(int argc, char **argv, s_args *a, bool *info)
{
    int c;
    while ((c = getopt_long(argc, argv, "", s_opts, NULL)) != -1) {
        if (c == O_CONFIG)
            a->conf = optarg;
        else if (c == O_CHECK)
            a->check = true;
        else if (c == O_HELP || c == O_VERSION)
            *info = true;
    }
}

/* Second pass: every flag over the file. -1 to go on, else an exit code. */
static int s_flags(int argc, char **argv, uvmlease_broker_config *cfg)
{
    int c;
    optind = 0; /* glibc: start the scan afresh */
    while ((c = getopt_long(argc, argv, "", s_opts, NULL)) != -1) {
        char why[128];
        if (c == O_CONFIG || c == O_CHECK)
            continue;
        if (c == O_FORCEJ) {
            cfg->force_journal = true;
        } else if (c >= O_RUNTIME && c <= O_MAXLEASES) {
            if (ul_config_set(cfg, s_opts[c - 1].name, optarg, why, sizeof why) < 0) {
                char flag[64];
                snprintf(flag, sizeof flag, "--%s", s_opts[c - 1].name);
                return s_bad(flag, optarg, why);
            }
        } else if (c == O_HELP) {
            s_usage(stdout);
            return 0;
        } else if (c == O_VERSION) {
            printf("uvmleased %s (protocol %d)\n", UL_VERSION, UL_PROTO_VERSION);
            return 0;
        } else {
            fprintf(stderr, "uvmleased: unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "uvmleased: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    return -1;
}

static int s_check(const uvmlease_broker_config *cfg, const s_args *a)
{
    char err[512];
    if (ul_config_check(cfg, err, sizeof err) < 0) {
        fprintf(stderr, "uvmleased: %s\n", err);
        return 2;
    }
    printf("# uvmleased %s: settings from %s%s\n", UL_VERSION, a->conf ? a->conf : UL_CONFIG_FILE,
           a->loaded == 1 ? " (absent: defaults)" : "");
    ul_config_print(stdout, cfg);
    return 0;
}

/* Start the broker and serve until SIGTERM or SIGINT. */
static int s_serve(uvmlease_broker_config *cfg)
{
    ul_notify_setup(cfg);
    /* Block the stop signals before the broker thread exists so only
     * sigwait() below sees them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    s_raise_nofile();
    ul_accept_guard_init();
    uvmlease_broker *b = NULL;
    pid_t other = 0;
    char err[512];
    if (uvmlease_broker_start(cfg, &b, &other, err, sizeof err) != 0) {
        fprintf(stderr, "uvmleased: %s\n", err);
        return 1;
    }
    ul_notify_ready(b);
    for (;;) {
        int sig = 0;
        if (sigwait(&stop, &sig) != 0)
            continue;
        if (sig == SIGHUP)
            continue; /* nothing to reload; keep serving */
        break;
    }
    ul_notify_stopping();
    uvmlease_broker_stop(&b);
    return 0;
}

int main(int argc, char **argv)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    opterr = 0;
    s_args a = {0};
    bool info = false;
    s_prescan(argc, argv, &a, &info);
    char err[512];
    a.loaded = info ? 1
                    : ul_config_load(&cfg, a.conf ? a.conf : UL_CONFIG_FILE, a.conf != NULL, err,
                                     sizeof err);
    if (a.loaded < 0) {
        fprintf(stderr, "uvmleased: %s\n", err);
        return 2;
    }
    int code = s_flags(argc, argv, &cfg);
    if (code >= 0)
        return code;
    return a.check ? s_check(&cfg, &a) : s_serve(&cfg);
}
