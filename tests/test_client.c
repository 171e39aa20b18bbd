/*
 * test_client.c — libuvmlease's contract.
 *
 * Suite "client": against an in-process broker. The broker shares this
 * process's pid, so other holders are forked children; they report by exit
 * status and die with the test (ut_fork).
 *
 * Suite "fake": against a scripted broker (a ROUTER in this process that
 * speaks through the codec), for what a real broker cannot be made to do
 * on cue: a grant that arrives after the caller gave up, a restart, an
 * acquire-failed, a revoke, garbage.
 */
// ctest-timeout: 240
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "testutil.h"
#include "ul_client.h"
#include "ul_proto.h"
#include "ul_sys.h"
#include "uvmlease.h"
#include "uvmlease_broker.h"

#define UVM_A "aaaa1111@vm"
#define UVM_B "bbbb2222@vm"

/* ------------------------------------------------------------ fixtures */

static uvmlease_broker *s_broker;
static char s_dir[256];
static const char *s_ep;

static void broker_up(void)
{
    s_broker = ut_broker_start(NULL, s_dir);
    s_ep = uvmlease_broker_endpoint(s_broker);
}

static void broker_down(void)
{
    ut_broker_stop(&s_broker, s_dir);
}

static uvmlease *conn(void)
{
    uvmlease *c = NULL;
    int rc = uvmlease_connect(s_ep, &c);
    cr_assert_eq(rc, UVMLEASE_OK, "connect: %s", uvmlease_strerror(rc));
    return c;
}

typedef struct pred_ctx {
    uvmlease *c;
    unsigned n;
} pred_ctx;

static bool s_queued_is(void *p)
{
    pred_ctx *x = p;
    return ul_client_queued(x->c) == x->n;
}

static bool s_outstanding_is(void *p)
{
    pred_ctx *x = p;
    return ul_client_outstanding(x->c) == x->n;
}

static void wait_queued(uvmlease *c, unsigned n)
{
    pred_ctx x = {c, n};
    cr_assert(ut_wait_until(s_queued_is, &x, 5000), "expected %u queued acquires, have %u", n,
              ul_client_queued(c));
}

/* Every request settled, background work (cancels, late releases) too. */
static void wait_settled(uvmlease *c)
{
    pred_ctx x = {c, 0};
    cr_assert(ut_wait_until(s_outstanding_is, &x, 5000), "requests still outstanding: %u",
              ul_client_outstanding(c));
}

/* ------------------------------------------------------ holder children */

/*
 * Other lease holders are this test binary run afresh ("--ul-helper ...",
 * picked up by a constructor before Criterion's main): fork() then exec()
 * at once, because a child forked from a process with threads (the broker's,
 * ZeroMQ's) may only make async-signal-safe calls — a ZeroMQ context or
 * even malloc() there can deadlock on a lock copied mid-use.
 */

/* "hold EP UVM CONF LABEL PHASE DELAY_MS UP_FD DOWN_FD": acquire (5 s at
 * most), report a phase ("-" for none), write 'H' and the lease id to
 * UP_FD, then read a byte from DOWN_FD: 'R' releases (after DELAY_MS) and
 * exits, anything else exits holding it. Exit codes: 0 done, 10 connect,
 * 11 acquire, 12 phase, 13 pipe, 14 release failed. */
static int s_helper_hold(char **a)
{
    uvmlease *c;
    uvmlease_lease *l;
    int up = atoi(a[6]), down = atoi(a[7]);
    if (uvmlease_connect(a[0], &c) != UVMLEASE_OK)
        return 10;
    if (uvmlease_acquire(c, a[1], atoi(a[2]) ? UVMLEASE_CONFIDENTIAL : 0, a[3], 5000, NULL, NULL,
                         &l) != UVMLEASE_OK)
        return 11;
    if (strcmp(a[4], "-") != 0 && uvmlease_phase(l, a[4]) != UVMLEASE_OK)
        return 12;
    char msg[1 + sizeof(uint64_t)] = {'H'};
    uint64_t id = uvmlease_lease_id(l);
    memcpy(msg + 1, &id, sizeof id);
    if (write(up, msg, sizeof msg) != (ssize_t)sizeof msg)
        return 13;
    char cmd = 0;
    if (read(down, &cmd, 1) != 1 || cmd != 'R')
        _exit(0); /* exits holding it: the broker ends the lease */
    int delay = atoi(a[5]);
    if (delay > 0) {
        struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    int rc = uvmlease_release(l);
    uvmlease_close(c);
    return rc == UVMLEASE_OK ? 0 : 14;
}

/* "try EP UVM CONF TIMEOUT_MS": exit with the acquire's status. */
static int s_helper_try(char **a)
{
    uvmlease *c;
    uvmlease_lease *l;
    int rc = uvmlease_connect(a[0], &c);
    if (!rc)
        rc = uvmlease_acquire(c, a[1], atoi(a[2]) ? UVMLEASE_CONFIDENTIAL : 0, "probe",
                              strtoll(a[3], NULL, 10), NULL, NULL, &l);
    if (!rc)
        rc = uvmlease_release(l);
    return rc;
}

/* glibc passes main's arguments to constructors. */
__attribute__((constructor)) static void s_maybe_helper(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[1], "--ul-helper") == 0) {
        if (strcmp(argv[2], "hold") == 0 && argc == 11)
            _exit(s_helper_hold(argv + 3));
        if (strcmp(argv[2], "try") == 0 && argc == 7)
            _exit(s_helper_try(argv + 3));
        _exit(127);
    }
}

/* Run this binary as a helper, the child's end of the pipes kept open. */
static pid_t spawn_helper(const char *const *args, int keep1, int keep2)
{
    static char self[512];
    if (!self[0]) {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        cr_assert_gt(n, 0);
        self[n] = '\0';
    }
    const char *argv[16] = {self, "--ul-helper"};
    int n = 2;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = ut_fork();
    if (pid == 0) {
        if (keep1 >= 0)
            fcntl(keep1, F_SETFD, 0);
        if (keep2 >= 0)
            fcntl(keep2, F_SETFD, 0);
        execv(self, (char *const *)argv);
        _exit(126);
    }
    return pid;
}

typedef struct holder {
    pid_t pid;
    uint64_t lease;
    ut_chan up;   /* child -> parent: 'H' + lease id, once held */
    ut_chan down; /* parent -> child: 'R' release and exit, 'X' exit holding it */
} holder;

/* A child process that holds uvm until told (see s_helper_hold).
 * release_delay_ms delays its release after 'R', to aim it at a deadline. */
static void hold(holder *h, const char *uvm, bool conf, const char *label, const char *phase,
                 int release_delay_ms)
{
    ut_chan_open(&h->up);
    ut_chan_open(&h->down);
    char delay[16], upfd[16], downfd[16];
    snprintf(delay, sizeof delay, "%d", release_delay_ms);
    snprintf(upfd, sizeof upfd, "%d", h->up.fd[1]);
    snprintf(downfd, sizeof downfd, "%d", h->down.fd[0]);
    const char *args[] = {"hold", s_ep,   uvm, conf ? "1" : "0", label, phase ? phase : "-", delay,
                          upfd,   downfd, NULL};
    h->pid = spawn_helper(args, h->up.fd[1], h->down.fd[0]);
    /* Only the child keeps its ends: if it dies, the parent sees EOF. */
    close(h->up.fd[1]);
    close(h->down.fd[0]);
    h->up.fd[1] = h->down.fd[0] = -1;
    if (ut_chan_get(&h->up, 10000) != 'H')
        cr_assert_fail("the holder child did not get the lease (exit %d)",
                       ut_wait_code(h->pid, 1000));
    cr_assert_eq(read(h->up.fd[0], &h->lease, sizeof h->lease), (ssize_t)sizeof h->lease);
}

