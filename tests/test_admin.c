// ctest-timeout: 180
/*
 * test_admin.c — the admin operations at the protocol level: list, show,
 * watch, stats, drain, forced release, and who may run them.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

#define UVM "aaaa2a9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm"

TestSuite(admin, .timeout = 90);

static char s_dir[256];
static uvmlease_broker *s_b;

static const char *s_start(uvmlease_broker_config *cfg)
{
    s_b = ut_broker_start(cfg, s_dir);
    return uvmlease_broker_endpoint(s_b);
}

static void s_stop(void)
{
    ut_broker_stop(&s_b, s_dir);
}

static void s_put_q(void *ctx)
{
    ut_chan_put(ctx, 'Q');
}

/* A child that acquires (reporting Q/G on rep), optionally reports a phase,
 * then waits for a byte on go (or forever) and releases; it writes its
 * label to logf when granted. */
typedef struct child_args {
    const char *ep;
    const char *label;
    ut_chan *rep;
    ut_chan *go;
    const char *logf;
    bool ignore_term;
} child_args;

static int s_child(const child_args *a)
{
    if (a->ignore_term)
        signal(SIGTERM, SIG_IGN);
    void *s = ut_dealer(a->ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    if (ut_acquire(s, UVM, true, a->label, UL_TIMEOUT_FOREVER, &r, s_put_q, a->rep, 30000))
        return 10;
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    if (a->logf) {
        int fd = open(a->logf, O_WRONLY | O_APPEND | O_CREAT, 0600);
        dprintf(fd, "%s\n", a->label);
        close(fd);
    }
    ul_request q;
    ut_req(&q, UL_OP_PHASE);
    q.lease = lease;
    snprintf(q.phase, sizeof q.phase, "scratch-attach");
    if (ut_call(s, &q, &r, 5000) || r.err)
        return 11;
    ul_reply_free(&r);
    ut_chan_put(a->rep, 'G');
    if (!a->go) {
        pause();
        return 0;
    }
    if (ut_chan_get(a->go, 30000) < 0)
        return 12;
    return ut_release(s, lease) == 0 ? 0 : 13;
}

static pid_t s_spawn(const child_args *a)
{
    pid_t p = ut_fork();
    if (p == 0)
        _exit(s_child(a));
    return p;
}

static void s_call_ok(void *s, ul_request *q, ul_reply *r)
{
    memset(r, 0, sizeof *r);
    cr_assert_eq(ut_call(s, q, r, 5000), 0, "no reply to %s", ul_op_name(q->op));
}

Test(admin, show_queue_order_is_grant_order)
{
    const char *ep = s_start(NULL);
    char logf[300];
    snprintf(logf, sizeof logf, "%s/order", s_dir);
    enum { N = 4 };
    ut_chan rep[N], go[N];
    pid_t pid[N];
    const char *labels[N] = {"holder", "w1", "w2", "w3"};
    for (int i = 0; i < N; i++) {
        ut_chan_open(&rep[i]);
        ut_chan_open(&go[i]);
        child_args a = {.ep = ep, .label = labels[i], .rep = &rep[i], .go = &go[i], .logf = logf};
        pid[i] = s_spawn(&a);
        cr_assert_eq(ut_chan_get(&rep[i], 30000), i == 0 ? 'G' : 'Q');
    }
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(r.n_uvms, 1);
    ul_uvm_info *u = &r.uvms[0];
    cr_assert(u->confidential);
    cr_assert_eq(u->n_holders, 1);
    cr_assert_eq(u->holders[0].pid, (uint32_t)pid[0]);
    cr_assert_str_eq(u->holders[0].label, "holder");
    cr_assert_str_eq(u->holders[0].phase, "scratch-attach");
    cr_assert_geq(u->holders[0].n_phases, 1);
    cr_assert_eq(u->waiter_count, 3);
    cr_assert_eq(u->n_waiters, 3);
    uint32_t shown[3];
    for (int i = 0; i < 3; i++) {
        shown[i] = u->waiters[i].pid;
        cr_assert_eq(u->waiters[i].timeout_ms, -1);
    }
    ul_reply_free(&r);
    /* Release one after another and record who is granted. */
    for (int i = 0; i < N; i++) {
        if (i > 0)
            cr_assert_eq(ut_chan_get(&rep[i], 30000), 'G');
        ut_chan_put(&go[i], 'x');
        cr_assert_eq(ut_wait_code(pid[i], 10000), 0);
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(shown[i], (uint32_t)pid[i + 1], "show's queue order differs from grants");
    /* Last release is recorded. */
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, UVMLEASE_EUNKNOWNUVM, "an idle UVM is forgotten");
    ul_reply_free(&r);
    s_stop();
}

Test(admin, list_and_stats)
{
    const char *ep = s_start(NULL);
    ut_chan rep, go;
    ut_chan_open(&rep);
    ut_chan_open(&go);
    child_args a = {.ep = ep, .label = "ctr-1", .rep = &rep, .go = &go};
    pid_t p = s_spawn(&a);
    cr_assert_eq(ut_chan_get(&rep, 30000), 'G');
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_LIST);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(r.n_uvms, 1);
    cr_assert_str_eq(r.uvms[0].uvm, UVM);
    cr_assert_eq(r.uvms[0].n_holders, 1);
    cr_assert_eq(r.uvms[0].holders[0].pid, (uint32_t)p);
    cr_assert_str_eq(r.uvms[0].holders[0].phase, "scratch-attach");
    cr_assert(!r.more);
    ul_reply_free(&r);
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(p, 10000), 0);

    ut_req(&q, UL_OP_STATS);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0);
    uint64_t grants = 0, released = 0;
    for (uint32_t i = 0; i < r.n_counters; i++) {
        if (!strcmp(r.counters[i].name, "grants_total"))
            grants = r.counters[i].value;
        if (!strcmp(r.counters[i].name, "releases_total") &&
            !strcmp(r.counters[i].lval, "released"))
            released = r.counters[i].value;
    }
    cr_assert_eq(grants, 1);
    cr_assert_eq(released, 1);
    bool hold_seen = false;
    for (uint32_t i = 0; i < r.n_hists; i++)
        if (!strcmp(r.hists[i].name, "hold_seconds"))
            hold_seen = r.hists[i].count == 1;
    cr_assert(hold_seen);
    ul_reply_free(&r);
    s_stop();
}

