// ctest-timeout: 180
/*
 * test_broker.c — the in-process broker against client processes.
 *
 * The broker runs inside the test process, so every lease holder and waiter
 * is a forked child (ownership and liveness are per process). Children
 * report through exit codes and pipes, never by asserting, and die with the
 * test (ut_fork sets PR_SET_PDEATHSIG).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

#define UVM_C "6f1c2a9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm"
#define UVM_S "0000000000000000000000000000000000000000000000000000000000000001@vm"

TestSuite(broker, .timeout = 60);

static char s_dir[256];
static uvmlease_broker *s_b;

static const char *s_start(const uvmlease_broker_config *cfg)
{
    s_b = ut_broker_start(cfg, s_dir);
    return uvmlease_broker_endpoint(s_b);
}

static void s_stop(void)
{
    ut_broker_stop(&s_b, s_dir);
}

/* Child: acquire, report 'G' (granted) or 'Q' (queued) through ch, run
 * body, release. Exit 0 on success. */
typedef struct holder_args {
    const char *ep;
    const char *uvm;
    bool conf;
    const char *label;
    ut_chan *report;     /* 'Q' when queued, 'G' when granted */
    ut_chan *go;         /* waits for one byte before releasing, if set */
    const char *marker;  /* O_EXCL marker created while holding, if set */
    const char *logfile; /* appends "<label>\n" when granted, if set */
} holder_args;

static void s_on_queued(void *ctx)
{
    ut_chan *c = ctx;
    if (c)
        ut_chan_put(c, 'Q');
}

static int s_holder(const holder_args *a)
{
    void *s = ut_dealer(a->ep);
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    int rc = ut_acquire(s, a->uvm, a->conf, a->label, UL_TIMEOUT_FOREVER, &rep, s_on_queued,
                        a->report, 20000);
    if (rc != 0)
        return 10;
    uint64_t lease = rep.lease;
    ul_reply_free(&rep);
    int mfd = -1;
    if (a->marker) {
        mfd = open(a->marker, O_CREAT | O_EXCL | O_WRONLY, 0600);
        if (mfd < 0)
            return 11; /* someone else holds it: overlap */
    }
    if (a->logfile) {
        int fd = open(a->logfile, O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (fd < 0 || dprintf(fd, "%s\n", a->label) < 0)
            return 12;
        close(fd);
    }
    if (a->report)
        ut_chan_put(a->report, 'G');
    if (a->go && ut_chan_get(a->go, 20000) < 0)
        return 13;
    if (mfd >= 0) {
        close(mfd);
        unlink(a->marker);
    }
    if (ut_release(s, lease) != 0)
        return 14;
    ut_dealer_close(s);
    return 0;
}

static pid_t s_spawn_holder(const holder_args *a)
{
    pid_t pid = ut_fork();
    if (pid == 0)
        _exit(s_holder(a));
    return pid;
}

Test(broker, confidential_is_exclusive_and_fifo)
{
    const char *ep = s_start(NULL);
    char marker[300], logf[300];
    snprintf(marker, sizeof marker, "%s/marker", s_dir);
    snprintf(logf, sizeof logf, "%s/order", s_dir);
    enum { N = 5 };
    ut_chan rep[N], go[N];
    pid_t pids[N];
    const char *labels[N] = {"c0", "c1", "c2", "c3", "c4"};
    for (int i = 0; i < N; i++) {
        ut_chan_open(&rep[i]);
        ut_chan_open(&go[i]);
        holder_args a = {.ep = ep,
                         .uvm = UVM_C,
                         .conf = true,
                         .label = labels[i],
                         .report = &rep[i],
                         .go = &go[i],
                         .marker = marker,
                         .logfile = logf};
        pids[i] = s_spawn_holder(&a);
        /* The first is granted; each later one is queued before the next
         * starts, which fixes the arrival order. */
        cr_assert_eq(ut_chan_get(&rep[i], 30000), i == 0 ? 'G' : 'Q', "child %d", i);
    }
    for (int i = 0; i < N; i++) {
        if (i > 0)
            cr_assert_eq(ut_chan_get(&rep[i], 30000), 'G', "child %d not granted", i);
        /* Nobody else may be granted while i holds. */
        for (int j = i + 1; j < N; j++)
            cr_assert_eq(ut_chan_get(&rep[j], 0), -1, "child %d granted while %d holds", j, i);
        ut_chan_put(&go[i], 'x');
        cr_assert_eq(ut_wait_code(pids[i], 10000), 0, "child %d failed", i);
    }
    char buf[64] = "";
    FILE *f = fopen(logf, "r");
    cr_assert(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cr_assert_str_eq(buf, "c0\nc1\nc2\nc3\nc4\n");
    s_stop();
}

/* Standard UVM: every child creates its file, then waits for all three
 * files: only possible if all three hold the lease at once. */
static int s_rendezvous_child(const char *ep, const char *dir, int idx)
{
    void *s = ut_dealer(ep);
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    if (ut_acquire(s, UVM_S, false, "std", UL_TIMEOUT_FOREVER, &rep, NULL, NULL, 10000) != 0)
        return 10;
    uint64_t lease = rep.lease;
    ul_reply_free(&rep);
    char p[300];
    snprintf(p, sizeof p, "%s/here-%d", dir, idx);
    close(open(p, O_CREAT | O_WRONLY, 0600));
    uint64_t deadline = ul_now_ms() + 10000;
    for (;;) {
        int present = 0;
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s/here-%d", dir, i);
            present += access(p, F_OK) == 0;
        }
        if (present == 3)
            break;
        if (ul_now_ms() > deadline)
            return 11;
        usleep(500);
    }
    return ut_release(s, lease) == 0 ? 0 : 12;
}

Test(broker, standard_is_concurrent)
{
    const char *ep = s_start(NULL);
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        pids[i] = ut_fork();
        if (pids[i] == 0)
            _exit(s_rendezvous_child(ep, s_dir, i));
    }
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ut_wait_code(pids[i], 20000), 0, "child %d", i);
    s_stop();
}