static void holder_close(holder *h)
{
    close(h->up.fd[0]);
    close(h->down.fd[1]);
    h->up.fd[0] = h->down.fd[1] = -1;
}

/* Tell the holder to release ('R') or just exit ('X'); its exit code. */
static int unhold(holder *h, char how)
{
    ut_chan_put(&h->down, how);
    int code = ut_wait_code(h->pid, 10000);
    holder_close(h);
    return code;
}

/* In a fresh process: try the lease once. Returns the status (0 = got it). */
static int child_try(const char *uvm, bool conf, int64_t timeout_ms)
{
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)timeout_ms);
    const char *args[] = {"try", s_ep, uvm, conf ? "1" : "0", t, NULL};
    return ut_wait_code(spawn_helper(args, -1, -1), 15000);
}

/* ------------------------------------------------- acquire on a thread */

typedef struct bg_acquire {
    pthread_t t;
    uvmlease *c;
    const char *uvm;
    unsigned flags;
    int64_t timeout_ms;
    uvmlease_cancel_token *tok;
    uvmlease_holder holder;
    uvmlease_lease *lease;
    int rc;
    uint64_t took_ms;
    atomic_bool done;
} bg_acquire;

static void *s_bg_acquire_main(void *p)
{
    bg_acquire *a = p;
    uint64_t t0 = ul_now_ms();
    a->rc = uvmlease_acquire(a->c, a->uvm, a->flags, "bg", a->timeout_ms, a->tok, &a->holder,
                             &a->lease);
    a->took_ms = ul_now_ms() - t0;
    atomic_store(&a->done, true);
    return NULL;
}

static void bg_acquire_start(bg_acquire *a, uvmlease *c, const char *uvm, unsigned flags,
                             int64_t timeout_ms, uvmlease_cancel_token *tok)
{
    memset(a, 0, sizeof *a);
    a->c = c;
    a->uvm = uvm;
    a->flags = flags;
    a->timeout_ms = timeout_ms;
    a->tok = tok;
    cr_assert_eq(pthread_create(&a->t, NULL, s_bg_acquire_main, a), 0);
}

static bool s_bg_done(void *p)
{
    return atomic_load(&((bg_acquire *)p)->done);
}

static int bg_acquire_join(bg_acquire *a, int timeout_ms)
{
    cr_assert(ut_wait_until(s_bg_done, a, timeout_ms), "acquire on a thread did not return");
    pthread_join(a->t, NULL);
    return a->rc;
}

/* ================================================================ client */

TestSuite(client, .init = broker_up, .fini = broker_down, .timeout = 60);

Test(client, connect_where_no_socket_is)
{
    char dir[256], ep[320];
    ut_tmpdir("nosock", dir, sizeof dir);
    snprintf(ep, sizeof ep, "ipc://%s/broker.sock", dir);
    uvmlease *c = (uvmlease *)1;
    uint64_t t0 = ul_now_ms();
    cr_assert_eq(uvmlease_connect(ep, &c), UVMLEASE_ENOBROKER);
    cr_assert_null(c);
    cr_assert_lt(ul_now_ms() - t0, 200, "no socket file must fail at once");
    ut_rmrf(dir);
}

Test(client, connect_to_a_stale_socket_fails_fast)
{
    /* A socket file nobody listens on, as a dead broker leaves behind. */
    char dir[256], path[300], ep[320];
    ut_tmpdir("stale", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/broker.sock", dir);
    snprintf(ep, sizeof ep, "ipc://%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    cr_assert_lt(snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path), (int)sizeof sun.sun_path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    close(fd);
    uvmlease *c = NULL;
    uint64_t t0 = ul_now_ms();
    cr_assert_eq(uvmlease_connect(ep, &c), UVMLEASE_ENOBROKER);
    cr_assert_lt(ul_now_ms() - t0, 200);
    ut_rmrf(dir);
}

Test(client, bad_endpoints)
{
    uvmlease *c = NULL;
    cr_assert_eq(uvmlease_connect("tcp://127.0.0.1:5555", &c), UVMLEASE_EBADENDPOINT);
    cr_assert_eq(uvmlease_connect("ipc://", &c), UVMLEASE_EBADENDPOINT);
    char longep[400] = "ipc:///tmp/";
    memset(longep + strlen(longep), 'x', 200);
    cr_assert_eq(uvmlease_connect(longep, &c), UVMLEASE_EBADENDPOINT);
    cr_assert_eq(uvmlease_connect(s_ep, NULL), UVMLEASE_EINVAL);
}

Test(client, endpoint_from_the_environment)
{
    setenv("UVMLEASE_ENDPOINT", s_ep, 1);
    uvmlease *c = NULL;
    cr_assert_eq(uvmlease_connect(NULL, &c), UVMLEASE_OK);
    uvmlease_ping_info info;
    cr_assert_eq(uvmlease_ping(c, &info), UVMLEASE_OK);
    cr_assert_eq(info.pid, getpid(), "the in-process broker is this process");
    cr_assert_eq(info.instance, uvmlease_broker_instance(s_broker));
    cr_assert_neq(info.version[0], '\0');
    uvmlease_close(c);
    unsetenv("UVMLEASE_ENDPOINT");
}

Test(client, invalid_arguments_are_refused_locally)
{
    uvmlease *c = conn();
    uvmlease_lease *l = (uvmlease_lease *)1;
    char big[300];
    memset(big, 'u', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cr_assert_eq(uvmlease_acquire(c, "has space", 0, "", 0, NULL, NULL, &l), UVMLEASE_EBADUVM);
    cr_assert_null(l);
    cr_assert_eq(uvmlease_acquire(c, "", 0, "", 0, NULL, NULL, &l), UVMLEASE_EBADUVM);
    cr_assert_eq(uvmlease_acquire(c, big, 0, "", 0, NULL, NULL, &l), UVMLEASE_EBADUVM);
    cr_assert_eq(uvmlease_acquire(c, "ctl\x01@vm", 0, "", 0, NULL, NULL, &l), UVMLEASE_EBADUVM);
    cr_assert_eq(uvmlease_acquire(c, UVM_A, 0, "line\nbreak", 0, NULL, NULL, &l),
                 UVMLEASE_EBADTEXT);
    cr_assert_eq(uvmlease_acquire(c, UVM_A, 0, big, 0, NULL, NULL, &l), UVMLEASE_EBADTEXT);
    cr_assert_eq(uvmlease_acquire(c, UVM_A, 0x80, "", 0, NULL, NULL, &l), UVMLEASE_EINVAL);
    cr_assert_eq(uvmlease_acquire(c, UVM_A, 0, "", -2, NULL, NULL, &l), UVMLEASE_EINVAL);
    cr_assert_eq(uvmlease_acquire(c, UVM_A, 0, "", 0, NULL, NULL, NULL), UVMLEASE_EINVAL);
    cr_assert_eq(uvmlease_acquire(NULL, UVM_A, 0, "", 0, NULL, NULL, &l), UVMLEASE_EINVAL);

    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, NULL, 0, NULL, NULL, &l),
                 UVMLEASE_OK);
    cr_assert_eq(uvmlease_phase(l, "bad\tphase"), UVMLEASE_EBADTEXT);
    cr_assert_eq(uvmlease_phase(l, big), UVMLEASE_EBADTEXT);
    cr_assert_eq(uvmlease_phase(NULL, "x"), UVMLEASE_EINVAL);
    cr_assert_eq(uvmlease_watch_child(l, 0), UVMLEASE_EINVAL);
    cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);
    cr_assert_eq(uvmlease_release(NULL), UVMLEASE_EINVAL);
    cr_assert_str_eq(uvmlease_status_name(UVMLEASE_EBUSY), "busy");
    cr_assert_str_eq(uvmlease_strerror(12345), "unknown");
    uvmlease_close(c);
}