Test(admin, list_pages)
{
    const char *ep = s_start(NULL);
    pid_t p = ut_fork();
    if (p == 0) {
        void *s = ut_dealer(ep);
        for (int i = 0; i < 300; i++) {
            char id[32];
            snprintf(id, sizeof id, "page-%03d@vm", i);
            ul_reply r;
            memset(&r, 0, sizeof r);
            if (ut_acquire(s, id, true, "", 0, &r, NULL, NULL, 5000))
                _exit(10);
            ul_reply_free(&r);
        }
        ut_chan c;
        (void)c;
        pause();
        _exit(0);
    }
    void *s = ut_dealer(ep);
    /* Wait until all 300 are held (bounded by time: the child's 300 round
     * trips are slow on a loaded machine or under ASan). */
    int seen = 0;
    uint64_t deadline = ul_now_ms() + 30000;
    while (seen != 300 && ul_now_ms() < deadline) {
        seen = 0;
        char after[UL_MAX_UVM + 1] = "";
        bool more = true;
        int pages = 0;
        while (more) {
            ul_request q;
            ul_reply r;
            ut_req(&q, UL_OP_LIST);
            q.limit = 128;
            snprintf(q.after, sizeof q.after, "%s", after);
            s_call_ok(s, &q, &r);
            cr_assert_eq(r.err, 0);
            for (uint32_t i = 0; i < r.n_uvms; i++) {
                cr_assert_gt(strcmp(r.uvms[i].uvm, after), 0, "pages not in order");
                snprintf(after, sizeof after, "%s", r.uvms[i].uvm);
            }
            seen += (int)r.n_uvms;
            more = r.more;
            pages++;
            ul_reply_free(&r);
        }
        if (seen == 300)
            cr_assert_eq(pages, 3);
        else
            usleep(5000);
    }
    cr_assert_eq(seen, 300);
    kill(p, SIGKILL);
    ut_wait(p, 5000);
    s_stop();
}