Test(broker, kill9_holder_hands_on)
{
    const char *ep = s_start(NULL);
    ut_chan ra, rb;
    ut_chan_open(&ra);
    ut_chan_open(&rb);
    ut_chan never;
    ut_chan_open(&never);
    holder_args a = {
        .ep = ep, .uvm = UVM_C, .conf = true, .label = "a", .report = &ra, .go = &never};
    pid_t pa = s_spawn_holder(&a);
    cr_assert_eq(ut_chan_get(&ra, 30000), 'G');
    holder_args bb = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "b", .report = &rb};
    pid_t pb = s_spawn_holder(&bb);
    cr_assert_eq(ut_chan_get(&rb, 30000), 'Q');
    uint64_t t0 = ul_now_us();
    kill(pa, SIGKILL);
    cr_assert_eq(ut_chan_get(&rb, 5000), 'G', "waiter not granted after the holder died");
    uint64_t dt = ul_now_us() - t0;
    cr_log_info("kill -9 of holder to grant of next waiter: %.2f ms", (double)dt / 1000.0);
    fprintf(stderr, "handoff after SIGKILL: %.2f ms\n", (double)dt / 1000.0);
    cr_assert_eq(ut_wait_code(pa, 5000), 1000 + SIGKILL);
    cr_assert_eq(ut_wait_code(pb, 5000), 0);
    s_stop();
}

Test(broker, killed_waiter_leaves_queue)
{
    const char *ep = s_start(NULL);
    ut_chan ra, rb, rc, go;
    ut_chan_open(&ra);
    ut_chan_open(&rb);
    ut_chan_open(&rc);
    ut_chan_open(&go);
    holder_args a = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "a", .report = &ra, .go = &go};
    pid_t pa = s_spawn_holder(&a);
    cr_assert_eq(ut_chan_get(&ra, 30000), 'G');
    holder_args b = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "b", .report = &rb};
    pid_t pb = s_spawn_holder(&b);
    cr_assert_eq(ut_chan_get(&rb, 30000), 'Q');
    holder_args c = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "c", .report = &rc};
    pid_t pc = s_spawn_holder(&c);
    cr_assert_eq(ut_chan_get(&rc, 30000), 'Q');
    kill(pb, SIGKILL);
    cr_assert_eq(ut_wait_code(pb, 5000), 1000 + SIGKILL);
    ut_chan_put(&go, 'x'); /* a releases: c must be next, not the dead b */
    cr_assert_eq(ut_wait_code(pa, 5000), 0);
    cr_assert_eq(ut_chan_get(&rc, 5000), 'G');
    cr_assert_eq(ut_wait_code(pc, 5000), 0);
    s_stop();
}