Test(client, acquire_phase_release_and_fences_go_up)
{
    uvmlease *c = conn();
    uvmlease_lease *l;
    cr_assert_eq(
        uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "ctr", UVMLEASE_TRY, NULL, NULL, &l),
        UVMLEASE_OK);
    uint64_t f1 = uvmlease_lease_fence(l);
    cr_assert_gt(f1, 0);
    cr_assert_gt(uvmlease_lease_id(l), 0);
    const char *phases[] = {"cim-mount", "scratch-attach", "combine-layers", "guest-create"};
    for (size_t i = 0; i < 4; i++)
        cr_assert_eq(uvmlease_phase(l, phases[i]), UVMLEASE_OK);
    cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);
    cr_assert_eq(
        uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "ctr", UVMLEASE_TRY, NULL, NULL, &l),
        UVMLEASE_OK);
    cr_assert_gt(uvmlease_lease_fence(l), f1);
    cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);
    uvmlease_close(c);
}

Test(client, try_on_a_held_lease_names_the_holder)
{
    holder h;
    hold(&h, UVM_A, true, "container-7", "scratch-attach", 0);
    uvmlease *c = conn();
    uvmlease_holder who;
    uvmlease_lease *l;
    uint64_t t0 = ul_now_ms();
    cr_assert_eq(
        uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "me", UVMLEASE_TRY, NULL, &who, &l),
        UVMLEASE_EBUSY);
    cr_assert_lt(ul_now_ms() - t0, 500, "a try must not wait");
    cr_assert_null(l);
    cr_assert_eq(who.pid, h.pid);
    cr_assert_str_eq(who.label, "container-7");
    cr_assert_str_eq(who.phase, "scratch-attach");
    cr_assert_neq(who.comm[0], '\0');
    cr_assert_eq(unhold(&h, 'R'), 0);
    uvmlease_close(c);
}

Test(client, timeout_names_the_holder)
{
    holder h;
    hold(&h, UVM_A, true, "slow", "guest-create", 0);
    uvmlease *c = conn();
    uvmlease_holder who;
    uvmlease_lease *l;
    uint64_t t0 = ul_now_ms();
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "me", 200, NULL, &who, &l),
                 UVMLEASE_ETIMEDOUT);
    uint64_t took = ul_now_ms() - t0;
    cr_assert_geq(took, 190, "returned after %llu ms", (unsigned long long)took);
    cr_assert_lt(took, 200 + UVMLEASE_ACQUIRE_GRACE_MS, "the broker's deadline must decide");
    cr_assert_eq(who.pid, h.pid);
    cr_assert_str_eq(who.label, "slow");
    cr_assert_str_eq(who.phase, "guest-create");
    wait_settled(c);
    cr_assert_eq(unhold(&h, 'R'), 0);
    uvmlease_close(c);
}

Test(client, class_conflict_and_shared_standard_leases)
{
    uvmlease *c = conn();
    uvmlease_lease *l1, *l2, *l3;
    cr_assert_eq(uvmlease_acquire(c, UVM_B, 0, "s1", UVMLEASE_TRY, NULL, NULL, &l1), UVMLEASE_OK);
    cr_assert_eq(uvmlease_acquire(c, UVM_B, 0, "s2", UVMLEASE_TRY, NULL, NULL, &l2), UVMLEASE_OK,
                 "a standard UVM is shared");
    cr_assert_eq(
        uvmlease_acquire(c, UVM_B, UVMLEASE_CONFIDENTIAL, "c", UVMLEASE_TRY, NULL, NULL, &l3),
        UVMLEASE_ECLASS);
    cr_assert_eq(uvmlease_release(l1), UVMLEASE_OK);
    cr_assert_eq(uvmlease_release(l2), UVMLEASE_OK);
    uvmlease_close(c);
}

Test(client, release_twice_and_foreign_release_change_nothing)
{
    uvmlease *c = conn();
    uvmlease_lease *l;
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "", 0, NULL, NULL, &l),
                 UVMLEASE_OK);
    uint64_t id = uvmlease_lease_id(l);
    cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);

    /* The handle is gone after a release, so a second release is a raw
     * request with the same lease id, as a buggy client would send. */
    ul_request q;
    ul_reply *rep;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_RELEASE;
    q.lease = id;
    cr_assert_eq(ul_client_call(c, &q, 5000, NULL, &rep), 0);
    cr_assert_eq(rep->err, UVMLEASE_ENOLEASE, "second release: %s", ul_status_name(rep->err));
    ul_client_reply_free(rep);

    /* Another process's lease: refused, and it stays held. */
    holder h;
    hold(&h, UVM_B, true, "theirs", NULL, 0);
    memset(&q, 0, sizeof q);
    q.op = UL_OP_RELEASE;
    q.lease = h.lease;
    cr_assert_eq(ul_client_call(c, &q, 5000, NULL, &rep), 0);
    cr_assert_eq(rep->err, UVMLEASE_ENOTOWNER, "foreign release: %s", ul_status_name(rep->err));
    ul_client_reply_free(rep);
    memset(&q, 0, sizeof q);
    q.op = UL_OP_PHASE;
    q.lease = h.lease;
    snprintf(q.phase, sizeof q.phase, "hijack");
    cr_assert_eq(ul_client_call(c, &q, 5000, NULL, &rep), 0);
    cr_assert_eq(rep->err, UVMLEASE_ENOTOWNER);
    ul_client_reply_free(rep);
    uvmlease_holder who;
    cr_assert_eq(uvmlease_acquire(c, UVM_B, UVMLEASE_CONFIDENTIAL, "", 0, NULL, &who, &l),
                 UVMLEASE_EBUSY);
    cr_assert_eq(who.pid, h.pid);
    cr_assert_str_eq(who.phase, "", "the foreign phase report changed nothing");
    cr_assert_eq(unhold(&h, 'R'), 0);
    uvmlease_close(c);
}

Test(client, cancel_ends_a_blocked_acquire_and_leaves_no_waiter)
{
    holder h;
    hold(&h, UVM_A, true, "holder", NULL, 0);
    uvmlease *c = conn();
    uvmlease_cancel_token *tok;
    cr_assert_eq(uvmlease_cancel_token_new(&tok), UVMLEASE_OK);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, tok);
    wait_queued(c, 1);
    uint64_t t0 = ul_now_ms();
    uvmlease_cancel(tok);
    cr_assert_eq(bg_acquire_join(&a, 5000), UVMLEASE_ECANCELLED);
    cr_assert_lt(ul_now_ms() - t0, 500, "cancel must end the wait at once");
    cr_assert_null(a.lease);
    wait_settled(c); /* the broker has removed the waiter */

    cr_assert_eq(unhold(&h, 'R'), 0);
    cr_assert_eq(child_try(UVM_A, true, UVMLEASE_TRY), 0,
                 "the cancelled waiter must not have been granted");

    /* Cancelling is permanent: a later acquire with the token fails at once. */
    uvmlease_lease *l;
    cr_assert_eq(
        uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "", UVMLEASE_FOREVER, tok, NULL, &l),
        UVMLEASE_ECANCELLED);
    uvmlease_cancel_token_free(tok);
    uvmlease_close(c);
}