Test(admin, watch_sees_grant_phase_release)
{
    const char *ep = s_start(NULL);
    void *w = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_WATCH);
    s_call_ok(w, &q, &r);
    cr_assert_eq(r.err, 0);
    ut_chan rep, go;
    ut_chan_open(&rep);
    ut_chan_open(&go);
    child_args a = {.ep = ep, .label = "watched", .rep = &rep, .go = &go};
    pid_t p = s_spawn(&a);
    cr_assert_eq(ut_chan_get(&rep, 30000), 'G');
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    bool grant = false, phase = false, release = false;
    while (!(grant && phase && release)) {
        memset(&r, 0, sizeof r);
        cr_assert_eq(ut_recv(w, &r, 5000), 0, "missing events: grant %d phase %d release %d", grant,
                     phase, release);
        cr_assert_eq(r.kind, UL_MSG_EVENT);
        cr_assert_eq(r.event.pid, (uint32_t)p);
        if (r.event.type == UL_EV_GRANT)
            grant = true;
        else if (r.event.type == UL_EV_PHASE)
            phase = grant && !strcmp(r.event.phase, "scratch-attach");
        else if (r.event.type == UL_EV_RELEASE)
            release = phase && !strcmp(r.event.reason, "released");
        ul_reply_free(&r);
    }
    s_stop();
}

Test(admin, revoke_hands_on_and_holder_learns)
{
    const char *ep = s_start(NULL);
    /* The holder is driven here, in a child, step by step. */
    ut_chan held, go, result;
    ut_chan_open(&held);
    ut_chan_open(&go);
    ut_chan_open(&result);
    pid_t h = ut_fork();
    if (h == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM, true, "wedged", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        uint64_t lease = r.lease;
        ut_chan_put(&held, 'G');
        /* The unasked revoke notice arrives. */
        if (ut_recv(s, &r, 10000) || r.kind != UL_MSG_REVOKED || r.lease != lease)
            _exit(11);
        ut_chan_get(&go, 30000);
        _exit(ut_release(s, lease) == UVMLEASE_EREVOKED ? 0 : 12);
    }
    cr_assert_eq(ut_chan_get(&held, 30000), 'G');
    ut_chan wrep, wgo;
    ut_chan_open(&wrep);
    ut_chan_open(&wgo);
    child_args wa = {.ep = ep, .label = "next", .rep = &wrep, .go = &wgo};
    pid_t w = s_spawn(&wa);
    cr_assert_eq(ut_chan_get(&wrep, 30000), 'Q');
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_FORCE_RELEASE);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    q.mode = UL_FORCE_REVOKE;
    snprintf(q.reason, sizeof q.reason, "holder wedged in guest-create");
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0, "revoke: %s", ul_status_name((int)r.err));
    cr_assert_eq(ut_chan_get(&wrep, 5000), 'G', "next waiter not granted after revoke");
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(h, 10000), 0, "holder did not learn of the revoke");
    ut_chan_put(&wgo, 'x');
    cr_assert_eq(ut_wait_code(w, 10000), 0);
    s_stop();
}

Test(admin, kill_ends_holder_then_grants)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.kill_grace_ms = 200;
    const char *ep = s_start(&cfg);
    ut_chan hrep, wrep, wgo;
    ut_chan_open(&hrep);
    ut_chan_open(&wrep);
    ut_chan_open(&wgo);
    child_args ha = {.ep = ep, .label = "stuck", .rep = &hrep, .ignore_term = true};
    pid_t h = s_spawn(&ha);
    cr_assert_eq(ut_chan_get(&hrep, 30000), 'G');
    child_args wa = {.ep = ep, .label = "next", .rep = &wrep, .go = &wgo};
    pid_t w = s_spawn(&wa);
    cr_assert_eq(ut_chan_get(&wrep, 30000), 'Q');
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_FORCE_RELEASE);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    q.mode = UL_FORCE_KILL;
    snprintf(q.reason, sizeof q.reason, "stuck");
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0, "kill: %s", ul_status_name((int)r.err));
    cr_assert_eq(ut_chan_get(&wrep, 30000), 'G', "next waiter not granted after kill");
    /* The grant came only after the holder's death: it is a zombie (or
     * reaped) now, never still running. */
    siginfo_t si;
    memset(&si, 0, sizeof si);
    cr_assert_eq(waitid(P_PID, (id_t)h, &si, WEXITED | WNOHANG | WNOWAIT), 0);
    cr_assert_eq(si.si_pid, h, "holder still alive when the next waiter was granted");
    cr_assert_eq(ut_wait_code(h, 5000), 1000 + SIGKILL, "SIGTERM was ignored; SIGKILL ends it");
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0);
    cr_assert(r.uvms[0].has_last_release);
    cr_assert_str_eq(r.uvms[0].last_reason, "killed");
    cr_assert_eq(r.uvms[0].last_pid, (uint32_t)h);
    ul_reply_free(&r);
    ut_chan_put(&wgo, 'x');
    cr_assert_eq(ut_wait_code(w, 10000), 0);
    s_stop();
}