/* Child: holds with a label and a phase until told. */
static int s_phase_holder(const char *ep, ut_chan *rep, ut_chan *go)
{
    void *s = ut_dealer(ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    if (ut_acquire(s, UVM_C, true, "ctr-1234", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 10000))
        return 10;
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    ul_request q;
    ut_req(&q, UL_OP_PHASE);
    q.lease = lease;
    snprintf(q.phase, sizeof q.phase, "cim-mount");
    if (ut_call(s, &q, &r, 5000) || r.err)
        return 11;
    ul_reply_free(&r);
    ut_chan_put(rep, 'G');
    if (ut_chan_get(go, 20000) < 0)
        return 12;
    return ut_release(s, lease) == 0 ? 0 : 13;
}

Test(broker, try_on_held_names_holder)
{
    const char *ep = s_start(NULL);
    ut_chan rep, go;
    ut_chan_open(&rep);
    ut_chan_open(&go);
    pid_t pa = ut_fork();
    if (pa == 0) {
        prctl(PR_SET_NAME, "shim-holder");
        _exit(s_phase_holder(ep, &rep, &go));
    }
    cr_assert_eq(ut_chan_get(&rep, 30000), 'G');
    pid_t pb = ut_fork();
    if (pb == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        uint64_t t0 = ul_now_ms();
        int rc = ut_acquire(s, UVM_C, true, "other", 0, &r, NULL, NULL, 5000);
        if (rc != UVMLEASE_EBUSY)
            _exit(10);
        if (ul_now_ms() - t0 > 1000)
            _exit(11); /* "at once" */
        if (!r.has_holder || r.holder.pid != (uint32_t)pa)
            _exit(12);
        if (strcmp(r.holder.label, "ctr-1234") || strcmp(r.holder.phase, "cim-mount") ||
            strcmp(r.holder.comm, "shim-holder"))
            _exit(13);
        _exit(0);
    }
    cr_assert_eq(ut_wait_code(pb, 10000), 0);
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(pa, 10000), 0);
    s_stop();
}