Test(client, a_grant_racing_a_cancel_is_never_kept, .timeout = 120)
{
    uvmlease *c = conn();
    int granted = 0, cancelled = 0;
    for (int i = 0; i < 30; i++) {
        holder h;
        hold(&h, UVM_A, true, "holder", NULL, 0);
        uvmlease_cancel_token *tok;
        cr_assert_eq(uvmlease_cancel_token_new(&tok), UVMLEASE_OK);
        bg_acquire a;
        bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, tok);
        wait_queued(c, 1);
        /* Release and cancel land together; the delay (0-225 us, about
         * the child's release latency) varies who wins. */
        ut_chan_put(&h.down, 'R');
        struct timespec d = {0, (i % 10) * 25000L};
        if (d.tv_nsec)
            nanosleep(&d, NULL);
        uvmlease_cancel(tok);
        int rc = bg_acquire_join(&a, 5000);
        cr_assert(rc == UVMLEASE_OK || rc == UVMLEASE_ECANCELLED, "rc %d", rc);
        if (rc == UVMLEASE_OK) {
            granted++;
            cr_assert_eq(uvmlease_release(a.lease), UVMLEASE_OK);
        } else {
            cancelled++;
            cr_assert_null(a.lease);
        }
        cr_assert_eq(ut_wait_code(h.pid, 10000), 0);
        wait_settled(c);
        cr_assert_eq(child_try(UVM_A, true, UVMLEASE_TRY), 0,
                     "iteration %d: the lease was left held (rc %d)", i, rc);
        uvmlease_cancel_token_free(tok);
        holder_close(&h);
    }
    cr_log_info("cancel race: %d granted first, %d cancelled first", granted, cancelled);
    uvmlease_close(c);
}

Test(client, a_grant_racing_a_timeout_is_never_kept, .timeout = 120)
{
    uvmlease *c = conn();
    int granted = 0, timed_out = 0;
    for (int i = 0; i < 20; i++) {
        /* The holder releases around the waiter's deadline. */
        const int timeout = 60;
        holder h;
        hold(&h, UVM_A, true, "holder", NULL, timeout - 6 + (i % 12));
        ut_chan_put(&h.down, 'R');
        uvmlease_lease *l = NULL;
        int rc =
            uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "racer", timeout, NULL, NULL, &l);
        cr_assert(rc == UVMLEASE_OK || rc == UVMLEASE_ETIMEDOUT, "rc %d", rc);
        if (rc == UVMLEASE_OK) {
            granted++;
            cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);
        } else {
            timed_out++;
            cr_assert_null(l);
        }
        cr_assert_eq(ut_wait_code(h.pid, 10000), 0);
        wait_settled(c);
        cr_assert_eq(child_try(UVM_A, true, UVMLEASE_TRY), 0,
                     "iteration %d: the lease was left held (rc %d)", i, rc);
        holder_close(&h);
    }
    cr_log_info("timeout race: %d granted, %d timed out", granted, timed_out);
    uvmlease_close(c);
}

Test(client, release_and_phase_are_not_delayed_by_a_blocked_acquire)
{
    uvmlease *c = conn();
    uvmlease_lease *mine;
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "mine", 0, NULL, NULL, &mine),
                 UVMLEASE_OK);
    holder h;
    hold(&h, UVM_B, true, "theirs", NULL, 0);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_B, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    wait_queued(c, 1);

    uint64_t t0 = ul_now_ms();
    cr_assert_eq(uvmlease_phase(mine, "guest-create"), UVMLEASE_OK);
    cr_assert_eq(uvmlease_release(mine), UVMLEASE_OK);
    cr_assert_lt(ul_now_ms() - t0, 500, "phase + release took %llu ms",
                 (unsigned long long)(ul_now_ms() - t0));
    cr_assert_not(atomic_load(&a.done), "the other thread is still waiting");

    cr_assert_eq(unhold(&h, 'R'), 0);
    cr_assert_eq(bg_acquire_join(&a, 5000), UVMLEASE_OK);
    cr_assert_eq(uvmlease_release(a.lease), UVMLEASE_OK);
    uvmlease_close(c);
}

/* The fast path: with nothing else in flight the calling thread does its
 * own round trip; the I/O thread never takes the socket. */
Test(client, calls_on_an_idle_handle_leave_the_io_thread_parked)
{
    uvmlease *c = conn();
    unsigned long turns = ul_client_io_turns(c);
    for (int i = 0; i < 20; i++) {
        uvmlease_lease *l;
        cr_assert_eq(
            uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "", UVMLEASE_TRY, NULL, NULL, &l),
            UVMLEASE_OK);
        cr_assert_eq(uvmlease_phase(l, "cim-mount"), UVMLEASE_OK);
        cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);
        cr_assert_eq(uvmlease_ping(c, NULL), UVMLEASE_OK);
    }
    cr_assert_eq(ul_client_io_turns(c), turns, "the I/O thread took %lu turns",
                 ul_client_io_turns(c) - turns);
    cr_assert_eq(ul_client_outstanding(c), 0);
    uvmlease_close(c);
}

Test(client, two_threads_queue_behind_each_other)
{
    uvmlease *c = conn();
    uvmlease_lease *first;
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "t1", 0, NULL, NULL, &first),
                 UVMLEASE_OK);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    wait_queued(c, 1);
    cr_assert_not(atomic_load(&a.done), "no re-entrance: the second acquire waits");
    uint64_t f1 = uvmlease_lease_fence(first);
    cr_assert_eq(uvmlease_release(first), UVMLEASE_OK);
    cr_assert_eq(bg_acquire_join(&a, 5000), UVMLEASE_OK);
    cr_assert_gt(uvmlease_lease_fence(a.lease), f1);
    cr_assert_eq(uvmlease_release(a.lease), UVMLEASE_OK);
    uvmlease_close(c);
}

Test(client, the_holder_dying_hands_the_lease_on)
{
    holder h;
    hold(&h, UVM_A, true, "doomed", NULL, 0);
    uvmlease *c = conn();
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    wait_queued(c, 1);
    uint64_t t0 = ul_now_ms();
    kill(h.pid, SIGKILL);
    cr_assert_eq(bg_acquire_join(&a, 5000), UVMLEASE_OK);
    cr_log_info("handed on %llu ms after SIGKILL", (unsigned long long)(ul_now_ms() - t0));
    cr_assert_eq(ut_wait_code(h.pid, 5000), 1000 + SIGKILL);
    cr_assert_eq(uvmlease_release(a.lease), UVMLEASE_OK);
    uvmlease_close(c);
}

Test(client, close_wakes_waiters_and_releases_leases)
{
    uvmlease *c = conn();
    uvmlease_lease *mine;
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "", 0, NULL, NULL, &mine),
                 UVMLEASE_OK);
    holder h;
    hold(&h, UVM_B, true, "theirs", NULL, 0);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_B, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    wait_queued(c, 1);

    uvmlease_close(c);
    cr_assert_eq(bg_acquire_join(&a, 5000), UVMLEASE_ECLOSED);
    cr_assert_eq(child_try(UVM_A, true, UVMLEASE_TRY), 0, "close released the lease");
    cr_assert_eq(uvmlease_lease_fence(mine) > 0, true, "the handle is still readable");
    cr_assert_eq(uvmlease_release(mine), UVMLEASE_ECLOSED);
    cr_assert_eq(unhold(&h, 'R'), 0);
    cr_assert_eq(child_try(UVM_B, true, UVMLEASE_TRY), 0, "the closed waiter left the queue");
}

Test(client, handles_do_not_cross_fork)
{
    uvmlease *c = conn();
    uvmlease_lease *l;
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "", 0, NULL, NULL, &l),
                 UVMLEASE_OK);
    pid_t pid = ut_fork();
    if (pid == 0) {
        uvmlease_lease *l2;
        int code = 0;
        if (uvmlease_ping(c, NULL) != UVMLEASE_ECLOSED)
            code = 1;
        else if (uvmlease_acquire(c, UVM_B, 0, "", 0, NULL, NULL, &l2) != UVMLEASE_ECLOSED)
            code = 2;
        else if (uvmlease_phase(l, "x") != UVMLEASE_ECLOSED)
            code = 3;
        else if (uvmlease_release(l) != UVMLEASE_ECLOSED)
            code = 4;
        uvmlease_close(c);
        _exit(code);
    }
    cr_assert_eq(ut_wait_code(pid, 5000), 0);
    cr_assert_eq(uvmlease_phase(l, "still-mine"), UVMLEASE_OK);
    cr_assert_eq(uvmlease_release(l), UVMLEASE_OK);
    uvmlease_close(c);
}

