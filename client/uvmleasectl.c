/*
 * uvmleasectl.c — command-line client of the uvmlease broker.
 *
 *   uvmleasectl [--endpoint E] [--json] COMMAND [ARGS...]
 *
 * Global options may also follow the command name (up to a "--"). Data goes
 * to stdout, diagnostics to stderr. Exit codes: 0 ok, 1 failure, 2 usage —
 * except `run`, which exits with its command's status (see cmd_run).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"
#include "ul_client.h"
#include "ul_text.h"
#include "uvmlease.h"

#define EXIT_OK    CTL_EXIT_OK
#define EXIT_FAIL  CTL_EXIT_FAIL
#define EXIT_USAGE CTL_EXIT_USAGE

/* run: the lease was not obtained, CMD did not run. EX_TEMPFAIL from
 * sysexits.h ("try again later"); distinct from flock's 1, which collides
 * with the commonest failure status of CMD itself. */
#define RUN_CONFLICT_DEFAULT 75
/* run: CMD could not be found / executed, as in sh(1) and env(1). */
#define RUN_NOT_FOUND   127
#define RUN_CANNOT_EXEC 126

static const char *s_prog = "uvmleasectl";

/* The dispatch table: each command gets argv[0] = its name, with the
 * global options already taken out (ctl.h). */
typedef struct ctl_cmd {
    const char *name;
    int (*fn)(const ctl_opts *g, int argc, char **argv); /* NULL: not implemented yet */
    const char *synopsis;
    const char *summary;
} ctl_cmd;

static int cmd_ping(const ctl_opts *g, int argc, char **argv);
static int cmd_run(const ctl_opts *g, int argc, char **argv);

static const ctl_cmd s_cmds[] = {
    {"ping", cmd_ping, "", "check that a broker answers (exit 0) or not (exit 1)"},
    {"run", cmd_run,
     "--uvm ID [--confidential] [--timeout MS] [--label L] [--conflict-exit-code N] -- CMD "
     "[ARGS...]",
     "hold a UVM's lease while CMD runs"},
    {"list", ctl_cmd_list, "[--wide]", "one row per UVM with a lease or waiters"},
    {"show", ctl_cmd_show, "UVM [--wide]",
     "the holder, the waiter queue and the last release of a UVM"},
    {"watch", ctl_cmd_watch, "", "stream grants, releases, timeouts and phases"},
    {"stats", ctl_cmd_stats, "[--prometheus]", "counters and latency histograms"},
    {"drain", ctl_cmd_drain, "UVM [--reason TEXT]", "stop new grants for a UVM (admin)"},
    {"undrain", ctl_cmd_undrain, "UVM [--reason TEXT]", "resume grants for a UVM (admin)"},
    {"release", ctl_cmd_release, "--force UVM --mode revoke|kill [--pid P] --reason TEXT",
     "forcibly release a UVM's lease (admin)"},
};
#define N_CMDS (sizeof s_cmds / sizeof s_cmds[0])

/* ---------------------------------------------------------------- output */

__attribute__((format(printf, 1, 2))) static void s_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", s_prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Client-supplied text, made safe for a terminal. */
static const char *s_esc(const char *s, char *buf, size_t bufsz)
{
    ul_escape(s, strlen(s), buf, bufsz);
    return buf;
}

/* A JSON string body: quotes, backslashes and control characters escaped.
 * The rest is UTF-8 already validated by the codec. */
