/*
 * ctl_run.c — `uvmleasectl run`: hold a UVM's lease while a command runs,
 * like flock(1). It uses the public API only (uvmlease.h).
 *
 * Exit status: CMD's, or RUN_CONFLICT_DEFAULT (--conflict-exit-code) when
 * the lease was not obtained and CMD did not run, RUN_NOT_FOUND /
 * RUN_CANNOT_EXEC when CMD could not be started.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_signal.h"
#include "ul_text.h"

/* The lease was not obtained, CMD did not run. EX_TEMPFAIL from
 * sysexits.h ("try again later"); distinct from flock's 1, which collides
 * with the commonest failure status of CMD itself. */
#define RUN_CONFLICT_DEFAULT 75
/* CMD could not be found / executed, as in sh(1) and env(1). */
#define RUN_NOT_FOUND   127
#define RUN_CANNOT_EXEC 126

/* ------------------------------------------------------------ arguments */

static void s_help(const ctl_cmd *cmd)
{
    printf("usage: uvmleasectl run %s\n\n"
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
           cmd->synopsis, RUN_CONFLICT_DEFAULT, RUN_NOT_FOUND, RUN_CANNOT_EXEC, CTL_EXIT_USAGE);
}

/* The options; -1 when fine. */
static int s_options(const ctl_cmd *cmd, int argc, char **argv, ctl_args *a)
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
    int o;
    uint64_t v;
    ctl_getopt_reset();
    while ((o = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            a->uvm = optarg;
            break;
        case 'c':
            a->confidential = true;
            break;
        case 't':
            if (!ctl_parse_u64(optarg, (uint64_t)INT64_MAX / 4, &v))
                return ctl_usage(cmd, "--timeout wants milliseconds (0 = try once)");
            a->timeout_ms = (int64_t)v;
            break;
        case 'l':
            a->label = optarg;
            break;
        case 'E':
            if (!ctl_parse_u64(optarg, 255, &v))
                return ctl_usage(cmd, "--conflict-exit-code wants 0-255");
            a->conflict = (int)v;
            break;
        case 'h':
            s_help(cmd);
            return CTL_EXIT_OK;
        case ':':
            return ctl_usage(cmd, "%s needs a value", argv[optind - 1]);
        default:
            return ctl_usage(cmd, "unknown option '%s'", argv[optind - 1]);
        }
    }
    return -1;
}

int ctl_run_parse(const ctl_cmd *cmd, const ctl_opts *g, int argc, char **argv, ctl_args *a)
{
    (void)g;
    memset(a, 0, sizeof *a);
    a->timeout_ms = UVMLEASE_FOREVER;
    a->label = "";
    a->conflict = RUN_CONFLICT_DEFAULT;
    int u = s_options(cmd, argc, argv, a);
    if (u >= 0)
        return u;
    /* Global options are picked out of the whole command line up to "--",
     * so CMD must come after one. */
    if (optind < 1 || strcmp(argv[optind - 1], "--") != 0)
        return ctl_usage(cmd, "CMD must follow '--'");
    if (optind >= argc)
        return ctl_usage(cmd, "no CMD after '--'");
    if (!a->uvm)
        return ctl_usage(cmd, "--uvm is required");
    if (ul_uvm_id_check(a->uvm, strlen(a->uvm)) != 0)
        return ctl_usage(cmd, "%s", uvmlease_strerror(UVMLEASE_EBADUVM));
    if (ul_text_check(a->label, strlen(a->label), UVMLEASE_LABEL_MAX) != 0)
        return ctl_usage(cmd, "--label: %s", uvmlease_strerror(UVMLEASE_EBADTEXT));
    a->cmd = argv + optind;
    return -1;
}

/* -------------------------------------------------------------- signals */

/* While waiting, the first four cancel the acquire; while CMD runs, all
 * are forwarded to it. */
static const int s_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

typedef struct run_state {
    pthread_mutex_t mu;
    pid_t child; /* > 0 while CMD may be signalled; -1 once it may not */
    int pending; /* a cancelling signal that came before CMD was started */
    uvmlease_cancel_token *tok;
} run_state;

static void s_on_signal(void *ctx, int sig, const siginfo_t *si)
{
    run_state *st = ctx;
    pthread_mutex_lock(&st->mu);
    if (st->child > 0) {
        /* A signal from the terminal already reached CMD: it shares our
         * foreground process group. Forward only what was sent to us. */
        if (si->si_code != SI_KERNEL)
            kill(st->child, sig);
    } else if (st->child == 0 && sig != SIGUSR1 && sig != SIGUSR2) {
        if (!st->pending)
            st->pending = sig;
        uvmlease_cancel(st->tok);
    }
    pthread_mutex_unlock(&st->mu);
}