/* ---------------------------------------------------- release_nowait */

/* Failed nowait releases as the handler saw them. */
typedef struct rel_errs {
    pthread_mutex_t mu;
    int n;
    uint64_t lease;
    int status;
    pthread_t thread;
} rel_errs;

static void s_rel_err(void *ctx, uint64_t lease, int status)
{
    rel_errs *e = ctx;
    pthread_mutex_lock(&e->mu);
    e->n++;
    e->lease = lease;
    e->status = status;
    e->thread = pthread_self();
    pthread_mutex_unlock(&e->mu);
}

static int rel_errs_n(rel_errs *e)
{
    pthread_mutex_lock(&e->mu);
    int n = e->n;
    pthread_mutex_unlock(&e->mu);
    return n;
}

static bool s_rel_err_seen(void *p)
{
    return rel_errs_n(p) > 0;
}

static bool s_rel_err_two(void *p)
{
    return rel_errs_n(p) > 1;
}

typedef struct nowait_cycles {
    pthread_t t;
    uvmlease *c;
    const char *uvm;
    int n, done, rc;
} nowait_cycles;

/* Acquire (try) and release_nowait, n times: every acquire must find the
 * UVM free, i.e. no acquire may overtake the release before it. */
static void *s_nowait_cycles(void *p)
{
    nowait_cycles *x = p;
    for (x->done = 0; x->done < x->n; x->done++) {
        uvmlease_lease *l;
        x->rc = uvmlease_acquire(x->c, x->uvm, UVMLEASE_CONFIDENTIAL, "cycle", UVMLEASE_TRY, NULL,
                                 NULL, &l);
        if (!x->rc)
            x->rc = uvmlease_release_nowait(l);
        if (x->rc)
            break;
    }
    return NULL;
}

Test(client, an_acquire_after_release_nowait_finds_the_lease_free)
{
    uvmlease *c = conn();
    rel_errs e = {.n = 0};
    pthread_mutex_init(&e.mu, NULL);
    cr_assert_eq(uvmlease_on_release_error(c, s_rel_err, &e), UVMLEASE_OK);
    nowait_cycles one = {.c = c, .uvm = UVM_A, .n = 300};
    s_nowait_cycles(&one);
    cr_assert_eq(one.rc, UVMLEASE_OK, "cycle %d: %s", one.done, uvmlease_strerror(one.rc));

    /* Two threads on one handle: releases queue behind the other
     * thread's requests and must still go out before their own next
     * acquire. */
    nowait_cycles two[2] = {{.c = c, .uvm = UVM_A, .n = 200}, {.c = c, .uvm = UVM_B, .n = 200}};
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&two[i].t, NULL, s_nowait_cycles, &two[i]), 0);
    for (int i = 0; i < 2; i++) {
        pthread_join(two[i].t, NULL);
        cr_assert_eq(two[i].rc, UVMLEASE_OK, "thread %d, cycle %d: %s", i, two[i].done,
                     uvmlease_strerror(two[i].rc));
    }
    wait_settled(c); /* every release acknowledged */
    cr_assert_eq(rel_errs_n(&e), 0, "a release failed: %s", uvmlease_strerror(e.status));
    cr_assert_eq(child_try(UVM_A, true, UVMLEASE_TRY), 0, "the last release was done");
    cr_assert_eq(child_try(UVM_B, true, UVMLEASE_TRY), 0, "the last release was done");
    uvmlease_close(c);
}

Test(client, release_nowait_of_a_lease_close_released_says_closed)
{
    uvmlease *c = conn();
    uvmlease_lease *l;
    cr_assert_eq(uvmlease_acquire(c, UVM_A, UVMLEASE_CONFIDENTIAL, "", 0, NULL, NULL, &l),
                 UVMLEASE_OK);
    uvmlease_close(c);
    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_ECLOSED);
    cr_assert_eq(child_try(UVM_A, true, UVMLEASE_TRY), 0, "close released it");
    cr_assert_eq(uvmlease_release_nowait(NULL), UVMLEASE_EINVAL);
    cr_assert_eq(uvmlease_on_release_error(NULL, NULL, NULL), UVMLEASE_EINVAL);
}

static void s_quiet(void *ctx, ul_log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    (void)line;
}

Test(client, a_waiter_survives_a_real_broker_restart)
{
    holder h;
    hold(&h, UVM_A, true, "holder", NULL, 0);
    uvmlease *c = conn();
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    wait_queued(c, 1);
    uint64_t old_bi = uvmlease_broker_instance(s_broker);

    /* Same runtime directory, same endpoint, new instance. This broker
     * version does not restore leases yet, so the re-sent acquire is
     * granted by the successor at once. */
    uvmlease_broker_stop(&s_broker);
    /* The child shares the broker's lock file description (fork), so it
     * must be gone before a successor can take the lock. */
    cr_assert_eq(unhold(&h, 'X'), 0);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = s_dir;
    if (!getenv("UL_TEST_VERBOSE"))
        cfg.log_sink = s_quiet;
    char err[256] = "";
    cr_assert_eq(uvmlease_broker_start(&cfg, &s_broker, NULL, err, sizeof err), 0, "%s", err);
    s_ep = uvmlease_broker_endpoint(s_broker);
    cr_assert_neq(uvmlease_broker_instance(s_broker), old_bi);

    cr_assert_eq(bg_acquire_join(&a, 3 * UL_CLIENT_PING_MS + 2000), UVMLEASE_OK,
                 "the waiter must be served by the new instance: %s", uvmlease_strerror(a.rc));
    uvmlease_ping_info info;
    cr_assert_eq(uvmlease_ping(c, &info), UVMLEASE_OK);
    cr_assert_eq(info.instance, uvmlease_broker_instance(s_broker));
    cr_assert_eq(uvmlease_release(a.lease), UVMLEASE_OK);
    uvmlease_close(c);
}

static void *s_rids(void *p)
{
    uint64_t *out = p;
    for (int i = 0; i < 10000; i++)
        out[i] = ul_client_rid();
    return NULL;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

Test(client, rids_are_unique_across_threads)
{
    static uint64_t r[4][10000];
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, s_rids, r[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    qsort(r, 40000, sizeof(uint64_t), s_cmp_u64);
    uint64_t *all = &r[0][0];
    for (int i = 1; i < 40000; i++)
        cr_assert_neq(all[i], all[i - 1]);
    cr_assert_neq(all[0], 0);
}

/* ========================================================= fake broker */

typedef struct fake {
    void *ctx, *sock;
    char dir[256], ep[320];
    unsigned char id[256];
    size_t id_len;
    uint64_t bi;
} fake;

static fake s_fake;

static void fake_up(void)
{
    fake *f = &s_fake;
    ut_tmpdir("fake", f->dir, sizeof f->dir);
    cr_assert_lt(snprintf(f->ep, sizeof f->ep, "ipc://%s/broker.sock", f->dir), (int)sizeof f->ep);
    f->ctx = zmq_ctx_new();
    f->sock = zmq_socket(f->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof linger);
    cr_assert_eq(zmq_bind(f->sock, f->ep), 0, "bind: %s", zmq_strerror(zmq_errno()));
    f->bi = 0x1111;
}

static void fake_down(void)
{
    zmq_close(s_fake.sock);
    zmq_ctx_term(s_fake.ctx);
    ut_rmrf(s_fake.dir);
}

/* Next request, pings answered and skipped. 0, or -1 on timeout. */
static void fake_send(fake *f, ul_reply *r);

static int fake_recv(fake *f, ul_request *q, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = ul_now_ms();
        if (now >= deadline)
            return -1;
        zmq_pollitem_t it = {.socket = f->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, (long)(deadline - now)) <= 0)
            continue;
        int n = zmq_recv(f->sock, f->id, sizeof f->id, 0);
        cr_assert_gt(n, 0);
        f->id_len = (size_t)n;
        char body[UL_MAX_REQUEST];
        n = zmq_recv(f->sock, body, sizeof body, 0);
        cr_assert_geq(n, 0);
        cr_assert_eq(ul_request_decode(body, (size_t)n, q), 0, "the client sent a bad request");
        if (q->op != UL_OP_PING)
            return 0;
        ul_reply r;
        memset(&r, 0, sizeof r);
        r.kind = UL_MSG_REPLY;
        r.rid = q->rid;
        r.op = UL_OP_PING;
        r.broker_pid = (uint32_t)getpid();
        snprintf(r.server, sizeof r.server, "fake");
        fake_send(f, &r);
    }
}