static void s_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* "850ms", "1.2s", "3m04s", "2h05m". */
static void s_fmt_ms(uint64_t ms, char *out, size_t outsz)
{
    if (ms < 1000)
        snprintf(out, outsz, "%" PRIu64 "ms", ms);
    else if (ms < 60000)
        snprintf(out, outsz, "%" PRIu64 ".%" PRIu64 "s", ms / 1000, ms % 1000 / 100);
    else if (ms < 3600000)
        snprintf(out, outsz, "%" PRIu64 "m%02" PRIu64 "s", ms / 60000, ms % 60000 / 1000);
    else
        snprintf(out, outsz, "%" PRIu64 "h%02" PRIu64 "m", ms / 3600000, ms % 3600000 / 60000);
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: %s [--endpoint ipc://PATH] [--json] COMMAND [ARGS...]\n\ncommands:\n",
            s_prog);
    for (size_t i = 0; i < N_CMDS; i++)
        fprintf(f, "  %-8s %s%s\n", s_cmds[i].name, s_cmds[i].summary,
                s_cmds[i].fn ? "" : " (not implemented yet)");
    fprintf(f,
            "\nThe endpoint defaults to $UVMLEASE_ENDPOINT, else %s if it exists,\n"
            "else ipc://$XDG_RUNTIME_DIR/uvmlease/broker.sock.\n"
            "Exit codes: 0 ok, 1 failure, 2 usage; `run` exits with its command's status.\n",
            UVMLEASE_SYSTEM_ENDPOINT);
}

__attribute__((format(printf, 2, 3))) static int s_cmd_usage(const ctl_cmd *c, const char *fmt, ...)
{
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "%s: %s: ", s_prog, c->name);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    fprintf(stderr, "usage: %s %s %s\n", s_prog, c->name, c->synopsis);
    return EXIT_USAGE;
}

static const ctl_cmd *s_cmd_find(const char *name)
{
    for (size_t i = 0; i < N_CMDS; i++)
        if (strcmp(s_cmds[i].name, name) == 0)
            return &s_cmds[i];
    return NULL;
}

/* Strict unsigned decimal within [0, max]. */
static bool s_parse_u64(const char *s, uint64_t max, uint64_t *out)
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

/* Connect; on failure, why is a one-line reason naming the endpoint. */
static int s_connect(const ctl_opts *g, uvmlease **c, char *why, size_t whysz)
{
    int rc = uvmlease_connect(g->endpoint, c);
    if (rc) {
        int e = errno;
        char ep[300], esc[1200];
        if (ul_client_resolve_endpoint(g->endpoint, ep, sizeof ep) != 0)
            snprintf(ep, sizeof ep, "%s", g->endpoint ? g->endpoint : "?");
        snprintf(why, whysz, "cannot reach the broker at %s: %s", s_esc(ep, esc, sizeof esc),
                 rc == UVMLEASE_ESYSTEM ? strerror(e) : uvmlease_strerror(rc));
    }
    return rc;
}

/* ------------------------------------------------------------------ ping */

static int cmd_ping(const ctl_opts *g, int argc, char **argv)
{
    const ctl_cmd *self = s_cmd_find("ping");
    if (argc > 1) {
        if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
            printf("usage: %s ping\n%s\n", s_prog, self->summary);
            return EXIT_OK;
        }
        return s_cmd_usage(self, "unexpected argument '%s'", argv[1]);
    }
    uvmlease *c;
    char why[1400];
    if (s_connect(g, &c, why, sizeof why) != 0) {
        s_diag("ping: %s", why);
        return EXIT_FAIL;
    }
    uvmlease_ping_info info;
    int rc = uvmlease_ping(c, &info);
    uvmlease_close(c);
    if (rc) {
        s_diag("ping: %s", uvmlease_strerror(rc));
        return EXIT_FAIL;
    }
    if (g->json) {
        printf("{\"pid\":%d,\"version\":", (int)info.pid);
        s_json_str(stdout, info.version);
        printf(",\"instance\":\"%016" PRIx64 "\",\"rtt_us\":%" PRIu64 ",\"journal\":%s}\n",
               info.instance, info.rtt_us,
               info.journal == 1   ? "\"ok\""
               : info.journal == 0 ? "\"failing\""
                                   : "null");
    } else {
        char esc[UVMLEASE_VERSION_MAX * 4 + 1];
        printf("broker pid %d version %s instance %016" PRIx64 " round trip %" PRIu64
               "us journal %s\n",
               (int)info.pid, s_esc(info.version, esc, sizeof esc), info.instance, info.rtt_us,
               info.journal == 1   ? "ok"
               : info.journal == 0 ? "FAILING"
                                   : "unknown");
        if (info.journal == 0)
            s_diag("ping: the broker cannot record leases: exclusive grants are suspended");
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------------- run */

/* Signals run handles: while waiting, the first four cancel the acquire;
 * while CMD runs, all are forwarded to it. */
static const int s_run_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define N_RUN_SIGNALS (sizeof s_run_signals / sizeof s_run_signals[0])

static const char *s_signame(int sig)
{
    switch (sig) {
    case SIGINT:
        return "SIGINT";
    case SIGTERM:
        return "SIGTERM";
    case SIGHUP:
        return "SIGHUP";
    case SIGQUIT:
        return "SIGQUIT";
    default:
        return "a signal";
    }
}

typedef struct run_state {
    pthread_mutex_t mu;
    sigset_t set;
    pid_t child; /* > 0 while CMD may be signalled */
    int pending; /* a cancelling signal that came before CMD was started */
    uvmlease_cancel_token *tok;
} run_state;

static void *s_sig_main(void *arg)
{
    run_state *st = arg;
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&st->set, &si);
        if (sig < 0)
            continue;
        pthread_mutex_lock(&st->mu);
        if (st->child > 0) {
            /* A signal from the terminal already reached CMD: it shares our
             * foreground process group. Forward only what was sent to us. */
            if (si.si_code != SI_KERNEL)
                kill(st->child, sig);
        } else if (st->child == 0 && sig != SIGUSR1 && sig != SIGUSR2) {
            if (!st->pending)
                st->pending = sig;
            uvmlease_cancel(st->tok);
        }
        pthread_mutex_unlock(&st->mu);
    }
    return NULL;
}