Test(broker, timeout_and_cancel_leave_no_orphan)
{
    const char *ep = s_start(NULL);
    ut_chan ra, go, rc;
    ut_chan_open(&ra);
    ut_chan_open(&go);
    ut_chan_open(&rc);
    holder_args a = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "a", .report = &ra, .go = &go};
    pid_t pa = s_spawn_holder(&a);
    cr_assert_eq(ut_chan_get(&ra, 30000), 'G');

    /* b times out; d cancels; both stay alive afterwards, so only the
     * broker's bookkeeping can keep them out of the queue. */
    ut_chan bdone, bgo;
    ut_chan_open(&bdone);
    ut_chan_open(&bgo);
    pid_t pb = ut_fork();
    if (pb == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        int x = ut_acquire(s, UVM_C, true, "b", 50, &r, NULL, NULL, 5000);
        ut_chan_put(&bdone, x == UVMLEASE_ETIMEDOUT ? 'T' : 'E');
        /* Stay connected: a later grant sent to us would be an orphan. */
        ul_reply extra;
        memset(&extra, 0, sizeof extra);
        int got = ut_recv(s, &extra, 0);
        ut_chan_get(&bgo, 20000);
        got = got == 0 ? 0 : ut_recv(s, &extra, 200);
        _exit(got == 0 ? 20 : 0);
    }
    cr_assert_eq(ut_chan_get(&bdone, 5000), 'T');

    pid_t pd = ut_fork();
    if (pd == 0) {
        void *s = ut_dealer(ep);
        ul_request q;
        ul_reply r;
        ut_req(&q, UL_OP_ACQUIRE);
        snprintf(q.uvm, sizeof q.uvm, UVM_C);
        q.confidential = true;
        if (ut_call(s, &q, &r, 5000) || !r.queued)
            _exit(10);
        ul_reply_free(&r);
        ul_request c;
        ut_req(&c, UL_OP_CANCEL);
        c.target_rid = q.rid;
        if (ut_send(s, &c))
            _exit(11);
        bool cancel_ok = false, failed = false;
        while (!(cancel_ok && failed)) {
            if (ut_recv(s, &r, 5000))
                _exit(12);
            if (r.kind == UL_MSG_REPLY && r.rid == c.rid && r.err == 0)
                cancel_ok = true;
            else if (r.kind == UL_MSG_ACQUIRE_FAILED && r.rid == q.rid &&
                     r.err == UVMLEASE_ECANCELLED)
                failed = true;
            else
                _exit(13);
            ul_reply_free(&r);
        }
        /* A second cancel finds nothing waiting. */
        ut_req(&c, UL_OP_CANCEL);
        c.target_rid = q.rid;
        if (ut_call(s, &c, &r, 5000) || r.err != UVMLEASE_ENOTWAITING)
            _exit(14);
        sleep(30); /* stays alive until killed below */
        _exit(0);
    }
    holder_args c = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "c", .report = &rc};
    pid_t pc = s_spawn_holder(&c);
    cr_assert_eq(ut_chan_get(&rc, 30000), 'Q');
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(pa, 5000), 0);
    cr_assert_eq(ut_chan_get(&rc, 5000), 'G', "c must be granted, not the timed-out or cancelled");
    cr_assert_eq(ut_wait_code(pc, 5000), 0);
    ut_chan_put(&bgo, 'x');
    cr_assert_eq(ut_wait_code(pb, 5000), 0, "the timed-out waiter received a later message");
    kill(pd, SIGKILL);
    ut_wait(pd, 5000);
    s_stop();
}

Test(broker, one_process_queues_behind_itself)
{
    const char *ep = s_start(NULL);
    pid_t p = ut_fork();
    if (p == 0) {
        /* Two connections of one process, as two shim threads would have:
         * no re-entrance, the second waits for the first. */
        void *s1 = ut_dealer(ep), *s2 = ut_dealer(ep);
        ul_reply r1, r2;
        memset(&r1, 0, sizeof r1);
        memset(&r2, 0, sizeof r2);
        if (ut_acquire(s1, UVM_C, true, "t1", UL_TIMEOUT_FOREVER, &r1, NULL, NULL, 5000))
            _exit(10);
        ul_request q;
        ut_req(&q, UL_OP_ACQUIRE);
        snprintf(q.uvm, sizeof q.uvm, UVM_C);
        q.confidential = true;
        if (ut_call(s2, &q, &r2, 5000) || !r2.queued || r2.position != 1)
            _exit(11);
        ul_reply_free(&r2);
        if (ut_release(s1, r1.lease))
            _exit(12);
        if (ut_recv(s2, &r2, 5000) || r2.kind != UL_MSG_GRANT || r2.rid != q.rid)
            _exit(13);
        if (r2.fence <= r1.fence)
            _exit(14);
        _exit(ut_release(s2, r2.lease) == 0 ? 0 : 15);
    }
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    s_stop();
}

Test(broker, release_errors)
{
    const char *ep = s_start(NULL);
    ut_chan ra, go;
    ut_chan_open(&ra);
    ut_chan_open(&go);
    /* a holds; b tries to release a's lease; a releases twice. */
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pa = ut_fork();
    if (pa == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "a", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        if (write(fds[1], &r.lease, sizeof r.lease) != sizeof r.lease)
            _exit(11);
        if (ut_chan_get(&go, 30000) < 0)
            _exit(12);
        if (ut_release(s, r.lease))
            _exit(13);
        _exit(ut_release(s, r.lease) == UVMLEASE_ENOLEASE ? 0 : 14);
    }
    uint64_t lease = 0;
    cr_assert_eq(read(fds[0], &lease, sizeof lease), (ssize_t)sizeof lease);
    pid_t pb = ut_fork();
    if (pb == 0) {
        void *s = ut_dealer(ep);
        if (ut_release(s, lease) != UVMLEASE_ENOTOWNER)
            _exit(10);
        _exit(ut_release(s, lease + 1000000) == UVMLEASE_ENOLEASE ? 0 : 11);
    }
    cr_assert_eq(ut_wait_code(pb, 10000), 0);
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(pa, 10000), 0);
    s_stop();
}