static void fake_send(fake *f, ul_reply *r)
{
    r->version = UL_PROTO_VERSION;
    r->instance = f->bi;
    ul_buf b = {0};
    cr_assert_eq(ul_reply_encode(r, &b), 0, "the fake encoded a bad reply");
    zmq_send(f->sock, f->id, f->id_len, ZMQ_SNDMORE);
    zmq_send(f->sock, b.data, b.len, 0);
    ul_buf_free(&b);
}

/* An answer to q: err, and for hello the broker's facts. */
static void fake_answer(fake *f, const ul_request *q, int err)
{
    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = UL_MSG_REPLY;
    r.rid = q->rid;
    r.op = q->op;
    r.err = (uint32_t)err;
    if (q->op == UL_OP_HELLO || q->op == UL_OP_PING) {
        r.broker_pid = (uint32_t)getpid();
        snprintf(r.server, sizeof r.server, "fake");
    }
    fake_send(f, &r);
}

static void fake_queued(fake *f, const ul_request *q)
{
    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = UL_MSG_REPLY;
    r.rid = q->rid;
    r.op = UL_OP_ACQUIRE;
    r.queued = true;
    r.position = 1;
    fake_send(f, &r);
}

/* A grant: as the acquire's reply, or (kind GRANT) after "queued". */
static void fake_grant(fake *f, ul_msg_kind kind, uint64_t rid, uint64_t lease, uint64_t fence)
{
    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.rid = rid;
    r.op = UL_OP_ACQUIRE;
    r.lease = lease;
    r.fence = fence;
    snprintf(r.uvm, sizeof r.uvm, UVM_A);
    fake_send(f, &r);
}

static void fake_expect(fake *f, ul_request *q, ul_op op, int timeout_ms)
{
    cr_assert_eq(fake_recv(f, q, timeout_ms), 0, "expected %s, got nothing", ul_op_name(op));
    cr_assert_eq(q->op, op, "expected %s, got %s", ul_op_name(op), ul_op_name(q->op));
}

typedef struct bg_connect {
    pthread_t t;
    const char *ep;
    uvmlease *c;
    int rc;
} bg_connect;

static void *s_bg_connect_main(void *p)
{
    bg_connect *b = p;
    b->rc = uvmlease_connect(b->ep, &b->c);
    return NULL;
}

/* Connect to the fake, which answers the hello. */
static uvmlease *fake_conn(fake *f)
{
    bg_connect b = {.ep = f->ep};
    pthread_create(&b.t, NULL, s_bg_connect_main, &b);
    ul_request q;
    fake_expect(f, &q, UL_OP_HELLO, 5000);
    fake_answer(f, &q, 0);
    pthread_join(b.t, NULL);
    cr_assert_eq(b.rc, UVMLEASE_OK, "connect: %s", uvmlease_strerror(b.rc));
    return b.c;
}

typedef struct bg_lease_op {
    pthread_t t;
    uvmlease_lease *l;
    bool release;
    int rc;
} bg_lease_op;

static void *s_bg_lease_op(void *p)
{
    bg_lease_op *o = p;
    o->rc = o->release ? uvmlease_release(o->l) : uvmlease_phase(o->l, "after-revoke");
    return NULL;
}

/* Release a lease held through the fake, which answers. */
static void fake_release(fake *f, uvmlease_lease *l, uint64_t id)
{
    bg_lease_op o = {.l = l, .release = true};
    pthread_create(&o.t, NULL, s_bg_lease_op, &o);
    ul_request q;
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    cr_assert_eq(q.lease, id);
    fake_answer(f, &q, 0);
    pthread_join(o.t, NULL);
    cr_assert_eq(o.rc, UVMLEASE_OK);
}

TestSuite(fake, .init = fake_up, .fini = fake_down, .timeout = 60);

Test(fake, a_silent_broker_fails_connect_within_the_bound)
{
    uvmlease *c = NULL;
    uint64_t t0 = ul_now_ms();
    cr_assert_eq(uvmlease_connect(s_fake.ep, &c), UVMLEASE_ENOBROKER);
    uint64_t took = ul_now_ms() - t0;
    cr_assert_geq(took, UVMLEASE_CONNECT_TIMEOUT_MS - 50);
    cr_assert_lt(took, UVMLEASE_CONNECT_TIMEOUT_MS + 1000, "took %llu ms",
                 (unsigned long long)took);
    cr_assert_null(c);
}

Test(fake, a_grant_after_the_timeout_is_released)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, 50, NULL);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    cr_assert_eq(q.timeout_ms, 50, "the broker is told the timeout");
    uint64_t acq = q.rid;
    fake_queued(f, &q);
    /* The broker stays silent past the deadline: the client gives up on
     * its own and cancels. */
    fake_expect(f, &q, UL_OP_CANCEL, 5000);
    cr_assert_eq(q.target_rid, acq);
    cr_assert_eq(bg_acquire_join(&a, 1000), UVMLEASE_ETIMEDOUT);
    cr_assert_geq(a.took_ms, 50 + UVMLEASE_ACQUIRE_GRACE_MS - 20);
    /* The grant crossed the cancel. */
    fake_grant(f, UL_MSG_GRANT, acq, 77, 9);
    fake_answer(f, &q, UVMLEASE_ENOTWAITING);
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    cr_assert_eq(q.lease, 77, "the late grant is released");
    fake_answer(f, &q, 0);
    wait_settled(c);
    cr_assert_eq(fake_recv(f, &q, 300), -1, "nothing else: got %s", ul_op_name(q.op));
    uvmlease_close(c);
}

Test(fake, a_grant_after_a_cancel_is_released)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    uvmlease_cancel_token *tok;
    uvmlease_cancel_token_new(&tok);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, tok);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    uint64_t acq = q.rid;
    fake_queued(f, &q);
    wait_queued(c, 1);
    uvmlease_cancel(tok);
    cr_assert_eq(bg_acquire_join(&a, 1000), UVMLEASE_ECANCELLED);
    fake_expect(f, &q, UL_OP_CANCEL, 5000);
    cr_assert_eq(q.target_rid, acq);
    fake_grant(f, UL_MSG_GRANT, acq, 78, 10);
    fake_answer(f, &q, UVMLEASE_ENOTWAITING);
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    cr_assert_eq(q.lease, 78);
    fake_answer(f, &q, 0);
    wait_settled(c);
    uvmlease_cancel_token_free(tok);
    uvmlease_close(c);
}