/* CMD's path: as given if it has a slash, else the first executable
 * regular file on $PATH. Resolved before the lease is taken, and before
 * fork(), where only async-signal-safe calls are allowed. */
static bool s_which(const char *cmd, char *out, size_t outsz)
{
    if (strchr(cmd, '/')) {
        snprintf(out, outsz, "%s", cmd);
        return true;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    while (*path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        int n = len ? snprintf(out, outsz, "%.*s/%s", (int)len, path, cmd)
                    : snprintf(out, outsz, "./%s", cmd);
        struct stat st;
        if (n > 0 && (size_t)n < outsz && stat(out, &st) == 0 && S_ISREG(st.st_mode) &&
            access(out, X_OK) == 0)
            return true;
        path += len + (end ? 1 : 0);
    }
    return false;
}

/* The forked child: wait for the go-ahead, then become CMD. Only
 * async-signal-safe calls: the parent has threads. */
__attribute__((noreturn)) static void s_child(pid_t parent, int go_fd, int err_fd, const char *path,
                                              char **argv, const sigset_t *mask)
{
    /* CMD must not outlive uvmleasectl: the lease is only ours while we
     * live (and, with watch-child, while CMD lives). The parent may have
     * died before prctl() took effect, hence the re-check. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(RUN_NOT_FOUND);
    char b;
    ssize_t n;
    do
        n = read(go_fd, &b, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1 || getppid() != parent)
        _exit(RUN_NOT_FOUND);
    sigprocmask(SIG_SETMASK, mask, NULL);
    execv(path, argv);
    int e = errno;
    ssize_t w = write(err_fd, &e, sizeof e);
    (void)w;
    _exit(e == ENOENT ? RUN_NOT_FOUND : RUN_CANNOT_EXEC);
}

static void s_run_refused(const char *uvm, int rc, const uvmlease_holder *h, int sig)
{
    char e1[UVMLEASE_UVM_MAX * 4 + 1];
    char why[128];
    if (rc == UVMLEASE_ECANCELLED && sig)
        snprintf(why, sizeof why, "interrupted by %s", s_signame(sig));
    else
        snprintf(why, sizeof why, "%s", uvmlease_strerror(rc));
    if (!h || h->pid <= 0) {
        s_diag("run: no lease on UVM %s: %s", s_esc(uvm, e1, sizeof e1), why);
        return;
    }
    char e2[UVMLEASE_COMM_MAX * 4 + 1], e3[UVMLEASE_LABEL_MAX * 4 + 1],
        e4[UVMLEASE_PHASE_MAX * 4 + 1], held[32];
    s_fmt_ms(h->held_ms, held, sizeof held);
    s_diag("run: no lease on UVM %s: %s; held by pid %d (%s) label \"%s\" phase \"%s\" for %s",
           s_esc(uvm, e1, sizeof e1), why, (int)h->pid, s_esc(h->comm, e2, sizeof e2),
           s_esc(h->label, e3, sizeof e3), s_esc(h->phase, e4, sizeof e4), held);
}

typedef struct run_args {
    const char *uvm;
    bool confidential;
    int64_t timeout_ms;
    const char *label;
    int conflict;
    char **cmd;
} run_args;

static int s_run_parse(const ctl_cmd *self, int argc, char **argv, run_args *a)
{
    static const struct option opts[] = {
        {"uvm", required_argument, NULL, 'u'},
        {"confidential", no_argument, NULL, 'c'},
        {"timeout", required_argument, NULL, 't'},
        {"label", required_argument, NULL, 'l'},
        {"conflict-exit-code", required_argument, NULL, 'E'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(a, 0, sizeof *a);
    a->timeout_ms = UVMLEASE_FOREVER;
    a->label = "";
    a->conflict = RUN_CONFLICT_DEFAULT;
    optind = 0; /* glibc: start afresh */
    opterr = 0;
    int o;
    uint64_t v;
    while ((o = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            a->uvm = optarg;
            break;
        case 'c':
            a->confidential = true;
            break;
        case 't':
            if (!s_parse_u64(optarg, (uint64_t)INT64_MAX / 4, &v))
                return s_cmd_usage(self, "--timeout wants milliseconds (0 = try once)");
            a->timeout_ms = (int64_t)v;
            break;
        case 'l':
            a->label = optarg;
            break;
        case 'E':
            if (!s_parse_u64(optarg, 255, &v))
                return s_cmd_usage(self, "--conflict-exit-code wants 0-255");
            a->conflict = (int)v;
            break;
        case 'h':
            printf("usage: %s run %s\n\n"
                   "Hold the lease of UVM ID while CMD runs, like flock(1). Waits forever\n"
                   "unless --timeout (0 = try once). CMD gets the fence token in\n"
                   "UVMLEASE_FENCE. SIGINT/SIGTERM/SIGHUP/SIGQUIT cancel the wait; while CMD\n"
                   "runs, they and SIGUSR1/SIGUSR2 are forwarded to it. If uvmleasectl dies,\n"
                   "CMD is killed, and the broker hands the lease on only once CMD is gone\n"
                   "too. CMD should not leave daemons behind: they are not watched.\n\n"
                   "Exit status: CMD's (128+N if killed by signal N); %d (--conflict-exit-code)\n"
                   "if the lease was not obtained (busy, timeout, draining, no broker,\n"
                   "interrupted) and CMD did not run; %d / %d if CMD was not found / could\n"
                   "not be executed; %d on usage errors.\n",
                   s_prog, self->synopsis, RUN_CONFLICT_DEFAULT, RUN_NOT_FOUND, RUN_CANNOT_EXEC,
                   EXIT_USAGE);
            exit(EXIT_OK);
        case ':':
            return s_cmd_usage(self, "%s needs a value", argv[optind - 1]);
        default:
            return s_cmd_usage(self, "unknown option '%s'", argv[optind - 1]);
        }
    }
    /* Global options are picked out of the whole command line up to "--",
     * so CMD must come after one. */
    if (optind < 1 || strcmp(argv[optind - 1], "--") != 0)
        return s_cmd_usage(self, "CMD must follow '--'");
    if (optind >= argc)
        return s_cmd_usage(self, "no CMD after '--'");
    if (!a->uvm)
        return s_cmd_usage(self, "--uvm is required");
    if (ul_uvm_id_check(a->uvm, strlen(a->uvm)) != 0)
        return s_cmd_usage(self, "%s", uvmlease_strerror(UVMLEASE_EBADUVM));
    if (ul_text_check(a->label, strlen(a->label), UVMLEASE_LABEL_MAX) != 0)
        return s_cmd_usage(self, "--label: %s", uvmlease_strerror(UVMLEASE_EBADTEXT));
    a->cmd = argv + optind;
    return -1;
}

/* Exit status of CMD as a shell reports it. */
static int s_status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return EXIT_FAIL;
}