Test(admin, drain_fails_waiters_and_new_acquires)
{
    const char *ep = s_start(NULL);
    ut_chan hrep, hgo;
    ut_chan_open(&hrep);
    ut_chan_open(&hgo);
    child_args ha = {.ep = ep, .label = "finishing", .rep = &hrep, .go = &hgo};
    pid_t h = s_spawn(&ha);
    cr_assert_eq(ut_chan_get(&hrep, 30000), 'G');
    ut_chan wq;
    ut_chan_open(&wq);
    pid_t w = ut_fork();
    if (w == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        int rc = ut_acquire(s, UVM, true, "w", UL_TIMEOUT_FOREVER, &r, s_put_q, &wq, 10000);
        _exit(rc == UVMLEASE_EDRAINING ? 0 : 10);
    }
    cr_assert_eq(ut_chan_get(&wq, 30000), 'Q');
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_DRAIN);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0);
    cr_assert_eq(ut_wait_code(w, 10000), 0, "waiter did not fail with draining");
    /* The holder finishes normally. */
    ut_chan_put(&hgo, 'x');
    cr_assert_eq(ut_wait_code(h, 10000), 0);
    /* Still drained while idle: new acquires fail. */
    pid_t n = ut_fork();
    if (n == 0) {
        void *cs = ut_dealer(ep);
        memset(&r, 0, sizeof r);
        _exit(ut_acquire(cs, UVM, true, "n", 0, &r, NULL, NULL, 5000) == UVMLEASE_EDRAINING ? 0
                                                                                            : 10);
    }
    cr_assert_eq(ut_wait_code(n, 10000), 0);
    ut_req(&q, UL_OP_LIST);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.n_uvms, 1);
    cr_assert(r.uvms[0].draining);
    ul_reply_free(&r);
    ut_req(&q, UL_OP_UNDRAIN);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0);
    ut_req(&q, UL_OP_LIST);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.n_uvms, 0);
    ul_reply_free(&r);
    s_stop();
}

/* ---- authorization ------------------------------------------------------ */

/* In a child: become nobody with these supplementary groups, then drain.
 * Exit 0 on EPERM, 1 on success, other codes on trouble. */
static int s_drain_as_nobody(const char *ep, const gid_t *groups, int ngroups)
{
    struct passwd *pw = getpwnam("nobody");
    if (!pw || setgroups((size_t)ngroups, groups) < 0 || setgid(pw->pw_gid) < 0 ||
        setuid(pw->pw_uid) < 0)
        return 3;
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    memset(&r, 0, sizeof r);
    ut_req(&q, UL_OP_DRAIN);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    if (ut_call(s, &q, &r, 5000))
        return 4;
    if (r.err == UVMLEASE_EPERM)
        return 0;
    return r.err == 0 ? 1 : 5;
}