Test(fake, a_restarted_broker_gets_the_waiting_acquire_again)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    ul_request first = q;
    fake_queued(f, &q);
    /* A new instance answers the next ping (sent while anything waits). */
    f->bi = 0x2222;
    fake_expect(f, &q, UL_OP_ACQUIRE, 3 * UL_CLIENT_PING_MS + 1000);
    cr_assert_eq(q.rid, first.rid, "re-sent with the same rid");
    cr_assert_str_eq(q.uvm, first.uvm);
    cr_assert_eq(q.confidential, first.confidential);
    fake_grant(f, UL_MSG_REPLY, q.rid, 5, 11);
    cr_assert_eq(bg_acquire_join(&a, 2000), UVMLEASE_OK);
    cr_assert_eq(uvmlease_lease_fence(a.lease), 11);

    /* A release lost in another restart is sent again; "no-such-lease"
     * then means it was done before the crash. */
    bg_lease_op o = {.l = a.lease, .release = true};
    pthread_create(&o.t, NULL, s_bg_lease_op, &o);
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    f->bi = 0x4444;
    fake_expect(f, &q, UL_OP_RELEASE, 3 * UL_CLIENT_PING_MS + 1000);
    cr_assert_eq(q.lease, 5);
    fake_answer(f, &q, UVMLEASE_ENOLEASE);
    pthread_join(o.t, NULL);
    cr_assert_eq(o.rc, UVMLEASE_OK);
    uvmlease_close(c);
}

/* No broker sends "shutdown" (45): a stopping broker sends nothing and its
 * successor gets waiting acquires again (a_restarted_broker_...). The
 * library has no special case left for it: any acquire-failed ends the
 * acquire with its code. */
Test(fake, every_acquire_failed_ends_the_acquire)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_FOREVER, NULL);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    fake_queued(f, &q);
    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = UL_MSG_ACQUIRE_FAILED;
    r.rid = q.rid;
    r.err = UVMLEASE_ESHUTDOWN;
    fake_send(f, &r);
    cr_assert_eq(bg_acquire_join(&a, 2000), UVMLEASE_ESHUTDOWN);
    uvmlease_close(c);
}

Test(fake, a_revoked_lease_reports_it)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_TRY, NULL);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    fake_grant(f, UL_MSG_REPLY, q.rid, 40, 3);
    cr_assert_eq(bg_acquire_join(&a, 2000), UVMLEASE_OK);

    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = UL_MSG_REVOKED;
    r.lease = 40;
    snprintf(r.uvm, sizeof r.uvm, UVM_A);
    snprintf(r.reason, sizeof r.reason, "wedged");
    fake_send(f, &r);

    /* The phase report may cross the notice: then the broker says so. */
    bg_lease_op o = {.l = a.lease};
    pthread_create(&o.t, NULL, s_bg_lease_op, &o);
    if (fake_recv(f, &q, 300) == 0) {
        cr_assert_eq(q.op, UL_OP_PHASE);
        fake_answer(f, &q, UVMLEASE_EREVOKED);
    }
    pthread_join(o.t, NULL);
    cr_assert_eq(o.rc, UVMLEASE_EREVOKED);
    cr_assert_eq(uvmlease_release(a.lease), UVMLEASE_EREVOKED);
    cr_assert_eq(fake_recv(f, &q, 300), -1, "a revoked lease is not released again");
    uvmlease_close(c);
}

Test(fake, garbage_and_strays_are_ignored)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_TRY, NULL);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);

    zmq_send(f->sock, f->id, f->id_len, ZMQ_SNDMORE);
    zmq_send(f->sock, "\xc1\xc1garbage", 9, 0);
    zmq_send(f->sock, f->id, f->id_len, ZMQ_SNDMORE);
    zmq_send(f->sock, "\xdd\x0f\xff\xff\xff", 5, 0); /* a huge array header */
    zmq_send(f->sock, f->id, f->id_len, ZMQ_SNDMORE);
    zmq_send(f->sock, "\x80", 1, ZMQ_SNDMORE); /* two frames */
    zmq_send(f->sock, "\x80", 1, 0);
    fake_grant(f, UL_MSG_GRANT, q.rid + 1000, 90, 1); /* nobody's rid */
    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = UL_MSG_REPLY;
    r.rid = q.rid;
    r.op = UL_OP_RELEASE; /* the right rid, the wrong op */
    fake_send(f, &r);
    cr_assert_not(atomic_load(&a.done));

    fake_grant(f, UL_MSG_REPLY, q.rid, 41, 4);
    cr_assert_eq(bg_acquire_join(&a, 2000), UVMLEASE_OK);
    cr_assert_eq(uvmlease_lease_id(a.lease), 41);
    fake_release(f, a.lease, 41);
    uvmlease_close(c);
}

/* ------------------------------------------ release_nowait, scripted */

/* A lease granted at once by the fake. */
static uvmlease_lease *fake_acquire(fake *f, uvmlease *c, const char *uvm, uint64_t lease)
{
    bg_acquire a;
    bg_acquire_start(&a, c, uvm, UVMLEASE_CONFIDENTIAL, UVMLEASE_TRY, NULL);
    ul_request q;
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    cr_assert_str_eq(q.uvm, uvm);
    fake_grant(f, UL_MSG_REPLY, q.rid, lease, 1);
    cr_assert_eq(bg_acquire_join(&a, 2000), UVMLEASE_OK);
    return a.lease;
}

Test(fake, release_nowait_returns_before_the_answer_and_keeps_the_release_until_it)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    rel_errs e = {.n = 0};
    pthread_mutex_init(&e.mu, NULL);
    uvmlease_on_release_error(c, s_rel_err, &e);
    uvmlease_lease *l = fake_acquire(f, c, UVM_A, 60);

    /* The fake answers only when told: a release that waited for it
     * would block here for UVMLEASE_CALL_TIMEOUT_MS. */
    uint64_t t0 = ul_now_ms();
    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_OK);
    cr_assert_lt(ul_now_ms() - t0, 500, "release_nowait waited for the broker");
    ul_request q;
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    cr_assert_eq(q.lease, 60);
    cr_assert_eq(ul_client_outstanding(c), 1, "kept until answered");
    fake_answer(f, &q, 0);
    wait_settled(c);
    cr_assert_eq(rel_errs_n(&e), 0);
    cr_assert_eq(fake_recv(f, &q, 300), -1, "sent once: got %s", ul_op_name(q.op));
    uvmlease_close(c);
}

Test(fake, a_failed_release_nowait_reaches_the_handler_on_the_library_thread)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    rel_errs e = {.n = 0};
    pthread_mutex_init(&e.mu, NULL);
    uvmlease_on_release_error(c, s_rel_err, &e);
    uvmlease_lease *l = fake_acquire(f, c, UVM_A, 61);
    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_OK);
    ul_request q;
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    /* Nobody calls afterwards: the library's thread reads the answer. */
    fake_answer(f, &q, UVMLEASE_EREVOKED);
    cr_assert(ut_wait_until(s_rel_err_seen, &e, 5000), "the failure was not reported");
    pthread_mutex_lock(&e.mu);
    cr_assert_eq(e.n, 1);
    cr_assert_eq(e.lease, 61);
    cr_assert_eq(e.status, UVMLEASE_EREVOKED);
    cr_assert_not(pthread_equal(e.thread, pthread_self()));
    pthread_mutex_unlock(&e.mu);
    wait_settled(c);

    /* An answer that the next call reads, before its own (or the
     * library's thread, if it is first): the handler is told, on the
     * library's thread, and the call is not concerned. */
    l = fake_acquire(f, c, UVM_A, 62);
    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_OK);
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    fake_answer(f, &q, UVMLEASE_ENOTOWNER);
    l = fake_acquire(f, c, UVM_B, 63);
    cr_assert(ut_wait_until(s_rel_err_two, &e, 5000), "the second failure was not reported");
    fake_release(f, l, 63);
    pthread_mutex_lock(&e.mu);
    cr_assert_eq(e.n, 2, "reported %d failures", e.n);
    cr_assert_eq(e.lease, 62);
    cr_assert_eq(e.status, UVMLEASE_ENOTOWNER);
    cr_assert_not(pthread_equal(e.thread, pthread_self()));
    pthread_mutex_unlock(&e.mu);
    uvmlease_close(c);
}