/* Send bytes that are not msgpack; 0 if the broker answers "malformed"
 * (or another decode error) without a rid. */
static int zmq_send_garbage_ok(void *s)
{
    const char junk[] = "\xc1\xc1 definitely not msgpack";
    if (zmq_send(s, junk, sizeof junk - 1, 0) < 0)
        return 1;
    ul_reply r;
    memset(&r, 0, sizeof r);
    if (ut_recv(s, &r, 5000))
        return 2;
    int bad = r.kind != UL_MSG_REPLY || r.err != UVMLEASE_EMALFORMED || r.rid != 0;
    ul_reply_free(&r);
    return bad ? 3 : 0;
}

Test(broker, class_conflict_and_bad_input_replies)
{
    const char *ep = s_start(NULL);
    pid_t p = ut_fork();
    if (p == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "a", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        ul_reply_free(&r);
        if (ut_acquire(s, UVM_C, false, "b", 0, &r, NULL, NULL, 5000) != UVMLEASE_ECLASS)
            _exit(11);
        ul_reply_free(&r);
        /* Garbage gets an error reply, and the connection keeps working. */
        if (zmq_send_garbage_ok(s))
            _exit(12);
        ul_request q;
        ut_req(&q, UL_OP_PING);
        if (ut_call(s, &q, &r, 5000) || r.err || r.broker_pid != (uint32_t)getppid())
            _exit(13);
        _exit(0);
    }
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    s_stop();
}

/* Log lines: logfmt, with the client's process name escaped. */
typedef struct logcap {
    char buf[65536];
    size_t len;
    pthread_mutex_t mu;
} logcap;

static logcap s_cap = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void s_cap_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)level;
    logcap *c = ctx;
    pthread_mutex_lock(&c->mu);
    size_t n = strlen(line);
    if (c->len + n + 2 < sizeof c->buf) {
        memcpy(c->buf + c->len, line, n);
        c->len += n;
        c->buf[c->len++] = '\n';
        c->buf[c->len] = '\0';
    }
    pthread_mutex_unlock(&c->mu);
}

static bool s_cap_has(void *needle)
{
    pthread_mutex_lock(&s_cap.mu);
    bool r = strstr(s_cap.buf, needle) != NULL;
    pthread_mutex_unlock(&s_cap.mu);
    return r;
}

Test(broker, logs_are_logfmt_and_escaped)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.log_sink = s_cap_sink;
    cfg.log_ctx = &s_cap;
    const char *ep = s_start(&cfg);
    ut_chan ra, go;
    ut_chan_open(&ra);
    ut_chan_open(&go);
    pid_t p = ut_fork();
    if (p == 0) {
        prctl(PR_SET_NAME, "evil\nname=x");
        holder_args a = {
            .ep = ep, .uvm = UVM_C, .conf = true, .label = "lbl \"q\"", .report = &ra, .go = &go};
        _exit(s_holder(&a));
    }
    cr_assert_eq(ut_chan_get(&ra, 30000), 'G');
    /* A refusal naming that holder still encodes. */
    pid_t t = ut_fork();
    if (t == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "t", 0, &r, NULL, NULL, 5000) != UVMLEASE_EBUSY)
            _exit(10);
        _exit(r.has_holder && strcmp(r.holder.comm, "evil?name=x") == 0 ? 0 : 11);
    }
    cr_assert_eq(ut_wait_code(t, 10000), 0);
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    cr_assert(ut_wait_until(s_cap_has, "msg=release", 5000));
    char want[128];
    /* The process named itself "evil\nname=x": the newline never reaches a
     * log line or a reply. */
    snprintf(want, sizeof want, "msg=grant uvm=%s pid=%d comm=\"evil?name=x\"", UVM_C, (int)p);
    cr_assert(s_cap_has(want), "no escaped grant line in:\n%s", s_cap.buf);
    cr_assert(s_cap_has("label=\"lbl \\\"q\\\"\""), "label not escaped:\n%s", s_cap.buf);
    cr_assert(s_cap_has("reason=released"), "%s", s_cap.buf);
    cr_assert(strncmp(s_cap.buf, "ts=", 3) == 0);
    s_stop();
}

