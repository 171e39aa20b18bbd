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

#ifdef UL_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "accept_guard.h"
#include "ul_proto.h"
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

static int s_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
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
        O_HELP,
        O_VERSION
    };
    static const struct option opts[] = {
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
        {"help", no_argument, NULL, O_HELP},
        {"version", no_argument, NULL, O_VERSION},
        {NULL, 0, NULL, 0},
    };
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    opterr = 0;
    int c;
    uint64_t v;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_RUNTIME:
            cfg.runtime_dir = optarg;
            break;
        case O_ENDPOINT:
            if (strncmp(optarg, "ipc://", 6) != 0 || !optarg[6])
                return s_bad("--endpoint", optarg, "only ipc://PATH carries peer credentials");
            cfg.endpoint = optarg;
            break;
        case O_SGROUP:
            cfg.socket_group = optarg;
            break;
        case O_AGROUP:
            cfg.admin_group = optarg;
            break;
        case O_SERIALIZE:
            if (strcmp(optarg, "confidential") == 0)
                cfg.serialize = LT_SERIALIZE_CONFIDENTIAL;
            else if (strcmp(optarg, "all") == 0)
                cfg.serialize = LT_SERIALIZE_ALL;
            else if (strcmp(optarg, "none") == 0)
                cfg.serialize = LT_SERIALIZE_NONE;
            else
                return s_bad("--serialize", optarg, "expected confidential, all or none");
            break;
        case O_MAXACT:
            if (s_parse_u64(optarg, UINT32_MAX, &v) < 0)
                return s_bad("--max-active", optarg, "expected a count");
            cfg.max_active = (uint32_t)v;
            break;
        case O_QUAR:
        case O_WARN:
        case O_GRACE:
            if (s_parse_u64(optarg, 86400000ull * 365, &v) < 0)
                return s_bad(opts[c - 1].name, optarg, "expected milliseconds");
            if (c == O_QUAR)
                cfg.quarantine_ms = v;
            else if (c == O_WARN)
                cfg.hold_warn_ms = v;
            else
                cfg.kill_grace_ms = v;
            break;
        case O_LOGLEVEL: {
            int l = ul_log_level_parse(optarg);
            if (l < 0)
                return s_bad("--log-level", optarg, "expected debug, info, warn or error");
            cfg.log_level = (ul_log_level)l;
            break;
        }
        case O_MAXLEASES:
            if (s_parse_u64(optarg, 1048576, &v) < 0 || v == 0)
                return s_bad("--max-leases", optarg, "expected a count from 1 to 1048576");
            cfg.max_leases = (uint32_t)v;
            break;
        case O_FORCEJ:
            cfg.force_journal = true;
            break;
        case O_HELP:
            s_usage(stdout);
            return 0;
        case O_VERSION:
            printf("uvmleased %s (protocol %d)\n", UL_VERSION, UL_PROTO_VERSION);
            return 0;
        default:
            fprintf(stderr, "uvmleased: unknown or incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "uvmleased: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }

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
    int rc = uvmlease_broker_start(&cfg, &b, &other, err, sizeof err);
    if (rc) {
        fprintf(stderr, "uvmleased: %s\n", err);
        return 1;
    }
#ifdef UL_HAVE_SYSTEMD
    sd_notifyf(0, "READY=1\nSTATUS=serving %s\nMAINPID=%d", uvmlease_broker_endpoint(b),
               (int)getpid());
#endif
    for (;;) {
        int sig = 0;
        if (sigwait(&stop, &sig) != 0)
            continue;
        if (sig == SIGHUP)
            continue; /* nothing to reload; keep serving */
        break;
    }
#ifdef UL_HAVE_SYSTEMD
    sd_notify(0, "STOPPING=1");
#endif
    uvmlease_broker_stop(&b);
    return 0;
}