Test(fake, release_nowait_is_sent_again_to_a_restarted_broker)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    rel_errs e = {.n = 0};
    pthread_mutex_init(&e.mu, NULL);
    uvmlease_on_release_error(c, s_rel_err, &e);
    uvmlease_lease *l = fake_acquire(f, c, UVM_A, 64);
    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_OK);
    ul_request q;
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    uint64_t rid = q.rid;
    /* Lost in a crash: the next ping's answer comes from a new instance. */
    f->bi = 0x3333;
    fake_expect(f, &q, UL_OP_RELEASE, 3 * UL_CLIENT_PING_MS + 1000);
    cr_assert_eq(q.rid, rid, "re-sent with the same rid");
    cr_assert_eq(q.lease, 64);
    /* It had been done before the crash after all. */
    fake_answer(f, &q, UVMLEASE_ENOLEASE);
    wait_settled(c);
    cr_assert_eq(rel_errs_n(&e), 0, "no-such-lease after a re-send is success, got %s",
                 uvmlease_strerror(e.status));
    uvmlease_close(c);
}

/* An answer the broker could not deliver (its queue to us full) is not
 * lost for good: the release is sent again to the same broker instance. */
Test(fake, an_unanswered_release_nowait_is_sent_again)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    uvmlease_lease *l = fake_acquire(f, c, UVM_A, 66);
    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_OK);
    ul_request q;
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    uint64_t rid = q.rid, t0 = ul_now_ms();
    /* No answer: the same instance gets the same release again. */
    fake_expect(f, &q, UL_OP_RELEASE, UL_CLIENT_RESEND_MS + 2000);
    cr_assert_eq(q.rid, rid, "re-sent with the same rid");
    cr_assert_geq(ul_now_ms() - t0, UL_CLIENT_RESEND_MS - 50, "re-sent before its time");
    fake_answer(f, &q, 0);
    wait_settled(c);
    uint64_t t1 = ul_now_ms();
    uvmlease_close(c);
    cr_assert_lt(ul_now_ms() - t1, 500, "close waited for an answer already given");
}

/* A release-error handler that holds the library's thread until told. */
typedef struct rel_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool inside, let_go;
} rel_gate;

static void s_rel_gate(void *ctx, uint64_t lease, int status)
{
    (void)lease;
    (void)status;
    rel_gate *g = ctx;
    pthread_mutex_lock(&g->mu);
    g->inside = true;
    pthread_cond_broadcast(&g->cv);
    while (!g->let_go)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static bool s_rel_gate_inside(void *p)
{
    rel_gate *g = p;
    pthread_mutex_lock(&g->mu);
    bool in = g->inside;
    pthread_mutex_unlock(&g->mu);
    return in;
}

Test(fake, requests_after_a_queued_release_nowait_do_not_overtake_it)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    rel_gate g = {.inside = false};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    uvmlease_on_release_error(c, s_rel_gate, &g);

    /* Hold the library's thread (it owns the socket) in the handler, so
     * that the release and the acquire after it are both queued when it
     * comes back to send them. */
    uvmlease_lease *l = fake_acquire(f, c, UVM_A, 71);
    uvmlease_lease *other = fake_acquire(f, c, UVM_B, 70);
    cr_assert_eq(uvmlease_release_nowait(other), UVMLEASE_OK);
    ul_request q;
    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    fake_answer(f, &q, UVMLEASE_EREVOKED);
    cr_assert(ut_wait_until(s_rel_gate_inside, &g, 5000), "the handler was not called");

    cr_assert_eq(uvmlease_release_nowait(l), UVMLEASE_OK);
    bg_acquire a;
    bg_acquire_start(&a, c, UVM_A, UVMLEASE_CONFIDENTIAL, UVMLEASE_TRY, NULL);
    pred_ctx two = {c, 2};
    cr_assert(ut_wait_until(s_outstanding_is, &two, 5000), "release and acquire not queued");
    cr_assert_eq(fake_recv(f, &q, 100), -1, "sent while the owner was away: %s", ul_op_name(q.op));
    pthread_mutex_lock(&g.mu);
    g.let_go = true;
    pthread_cond_broadcast(&g.cv);
    pthread_mutex_unlock(&g.mu);

    fake_expect(f, &q, UL_OP_RELEASE, 5000);
    cr_assert_eq(q.lease, 71);
    fake_answer(f, &q, 0);
    fake_expect(f, &q, UL_OP_ACQUIRE, 5000);
    cr_assert_str_eq(q.uvm, UVM_A);
    fake_grant(f, UL_MSG_REPLY, q.rid, 72, 2);
    cr_assert_eq(bg_acquire_join(&a, 2000), UVMLEASE_OK);
    fake_release(f, a.lease, 72);
    uvmlease_close(c);
}

/* ---------------------------------------------- events (what watch uses) */

typedef struct ev_sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t seen[4];
    int n;
    bool inside, let_go;
} ev_sink;

/* Records each event; holds on to the second until told to let go. */
static void s_ev_record(void *ctx, const ul_reply *ev)
{
    ev_sink *s = ctx;
    pthread_mutex_lock(&s->mu);
    if (s->n < 4)
        s->seen[s->n++] = ev->event.at_ms;
    s->inside = true;
    pthread_cond_broadcast(&s->cv);
    while (s->n == 2 && !s->let_go)
        pthread_cond_wait(&s->cv, &s->mu);
    s->inside = false;
    pthread_mutex_unlock(&s->mu);
}

typedef struct ev_clear {
    pthread_t t;
    uvmlease *c;
    ev_sink *s;
    atomic_bool returned;
    bool inside_at_return;
} ev_clear;

static void *s_ev_clear_main(void *p)
{
    ev_clear *x = p;
    ul_client_on_event(x->c, NULL, NULL);
    pthread_mutex_lock(&x->s->mu);
    x->inside_at_return = x->s->inside;
    pthread_mutex_unlock(&x->s->mu);
    atomic_store(&x->returned, true);
    return NULL;
}

static void fake_event(fake *f, uint64_t at)
{
    ul_reply r;
    memset(&r, 0, sizeof r);
    r.kind = UL_MSG_EVENT;
    r.event.type = UL_EV_GRANT;
    r.event.at_ms = at;
    snprintf(r.event.uvm, sizeof r.event.uvm, UVM_A);
    fake_send(f, &r);
}

Test(fake, events_arrive_in_order_and_clearing_the_handler_waits_for_it)
{
    fake *f = &s_fake;
    uvmlease *c = fake_conn(f);
    ev_sink s = {.n = 0};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    ul_client_on_event(c, s_ev_record, &s);
    fake_event(f, 1);
    fake_event(f, 2);
    pthread_mutex_lock(&s.mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    while (s.n < 2)
        cr_assert_eq(pthread_cond_timedwait(&s.cv, &s.mu, &ts), 0, "events not delivered");
    pthread_mutex_unlock(&s.mu);
    cr_assert_eq(s.seen[0], 1);
    cr_assert_eq(s.seen[1], 2);

    /* The handler is inside the second event: clearing it must wait. */
    ev_clear x = {.c = c, .s = &s};
    pthread_create(&x.t, NULL, s_ev_clear_main, &x);
    struct timespec pause = {0, 100 * 1000000L}; /* what must not happen */
    nanosleep(&pause, NULL);
    cr_assert(!atomic_load(&x.returned), "cleared while the handler still ran");
    pthread_mutex_lock(&s.mu);
    s.let_go = true;
    pthread_cond_broadcast(&s.cv);
    pthread_mutex_unlock(&s.mu);
    pthread_join(x.t, NULL);
    cr_assert(!x.inside_at_return, "the handler was still running");

    /* Without a handler, events are dropped. */
    fake_event(f, 3);
    uvmlease_close(c);
    cr_assert_eq(s.n, 2);
}