Test(broker, runtime_dir_and_socket_modes)
{
    const char *ep = s_start(NULL);
    struct stat st;
    cr_assert_eq(stat(s_dir, &st), 0);
    /* mkdtemp made it 0700; the broker only ever removes access. */
    cr_assert_eq(st.st_mode & 007, 0, "runtime dir open to others: %o", st.st_mode & 0777);
    cr_assert_eq(stat(ep + 6, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0660, "socket mode %o", st.st_mode & 0777);
    s_stop();
    cr_assert_neq(stat(ep + 6, &st), 0, "socket left behind after stop");
}

Test(broker, fresh_runtime_dir_is_0750)
{
    char parent[256], dir[300];
    ut_tmpdir("rtdir", parent, sizeof parent);
    snprintf(dir, sizeof dir, "%s/rt", parent);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.log_level = UL_LOG_ERROR;
    /* A permissive umask must not leak into the directory or socket. */
    mode_t old = umask(0);
    uvmlease_broker *b = NULL;
    char err[256];
    int rc = uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err);
    umask(old);
    cr_assert_eq(rc, 0, "%s", err);
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0750, "dir mode %o", st.st_mode & 0777);
    char sock[400];
    snprintf(sock, sizeof sock, "%s/broker.sock", dir);
    cr_assert_eq(stat(sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0660, "socket mode %o", st.st_mode & 0777);
    /* A second broker in the same process is refused too (OFD lock). */
    uvmlease_broker *b2 = NULL;
    pid_t other = 0;
    rc = uvmlease_broker_start(&cfg, &b2, &other, err, sizeof err);
    cr_assert_eq(rc, UVMLEASE_EBUSY, "%s", err);
    cr_assert_eq(other, getpid());
    uvmlease_broker_stop(&b);
    ut_rmrf(parent);
}

Test(broker, non_ipc_endpoint_refused)
{
    char dir[256];
    ut_tmpdir("tcp", dir, sizeof dir);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.endpoint = "tcp://127.0.0.1:5555";
    uvmlease_broker *b = NULL;
    char err[256];
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_EBADENDPOINT);
    cr_assert_null(b);
    ut_rmrf(dir);
}

Test(broker, acquire_resend_is_idempotent)
{
    const char *ep = s_start(NULL);
    ut_chan ra, go;
    ut_chan_open(&ra);
    ut_chan_open(&go);
    holder_args a = {.ep = ep, .uvm = UVM_C, .conf = true, .label = "a", .report = &ra, .go = &go};
    pid_t pa = s_spawn_holder(&a);
    cr_assert_eq(ut_chan_get(&ra, 30000), 'G');
    pid_t p = ut_fork();
    if (p == 0) {
        /* The same acquire (same rid) on a first connection, then again on
         * a second one, as a client does after reconnecting. */
        void *s1 = ut_dealer(ep), *s2 = ut_dealer(ep);
        ul_request q;
        ul_reply r;
        ut_req(&q, UL_OP_ACQUIRE);
        snprintf(q.uvm, sizeof q.uvm, UVM_C);
        q.confidential = true;
        if (ut_call(s1, &q, &r, 5000) || !r.queued || r.position != 1)
            _exit(10);
        if (ut_call(s2, &q, &r, 5000) || !r.queued || r.position != 1)
            _exit(11);
        /* The same rid for another UVM is a different request. */
        ul_request d = q;
        snprintf(d.uvm, sizeof d.uvm, "other@vm");
        if (ut_call(s2, &d, &r, 5000) || r.err != UVMLEASE_EDUPLICATE)
            _exit(12);
        ut_chan_put(&go, 'x'); /* let a release */
        /* The grant follows the newest route. */
        if (ut_recv(s2, &r, 5000) || r.kind != UL_MSG_GRANT || r.rid != q.rid)
            _exit(13);
        uint64_t lease = r.lease, fence = r.fence;
        if (ut_recv(s1, &r, 200) != -1)
            _exit(14); /* nothing for the old connection */
        /* A re-send after the grant answers with the same lease. */
        if (ut_call(s1, &q, &r, 5000) || r.err || r.lease != lease || r.fence != fence)
            _exit(15);
        _exit(ut_release(s1, lease) == 0 ? 0 : 16);
    }
    cr_assert_eq(ut_wait_code(p, 10000), 0);
    cr_assert_eq(ut_wait_code(pa, 10000), 0);
    s_stop();
}