static int s_pending(run_state *st)
{
    pthread_mutex_lock(&st->mu);
    int sig = st->pending;
    pthread_mutex_unlock(&st->mu);
    return sig;
}

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

/* ------------------------------------------------------------------ CMD */

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

/* A started CMD: its pid, the go-ahead it waits for, and where it reports
 * an exec failure. */
typedef struct run_child {
    pid_t pid;
    int go;  /* write end: one byte lets CMD exec */
    int err; /* read end: errno of a failed exec, or EOF */
} run_child;

/* Close what of both pipes is open, keeping errno. */
static void s_close_pipes(int go[2], int errp[2])
{
    int e = errno;
    for (int i = 0; i < 2; i++) {
        if (go[i] >= 0)
            close(go[i]);
        if (errp[i] >= 0)
            close(errp[i]);
    }
    errno = e;
}

/* Fork CMD, waiting for the go-ahead. 0; 1 when a signal came before (CMD
 * not started); -1 with errno. */
static int s_spawn(run_state *st, const char *path, char **argv, const sigset_t *mask,
                   run_child *ch)
{
    int go[2] = {-1, -1}, errp[2] = {-1, -1};
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
        goto fail;
    pid_t parent = getpid();
    /* Under the lock: a signal either came before (and cancels) or finds
     * the child to forward to. */
    pthread_mutex_lock(&st->mu);
    if (st->pending) {
        pthread_mutex_unlock(&st->mu);
        s_close_pipes(go, errp);
        return 1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(go[1]);
        close(errp[0]);
        s_child(parent, go[0], errp[1], path, argv, mask);
    }
    st->child = pid > 0 ? pid : -1;
    pthread_mutex_unlock(&st->mu);
    if (pid < 0)
        goto fail;
    close(go[0]);
    close(errp[1]);
    *ch = (run_child){.pid = pid, .go = go[1], .err = errp[0]};
    return 0;
fail:
    s_close_pipes(go, errp);
    return -1;
}

/* Whether the broker knows of CMD, or cannot be told of it (an older
 * broker): then CMD may start. */
static bool s_watched(int rc)
{
    return !rc || rc == UVMLEASE_ENOTIMPL || rc == UVMLEASE_EUNKNOWNOP;
}

/* Tell the broker about CMD, then let it exec (or kill it). Returns the
 * watch_child status. */
static int s_register(uvmlease_lease *l, run_child *ch)
{
    /* The broker must keep the lease until CMD is gone as well, or a
     * `kill -9` of uvmleasectl would hand it on while CMD still works. */
    int rc = uvmlease_watch_child(l, ch->pid);
    if (rc == UVMLEASE_ENOTIMPL || rc == UVMLEASE_EUNKNOWNOP) {
        ctl_diag("run: warning: the broker cannot watch CMD; should uvmleasectl be killed, "
                 "the lease may be handed on before CMD has exited");
    } else if (rc) {
        ctl_diag("run: cannot register CMD with the broker: %s", uvmlease_strerror(rc));
        kill(ch->pid, SIGKILL);
    }
    if (s_watched(rc)) {
        ssize_t w = write(ch->go, "g", 1);
        (void)w;
    }
    close(ch->go);
    return rc;
}

/* Wait for CMD. Returns its exec errno (0 if it ran), *status its wait
 * status. */
static int s_reap(run_state *st, run_child *ch, int *status)
{
    int exec_errno = 0;
    ssize_t n;
    do
        n = read(ch->err, &exec_errno, sizeof exec_errno);
    while (n < 0 && errno == EINTR);
    close(ch->err);
    /* Wait without reaping, then stop forwarding, then reap: a signal must
     * never reach a recycled pid. */
    siginfo_t si;
    while (waitid(P_PID, (id_t)ch->pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&st->mu);
    st->child = -1;
    pthread_mutex_unlock(&st->mu);
    *status = 0;
    while (waitpid(ch->pid, status, 0) < 0 && errno == EINTR)
        ;
    return n == (ssize_t)sizeof exec_errno ? exec_errno : 0;
}

/* Exit status of CMD as a shell reports it. */
static int s_status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return CTL_EXIT_FAIL;
}

/* ----------------------------------------------------------- the session */