/* Start CMD under the lease and wait for it. Returns the exit code. */
static int s_run_child(run_state *st, uvmlease_lease *l, const run_args *a, const char *path,
                       const sigset_t *child_mask)
{
    char fence[32];
    snprintf(fence, sizeof fence, "%" PRIu64, uvmlease_lease_fence(l));
    if (setenv("UVMLEASE_FENCE", fence, 1) != 0) {
        s_diag("run: setenv: %s", strerror(errno));
        return a->conflict;
    }
    int go[2], errp[2];
    if (pipe2(go, O_CLOEXEC) < 0)
        goto sys_fail;
    if (pipe2(errp, O_CLOEXEC) < 0) {
        close(go[0]);
        close(go[1]);
        goto sys_fail;
    }

    pid_t parent = getpid();
    pthread_mutex_lock(&st->mu);
    if (st->pending) {
        int sig = st->pending;
        pthread_mutex_unlock(&st->mu);
        close(go[0]);
        close(go[1]);
        close(errp[0]);
        close(errp[1]);
        s_run_refused(a->uvm, UVMLEASE_ECANCELLED, NULL, sig);
        return a->conflict;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(go[1]);
        close(errp[0]);
        s_child(parent, go[0], errp[1], path, a->cmd, child_mask);
    }
    st->child = pid > 0 ? pid : -1;
    pthread_mutex_unlock(&st->mu);
    close(go[0]);
    close(errp[1]);
    if (pid < 0) {
        close(go[1]);
        close(errp[0]);
        goto sys_fail;
    }

    /* The broker must keep the lease until CMD is gone as well, or a
     * `kill -9` of uvmleasectl would hand it on while CMD still works. */
    int rc = uvmlease_watch_child(l, pid);
    if (rc == UVMLEASE_ENOTIMPL || rc == UVMLEASE_EUNKNOWNOP) {
        s_diag("run: warning: the broker cannot watch CMD; should uvmleasectl be killed, "
               "the lease may be handed on before CMD has exited");
    } else if (rc) {
        s_diag("run: cannot register CMD with the broker: %s", uvmlease_strerror(rc));
        kill(pid, SIGKILL);
    }
    if (!rc || rc == UVMLEASE_ENOTIMPL || rc == UVMLEASE_EUNKNOWNOP) {
        ssize_t w = write(go[1], "g", 1);
        (void)w;
    }
    close(go[1]);

    int exec_errno = 0;
    ssize_t n;
    do
        n = read(errp[0], &exec_errno, sizeof exec_errno);
    while (n < 0 && errno == EINTR);
    close(errp[0]);

    /* Wait without reaping, then stop forwarding, then reap: a signal must
     * never reach a recycled pid. */
    siginfo_t si;
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&st->mu);
    st->child = -1;
    pthread_mutex_unlock(&st->mu);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;

    if (rc && rc != UVMLEASE_ENOTIMPL && rc != UVMLEASE_EUNKNOWNOP)
        return a->conflict;
    if (n == (ssize_t)sizeof exec_errno) {
        char esc[PATH_MAX * 4 + 1];
        s_diag("run: cannot execute %s: %s", s_esc(path, esc, sizeof esc), strerror(exec_errno));
        return exec_errno == ENOENT ? RUN_NOT_FOUND : RUN_CANNOT_EXEC;
    }
    return s_status_code(status);