Test(broker, overdue_is_flagged_never_revoked)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.hold_warn_ms = 50;
    cfg.log_sink = s_cap_sink;
    cfg.log_ctx = &s_cap;
    const char *ep = s_start(&cfg);
    ut_chan ra, go;
    ut_chan_open(&ra);
    ut_chan_open(&go);
    holder_args a = {
        .ep = ep, .uvm = UVM_C, .conf = true, .label = "slow", .report = &ra, .go = &go};
    pid_t pa = s_spawn_holder(&a);
    cr_assert_eq(ut_chan_get(&ra, 30000), 'G');
    cr_assert(ut_wait_until(s_cap_has, "msg=\"lease overdue\"", 5000), "no overdue line:\n%s",
              s_cap.buf);
    /* Still held, and shown as overdue to whoever is refused. */
    pid_t t = ut_fork();
    if (t == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "t", 0, &r, NULL, NULL, 5000) != UVMLEASE_EBUSY)
            _exit(10);
        _exit(r.has_holder && r.holder.overdue && r.holder.pid == (uint32_t)pa ? 0 : 11);
    }
    cr_assert_eq(ut_wait_code(t, 10000), 0);
    char *first = strstr(s_cap.buf, "lease overdue");
    cr_assert(first && !strstr(first + 1, "lease overdue"), "overdue logged more than once");
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(pa, 10000), 0, "the overdue holder could not release normally");
    s_stop();
}

Test(broker, unsafe_runtime_dirs_refused)
{
    char parent[256], dir[300];
    ut_tmpdir("unsafe", parent, sizeof parent);
    snprintf(dir, sizeof dir, "%s/rt", parent);
    cr_assert_eq(mkdir(dir, 0777), 0);
    cr_assert_eq(chmod(dir, 01777), 0);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.log_level = UL_LOG_ERROR;
    uvmlease_broker *b = NULL;
    char err[256] = "";
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_ESYSTEM);
    cr_assert(strstr(err, "writable by group or others"), "%s", err);
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 01777, "a refused directory must be left as it was");
    /* A symlink in place of the directory is not followed. */
    char link[320];
    snprintf(link, sizeof link, "%s/link", parent);
    cr_assert_eq(symlink(dir, link), 0);
    cfg.runtime_dir = link;
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_ESYSTEM);
    if (geteuid() == 0) {
        /* A directory owned by someone else. */
        cr_assert_eq(chmod(dir, 0750), 0);
        cr_assert_eq(chown(dir, 65534, 65534), 0);
        cfg.runtime_dir = dir;
        cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_ESYSTEM);
        cr_assert(strstr(err, "owned by uid 65534"), "%s", err);
    }
    cr_assert_null(b);
    ut_rmrf(parent);
}

/* The lock file is the broker's own, and binding never replaces what is
 * not a dead socket of the broker's user: a regular file at the endpoint,
 * or a live broker serving it from another runtime directory. */