static void s_refused(const char *uvm, int rc, const uvmlease_holder *h, int sig)
{
    char e1[UVMLEASE_UVM_MAX * 4 + 1];
    char why[128];
    if (rc == UVMLEASE_ECANCELLED && sig)
        snprintf(why, sizeof why, "interrupted by %s", s_signame(sig));
    else
        snprintf(why, sizeof why, "%s", uvmlease_strerror(rc));
    if (!h || h->pid <= 0) {
        ctl_diag("run: no lease on UVM %s: %s", ctl_esc(uvm, e1, sizeof e1), why);
        return;
    }
    char e2[UVMLEASE_COMM_MAX * 4 + 1], e3[UVMLEASE_LABEL_MAX * 4 + 1],
        e4[UVMLEASE_PHASE_MAX * 4 + 1], held[32];
    ctl_fmt_ms(h->held_ms, held, sizeof held);
    ctl_diag("run: no lease on UVM %s: %s; held by pid %d (%s) label \"%s\" phase \"%s\" for %s",
             ctl_esc(uvm, e1, sizeof e1), why, (int)h->pid, ctl_esc(h->comm, e2, sizeof e2),
             ctl_esc(h->label, e3, sizeof e3), ctl_esc(h->phase, e4, sizeof e4), held);
}

/* Start CMD under the lease and wait for it. Returns the exit code. */
static int s_run_child(run_state *st, uvmlease_lease *l, const ctl_args *a, const char *path,
                       const sigset_t *child_mask)
{
    char fence[32];
    snprintf(fence, sizeof fence, "%" PRIu64, uvmlease_lease_fence(l));
    if (setenv("UVMLEASE_FENCE", fence, 1) != 0) {
        ctl_diag("run: setenv: %s", strerror(errno));
        return a->conflict;
    }
    run_child ch;
    int rc = s_spawn(st, path, a->cmd, child_mask, &ch);
    if (rc > 0) {
        s_refused(a->uvm, UVMLEASE_ECANCELLED, NULL, s_pending(st));
        return a->conflict;
    }
    if (rc < 0) {
        ctl_diag("run: cannot start CMD: %s", strerror(errno));
        return a->conflict;
    }
    rc = s_register(l, &ch);
    int status;
    int exec_errno = s_reap(st, &ch, &status);
    if (!s_watched(rc))
        return a->conflict;
    if (exec_errno) {
        char esc[PATH_MAX * 4 + 1];
        ctl_diag("run: cannot execute %s: %s", ctl_esc(path, esc, sizeof esc),
                 strerror(exec_errno));
        return exec_errno == ENOENT ? RUN_NOT_FOUND : RUN_CANNOT_EXEC;
    }
    return s_status_code(status);
}

/* Connected, with signals taken: acquire, run CMD, release. */
static int s_leased(const ctl_opts *g, const ctl_args *a, run_state *st, const char *path,
                    const sigset_t *child_mask)
{
    uvmlease *c;
    char why[1400];
    if (ctl_connect_why(g, &c, why, sizeof why) != 0) {
        ctl_diag("run: no lease on UVM %s: %s", a->uvm, why);
        return a->conflict;
    }
    uvmlease_holder h;
    uvmlease_lease *l;
    int rc = uvmlease_acquire(c, a->uvm, a->confidential ? UVMLEASE_CONFIDENTIAL : 0, a->label,
                              a->timeout_ms, st->tok, &h, &l);
    if (rc) {
        s_refused(a->uvm, rc, &h, s_pending(st));
        uvmlease_close(c);
        return a->conflict;
    }
    int code = s_run_child(st, l, a, path, child_mask);
    rc = uvmlease_release(l);
    if (rc && rc != UVMLEASE_EREVOKED)
        ctl_diag("run: warning: release: %s (the broker ends the lease when uvmleasectl exits)",
                 uvmlease_strerror(rc));
    uvmlease_close(c);
    return code;
}

int ctl_run(const ctl_cmd *cmd, const ctl_opts *g, const ctl_args *a)
{
    (void)cmd;
    char path[PATH_MAX];
    if (!s_which(a->cmd[0], path, sizeof path)) {
        char esc[PATH_MAX * 4 + 1];
        ctl_diag("run: %s: command not found", ctl_esc(a->cmd[0], esc, sizeof esc));
        return RUN_NOT_FOUND;
    }
    run_state st = {.mu = PTHREAD_MUTEX_INITIALIZER};
    if (uvmlease_cancel_token_new(&st.tok) != 0) {
        ctl_diag("run: out of memory");
        return a->conflict;
    }
    /* Before connecting: every thread, the library's too, inherits the
     * mask; CMD gets the one from before. */
    sigset_t old;
    int code = a->conflict;
    if (ctl_signals_start(s_signals, sizeof s_signals / sizeof s_signals[0], s_on_signal, &st,
                          &old) != 0)
        ctl_diag("run: cannot start the signal thread");
    else
        code = s_leased(g, a, &st, path, &old);
    ctl_signals_stop();
    uvmlease_cancel_token_free(st.tok);
    return code;
}