Test(admin, only_root_or_admin_group)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to nobody");
    /* getgrnam() returns a static buffer: copy each gid at once. */
    struct group *gr = getgrnam("users");
    cr_assert(gr, "group 'users' is expected on Debian");
    gid_t g_users = gr->gr_gid;
    gr = getgrnam("staff");
    cr_assert(gr, "group 'staff' is expected on Debian");
    gid_t g_staff = gr->gr_gid;
    char parent[256], dir[300];
    ut_tmpdir("auth", parent, sizeof parent);
    chmod(parent, 0755);
    snprintf(dir, sizeof dir, "%s/rt", parent);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.socket_group = "users";
    cfg.admin_group = "staff";
    cfg.log_level = UL_LOG_ERROR;
    uvmlease_broker *b = NULL;
    char err[256];
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), 0, "%s", err);
    const char *ep = uvmlease_broker_endpoint(b);
    ut_settle(ep);

    pid_t p = ut_fork();
    if (p == 0)
        _exit(s_drain_as_nobody(ep, &g_users, 1));
    int code = ut_wait_code(p, 10000);
    cr_assert_eq(code, 0, "nobody (socket group only) was not refused: %d", code);
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_LIST);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.n_uvms, 0, "a refused drain changed something");
    ul_reply_free(&r);

    gid_t both[2] = {g_users, g_staff};
    p = ut_fork();
    if (p == 0)
        _exit(s_drain_as_nobody(ep, both, 2));
    cr_assert_eq(ut_wait_code(p, 10000), 1, "admin-group member (supplementary) was refused");
    ut_req(&q, UL_OP_LIST);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.n_uvms, 1);
    cr_assert(r.uvms[0].draining);
    ul_reply_free(&r);
    uvmlease_broker_stop(&b);
    ut_rmrf(parent);
}

/* A process whose waiter timed out while it lives on is idle: the broker
 * keeps at most 256 idle processes tracked (one pidfd each), so many such
 * processes do not pin a pidfd each. */
Test(admin, idle_processes_are_not_pinned_by_timeouts, .timeout = 120)
{
    const char *ep = s_start(NULL);
    ut_chan hrep, hgo;
    ut_chan_open(&hrep);
    ut_chan_open(&hgo);
    child_args ha = {.ep = ep, .label = "holder", .rep = &hrep, .go = &hgo};
    pid_t h = s_spawn(&ha);
    cr_assert_eq(ut_chan_get(&hrep, 30000), 'G');
    enum { N = 280 };
    static pid_t kids[N];
    ut_chan done;
    ut_chan_open(&done);
    for (int i = 0; i < N; i++) {
        kids[i] = ut_fork();
        if (kids[i] == 0) {
            void *s = ut_dealer(ep);
            ul_reply r;
            memset(&r, 0, sizeof r);
            int rc = ut_acquire(s, UVM, true, "w", 1, &r, NULL, NULL, 10000);
            ut_chan_put(&done, rc == UVMLEASE_ETIMEDOUT ? 'T' : 'E');
            pause(); /* alive, holding nothing */
            _exit(0);
        }
        /* One at a time: the broker is idle whenever a child is forked. */
        cr_assert_eq(ut_chan_get(&done, 30000), 'T', "waiter %d", i);
    }
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_STATS);
    s_call_ok(s, &q, &r);
    uint64_t procs = UINT64_MAX;
    for (uint32_t i = 0; i < r.n_counters; i++)
        if (!strcmp(r.counters[i].name, "processes"))
            procs = r.counters[i].value;
    ul_reply_free(&r);
    /* 256 idle + the holder + this process (stats pins nothing). */
    cr_assert_leq(procs, 258, "%llu client processes still tracked", (unsigned long long)procs);
    for (int i = 0; i < N; i++)
        kill(kids[i], SIGKILL);
    for (int i = 0; i < N; i++)
        ut_wait(kids[i], 5000);
    ut_chan_put(&hgo, 'x');
    cr_assert_eq(ut_wait_code(h, 10000), 0);
    s_stop();
}

/* The pid an admin sees for a lease whose holder is gone is its watched
 * child's: force-release --pid accepts it. */