Test(broker, foreign_lock_and_endpoint_refused)
{
    char parent[256], rt[300], lock[320], other[320], ep[340], ep2[340], file[320];
    ut_tmpdir("foreign", parent, sizeof parent);
    snprintf(rt, sizeof rt, "%s/rt", parent);
    snprintf(lock, sizeof lock, "%s/broker.lock", rt);
    snprintf(other, sizeof other, "%s/elsewhere", parent);
    cr_assert_eq(mkdir(rt, 0700), 0);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = rt;
    cfg.max_leases = 16;
    cfg.log_level = UL_LOG_ERROR + 1;
    uvmlease_broker *b = NULL;
    char err[512] = "";

    int fd = open(other, O_WRONLY | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(symlink(other, lock), 0);
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_ESYSTEM);
    cr_assert(strstr(err, "symbolic link"), "%s", err);
    unlink(lock);
    fd = open(lock, O_WRONLY | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(chmod(lock, 0666), 0);
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_ESYSTEM);
    cr_assert(strstr(err, "not a file of the broker's own"), "%s", err);
    unlink(lock);

    /* A regular file where the socket would go is never removed. */
    snprintf(file, sizeof file, "%s/not-a-socket", parent);
    fd = open(file, O_WRONLY | O_CREAT, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    snprintf(ep, sizeof ep, "ipc://%s", file);
    cfg.endpoint = ep;
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), UVMLEASE_ESYSTEM);
    cr_assert(strstr(err, "not a socket"), "%s", err);
    struct stat st;
    cr_assert_eq(stat(file, &st), 0, "the file is still there");

    /* A live broker on the endpoint, started from another runtime
     * directory, keeps it. */
    snprintf(ep2, sizeof ep2, "ipc://%s/live.sock", parent);
    cfg.endpoint = ep2;
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), 0, "%s", err);
    char rt2[320];
    snprintf(rt2, sizeof rt2, "%s/rt2", parent);
    uvmlease_broker_config cfg2 = cfg;
    cfg2.runtime_dir = rt2;
    uvmlease_broker *b2 = NULL;
    pid_t other_pid = 0;
    cr_assert_eq(uvmlease_broker_start(&cfg2, &b2, &other_pid, err, sizeof err), UVMLEASE_EBUSY,
                 "%s", err);
    cr_assert_eq(other_pid, getpid(), "names the live broker");
    ut_settle(ep2); /* the first still answers */
    uvmlease_broker_stop(&b);
    ut_rmrf(parent);
}

/* watch-child anchors a lease to a child of the caller only: not to its
 * parent, not to itself, not to a process that is gone. */
Test(broker, watch_child_takes_only_a_child)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    const char *ep = s_start(&cfg);
    pid_t p = ut_fork();
    if (p == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "anchor", 0, &r, NULL, NULL, 5000))
            _exit(10);
        uint64_t lease = r.lease;
        ul_reply_free(&r);
        int go[2];
        if (pipe(go) != 0)
            _exit(11);
        pid_t kid = fork();
        if (kid == 0) {
            char x;
            close(go[1]);
            _exit(read(go[0], &x, 1) < 0);
        }
        close(go[0]);
        pid_t dead = fork();
        if (dead == 0)
            _exit(0);
        waitpid(dead, NULL, 0);
        const uint32_t pids[] = {(uint32_t)getppid(), (uint32_t)getpid(), (uint32_t)dead,
                                 (uint32_t)kid};
        const int want[] = {UVMLEASE_ENOTCHILD, UVMLEASE_ENOTCHILD, -1, 0};
        for (int i = 0; i < 4; i++) {
            ul_request q;
            ut_req(&q, UL_OP_WATCH_CHILD);
            q.lease = lease;
            q.pid = pids[i];
            memset(&r, 0, sizeof r);
            if (ut_call(s, &q, &r, 5000) != 0)
                _exit(20 + i);
            int err = (int)r.err;
            ul_reply_free(&r);
            /* A reaped child is refused, as not a child or as gone. */
            if (want[i] >= 0 ? err != want[i] : err == 0)
                _exit(30 + i);
        }
        close(go[1]);
        waitpid(kid, NULL, 0);
        _exit(ut_release(s, lease) == 0 ? 0 : 40);
    }
    cr_assert_eq(ut_wait_code(p, 20000), 0);
    s_stop();
}