sys_fail:
    s_diag("run: cannot start CMD: %s", strerror(errno));
    return a->conflict;
}

static int cmd_run(const ctl_opts *g, int argc, char **argv)
{
    const ctl_cmd *self = s_cmd_find("run");
    run_args a;
    int prc = s_run_parse(self, argc, argv, &a);
    if (prc >= 0)
        return prc;

    char path[PATH_MAX];
    if (!s_which(a.cmd[0], path, sizeof path)) {
        char esc[PATH_MAX * 4 + 1];
        s_diag("run: %s: command not found", s_esc(a.cmd[0], esc, sizeof esc));
        return RUN_NOT_FOUND;
    }

    /* Signals are taken by one thread with sigwaitinfo(); block them before
     * any thread exists so every thread (the library's too) inherits it. */
    /* Static: the signal thread uses it until the process exits. */
    static run_state st;
    pthread_mutex_init(&st.mu, NULL);
    sigemptyset(&st.set);
    for (size_t i = 0; i < N_RUN_SIGNALS; i++)
        sigaddset(&st.set, s_run_signals[i]);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &st.set, &old);
    if (uvmlease_cancel_token_new(&st.tok) != 0) {
        s_diag("run: out of memory");
        return a.conflict;
    }
    pthread_t sig_thread;
    if (pthread_create(&sig_thread, NULL, s_sig_main, &st) != 0) {
        s_diag("run: cannot start the signal thread");
        return a.conflict;
    }
    pthread_detach(sig_thread);

    uvmlease *c;
    char why[1400];
    if (s_connect(g, &c, why, sizeof why) != 0) {
        s_diag("run: no lease on UVM %s: %s", a.uvm, why);
        return a.conflict;
    }
    uvmlease_holder h;
    uvmlease_lease *l;
    int rc = uvmlease_acquire(c, a.uvm, a.confidential ? UVMLEASE_CONFIDENTIAL : 0, a.label,
                              a.timeout_ms, st.tok, &h, &l);
    if (rc) {
        pthread_mutex_lock(&st.mu);
        int sig = st.pending;
        pthread_mutex_unlock(&st.mu);
        s_run_refused(a.uvm, rc, &h, sig);
        uvmlease_close(c);
        return a.conflict;
    }

    int code = s_run_child(&st, l, &a, path, &old);

    rc = uvmlease_release(l);
    if (rc && rc != UVMLEASE_EREVOKED)
        s_diag("run: warning: release: %s (the broker ends the lease when uvmleasectl exits)",
               uvmlease_strerror(rc));
    uvmlease_close(c);
    return code;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    ctl_opts g = {NULL, false};
    /* Pick the global options out of the whole line (before or after the
     * command name), stopping at "--". What is left goes to the command. */
    /* Static, so it stays reachable for as long as the command runs. */
    static char **rest;
    rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest) {
        s_diag("out of memory");
        return EXIT_FAIL;
    }
    int n = 0;
    const ctl_cmd *cmd = NULL;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (strcmp(s, "--") == 0) {
            while (i < argc)
                rest[n++] = argv[i++];
            break;
        }
        if (strcmp(s, "--json") == 0) {
            g.json = true;
        } else if (strcmp(s, "--endpoint") == 0) {
            if (i + 1 >= argc) {
                s_diag("--endpoint needs a value");
                return EXIT_USAGE;
            }
            g.endpoint = argv[++i];
        } else if (strncmp(s, "--endpoint=", 11) == 0) {
            g.endpoint = s + 11;
        } else if (!cmd && (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0)) {
            s_usage(stdout);
            return EXIT_OK;
        } else if (!cmd && strcmp(s, "--version") == 0) {
            printf("uvmleasectl %s\n", uvmlease_version());
            return EXIT_OK;
        } else if (!cmd && s[0] == '-') {
            s_diag("unknown option '%s'", s);
            s_usage(stderr);
            return EXIT_USAGE;
        } else {
            if (!cmd) {
                cmd = s_cmd_find(s);
                if (!cmd) {
                    s_diag("unknown command '%s'", s);
                    s_usage(stderr);
                    return EXIT_USAGE;
                }
            }
            rest[n++] = argv[i];
        }
    }
    rest[n] = NULL;
    if (!cmd) {
        s_usage(stderr);
        return EXIT_USAGE;
    }
    if (g.endpoint) {
        char ep[300];
        if (ul_client_resolve_endpoint(g.endpoint, ep, sizeof ep) != 0) {
            char esc[1024];
            s_diag("bad endpoint '%s': expected ipc://PATH", s_esc(g.endpoint, esc, sizeof esc));
            return EXIT_USAGE;
        }
    }
    if (!cmd->fn) {
        s_diag("%s: not implemented yet", cmd->name);
        return EXIT_FAIL;
    }
    return cmd->fn(&g, n, rest);
}