Test(admin, revoke_names_a_lease_by_its_watched_child)
{
    const char *ep = s_start(NULL);
    ut_chan ready;
    ut_chan_open(&ready);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t h = ut_fork();
    if (h == 0) {
        pid_t c = fork();
        if (c == 0) {
            pause(); /* the "command": lives until killed */
            _exit(0);
        }
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM, true, "run", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 10000))
            _exit(10);
        ul_request q;
        ut_req(&q, UL_OP_WATCH_CHILD);
        q.lease = r.lease;
        q.pid = (uint32_t)c;
        if (ut_call(s, &q, &r, 5000) || r.err)
            _exit(11);
        if (write(fds[1], &c, sizeof c) != sizeof c)
            _exit(12);
        _exit(0); /* the holder goes; the child keeps the lease */
    }
    pid_t child = 0;
    cr_assert_eq(read(fds[0], &child, sizeof child), (ssize_t)sizeof child);
    cr_assert_eq(ut_wait_code(h, 10000), 0);
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0, "the lease must outlive its holder while the child lives");
    cr_assert_eq(r.uvms[0].holders[0].pid, (uint32_t)child);
    ul_reply_free(&r);
    ut_req(&q, UL_OP_FORCE_RELEASE);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    q.mode = UL_FORCE_REVOKE;
    q.pid = (uint32_t)child;
    snprintf(q.reason, sizeof q.reason, "command wedged");
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, 0, "revoke --pid <child>: %s", ul_status_name((int)r.err));
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, UVM);
    s_call_ok(s, &q, &r);
    cr_assert_eq(r.err, UVMLEASE_EUNKNOWNUVM, "the lease is still there");
    kill(child, SIGKILL);
    s_stop();
}

Test(admin, watchers_are_bounded_per_process)
{
    const char *ep = s_start(NULL);
    pid_t p = ut_fork();
    if (p == 0) {
        void *s[5];
        for (int i = 0; i < 5; i++) {
            s[i] = ut_dealer(ep);
            ul_request q;
            ul_reply r;
            memset(&r, 0, sizeof r);
            ut_req(&q, UL_OP_WATCH);
            if (ut_call(s[i], &q, &r, 5000))
                _exit(10);
            if (r.err != (i < 4 ? 0u : (uint32_t)UVMLEASE_ERESOURCE))
                _exit(11 + i);
        }
        _exit(0);
    }
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    s_stop();
}

/* One process subscribing four watchers, reporting the status of the
 * first; it holds them until go (or exits at once when hold is false). */
static void s_watcher4(const char *ep, ut_chan *rep, ut_chan *go, bool hold)
{
    void *s[4];
    int err = 0;
    for (int i = 0; i < 4; i++) {
        s[i] = ut_dealer(ep);
        ul_request q;
        ul_reply r;
        memset(&r, 0, sizeof r);
        ut_req(&q, UL_OP_WATCH);
        if (ut_call(s[i], &q, &r, 5000))
            _exit(10);
        if (i == 0)
            err = (int)r.err;
    }
    ut_chan_put(rep, err == 0 ? 'W' : err == UVMLEASE_ERESOURCE ? 'R' : 'E');
    if (hold)
        ut_chan_get(go, 30000);
    _exit(0);
}

/* All 64 watcher slots taken by 16 processes; when one of them exits, its
 * four slots are free again for another process. */
Test(admin, dead_watchers_free_their_slots)
{
    const char *ep = s_start(NULL);
    ut_chan rep, go;
    ut_chan_open(&rep);
    ut_chan_open(&go);
    pid_t w[16];
    for (int i = 0; i < 16; i++) {
        w[i] = ut_fork();
        if (w[i] == 0)
            s_watcher4(ep, &rep, &go, i > 0);
        cr_assert_eq(ut_chan_get(&rep, 10000), 'W', "watcher process %d", i);
    }
    cr_assert_eq(ut_wait_code(w[0], 10000), 0);
    /* w[0] is gone: its four slots, and only those, are free. */
    pid_t n = ut_fork();
    if (n == 0)
        s_watcher4(ep, &rep, &go, true);
    cr_assert_eq(ut_chan_get(&rep, 10000), 'W', "the dead process's slots were not freed");
    pid_t full = ut_fork();
    if (full == 0)
        s_watcher4(ep, &rep, &go, false);
    cr_assert_eq(ut_chan_get(&rep, 10000), 'R', "more than 64 watchers");
    cr_assert_eq(ut_wait_code(full, 10000), 0);
    for (int i = 0; i < 16; i++)
        ut_chan_put(&go, 'x');
    for (int i = 1; i < 16; i++)
        cr_assert_eq(ut_wait_code(w[i], 10000), 0);
    cr_assert_eq(ut_wait_code(n, 10000), 0);
    s_stop();
}
