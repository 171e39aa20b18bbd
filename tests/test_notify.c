/*
 * test_notify.c — uvmleased and systemd: READY=1, WATCHDOG=1 and STATUS=
 * lines seen on a NOTIFY_SOCKET the test listens on; and the embedding
 * API's heartbeat: called from the broker's own loop (so a wedged loop
 * stops it), reporting leases held and journal health.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

TestSuite(notify, .timeout = 60);

#define UVM_C "c0ffee9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm"

/* ---- the daemon against a fake service manager --------------------------- */

typedef struct fake_sm {
    char dir[256];
    char path[300];
    int fd;
} fake_sm;

static void s_sm_open(fake_sm *sm, const char *tag)
{
    ut_tmpdir(tag, sm->dir, sizeof sm->dir);
    snprintf(sm->path, sizeof sm->path, "%s/notify.sock", sm->dir);
    sm->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(sm->fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    cr_assert_lt(strlen(sm->path), sizeof sa.sun_path);
    memcpy(sa.sun_path, sm->path, strlen(sm->path) + 1);
    cr_assert_eq(bind(sm->fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s", strerror(errno));
}

static void s_sm_close(fake_sm *sm)
{
    close(sm->fd);
    ut_rmrf(sm->dir);
}

/* Next datagram within timeout_ms into buf; false on timeout. */
static bool s_sm_recv(fake_sm *sm, char *buf, size_t n, int timeout_ms)
{
    struct pollfd p = {.fd = sm->fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return false;
    ssize_t r = recv(sm->fd, buf, n - 1, 0);
    if (r < 0)
        return false;
    buf[r] = '\0';
    return true;
}

/* Read datagrams until one contains needle (true), or timeout_ms passes.
 * Counts WATCHDOG=1 datagrams seen on the way in *pings (may be NULL). */
static bool s_sm_wait_for(fake_sm *sm, const char *needle, int timeout_ms, int *pings, char *last,
                          size_t lastsz)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    char buf[1024];
    for (;;) {
        uint64_t now = ul_now_ms();
        if (now >= deadline)
            return false;
        if (!s_sm_recv(sm, buf, sizeof buf, (int)(deadline - now)))
            return false;
        if (pings && strstr(buf, "WATCHDOG=1"))
            (*pings)++;
        if (last)
            snprintf(last, lastsz, "%s", buf);
        if (strstr(buf, needle))
            return true;
    }
}

/* uvmleased with NOTIFY_SOCKET (and WATCHDOG_USEC when watchdog_usec is
 * not NULL), its own runtime directory, no configuration file. */
static pid_t s_spawn(fake_sm *sm, const char *watchdog_usec, char *ep, size_t epsz)
{
    char bin[512], rt[300], log[300];
    ut_build_path("uvmleased", bin, sizeof bin);
    snprintf(rt, sizeof rt, "%s/rt", sm->dir);
    snprintf(log, sizeof log, "%s/log", sm->dir);
    snprintf(ep, epsz, "ipc://%s/broker.sock", rt);
    pid_t pid = ut_fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        setenv("NOTIFY_SOCKET", sm->path, 1);
        unsetenv("WATCHDOG_PID");
        if (watchdog_usec)
            setenv("WATCHDOG_USEC", watchdog_usec, 1);
        else
            unsetenv("WATCHDOG_USEC");
        execl(bin, bin, "--config", "/dev/null", "--runtime-dir", rt, (char *)NULL);
        _exit(127);
    }
    return pid;
}

Test(notify, ready_watchdog_status_stopping)
{
    fake_sm sm;
    s_sm_open(&sm, "notify-wd");
    char ep[400], last[1024] = "";
    /* 100 ms: pinged every 50 ms. */
    pid_t pid = s_spawn(&sm, "100000", ep, sizeof ep);

    cr_assert(s_sm_wait_for(&sm, "READY=1", 10000, NULL, last, sizeof last), "no READY=1");
    char want[64];
    snprintf(want, sizeof want, "MAINPID=%d", (int)pid);
    cr_assert(strstr(last, want), "READY without %s: %s", want, last);
    cr_assert(strstr(last, ep), "READY's STATUS does not name the endpoint: %s", last);

    /* Pings keep coming, each with the status. */
    int pings = 0;
    while (pings < 5)
        cr_assert(s_sm_wait_for(&sm, "WATCHDOG=1", 5000, &pings, last, sizeof last),
                  "pings stopped after %d", pings);
    cr_assert(strstr(last, "STATUS=serving ipc://"), "%s", last);
    cr_assert(strstr(last, "0 leases held, 0 waiting, journal ok"), "%s", last);

    /* A lease held shows in the status. */
    void *s = ut_dealer(ep);
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    cr_assert_eq(ut_acquire(s, UVM_C, true, "notify", 0, &rep, NULL, NULL, 5000), 0);
    ul_reply_free(&rep);
    cr_assert(
        s_sm_wait_for(&sm, "1 lease held, 0 waiting, journal ok", 5000, NULL, last, sizeof last),
        "the held lease is not in STATUS: %s", last);
    cr_assert(strstr(last, "WATCHDOG=1"), "%s", last);
    ut_dealer_close(s);

    kill(pid, SIGTERM);
    cr_assert(s_sm_wait_for(&sm, "STOPPING=1", 10000, NULL, last, sizeof last), "no STOPPING=1");
    cr_assert_eq(ut_wait_code(pid, 10000), 0);
    s_sm_close(&sm);
}

Test(notify, no_watchdog_pings_unless_asked)
{
    fake_sm sm;
    s_sm_open(&sm, "notify-nowd");
    char ep[400], last[1024] = "";
    pid_t pid = s_spawn(&sm, NULL, ep, sizeof ep);
    int pings = 0;
    cr_assert(s_sm_wait_for(&sm, "READY=1", 10000, &pings, last, sizeof last), "no READY=1");
    /* The broker is serving: one round trip, then it stops. */
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    ut_req(&q, UL_OP_PING);
    cr_assert_eq(ut_call(s, &q, &rep, 5000), 0);
    ul_reply_free(&rep);
    ut_dealer_close(s);
    kill(pid, SIGTERM);
    cr_assert(s_sm_wait_for(&sm, "STOPPING=1", 10000, &pings, last, sizeof last), "no STOPPING=1");
    cr_assert_eq(pings, 0, "WATCHDOG=1 sent without WATCHDOG_USEC");
    cr_assert_eq(ut_wait_code(pid, 10000), 0);
    s_sm_close(&sm);
}

/* ---- the embedding API's heartbeat --------------------------------------- */

typedef struct beat_state {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned count;
    pthread_t thread;
    uvmlease_broker_status last;
    /* journal_write: 0 pass, 1 block until released, 2 fail (ENOSPC) */
    atomic_int jmode;
    bool jblocked; /* a write is blocked now */
} beat_state;

static beat_state S = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void s_beat(void *ctx, const uvmlease_broker_status *st)
{
    beat_state *bs = ctx;
    pthread_mutex_lock(&bs->mu);
    bs->count++;
    bs->thread = pthread_self();
    bs->last = *st;
    pthread_cond_broadcast(&bs->cv);
    pthread_mutex_unlock(&bs->mu);
}

static ssize_t s_jwrite(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
    beat_state *bs = ctx;
    int mode = atomic_load(&bs->jmode);
    if (mode == 1) {
        pthread_mutex_lock(&bs->mu);
        bs->jblocked = true;
        pthread_cond_broadcast(&bs->cv);
        while (atomic_load(&bs->jmode) == 1)
            pthread_cond_wait(&bs->cv, &bs->mu);
        bs->jblocked = false;
        pthread_mutex_unlock(&bs->mu);
    } else if (mode == 2) {
        errno = ENOSPC;
        return -1;
    }
    return pwrite(fd, buf, n, off);
}

/* Wait (bounded) until pred holds on the state, under the lock. */
static bool s_wait(bool (*pred)(const beat_state *, const void *), const void *arg, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&S.mu);
    bool ok;
    while (!(ok = pred(&S, arg)))
        if (pthread_cond_timedwait(&S.cv, &S.mu, &until) == ETIMEDOUT) {
            ok = pred(&S, arg);
            break;
        }
    pthread_mutex_unlock(&S.mu);
    return ok;
}

static bool p_count_at_least(const beat_state *bs, const void *arg)
{
    return bs->count >= *(const unsigned *)arg;
}
static bool p_blocked(const beat_state *bs, const void *arg)
{
    (void)arg;
    return bs->jblocked;
}
static bool p_holders(const beat_state *bs, const void *arg)
{
    return bs->last.holders == *(const uint64_t *)arg;
}
static bool p_journal(const beat_state *bs, const void *arg)
{
    return bs->last.journal_healthy == *(const bool *)arg;
}

static unsigned s_count(void)
{
    pthread_mutex_lock(&S.mu);
    unsigned c = S.count;
    pthread_mutex_unlock(&S.mu);
    return c;
}

Test(notify, heartbeat_comes_from_the_loop)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.heartbeat = s_beat;
    cfg.heartbeat_ctx = &S;
    cfg.heartbeat_ms = 20;
    cfg.journal_write = s_jwrite;
    cfg.journal_write_ctx = &S;
    char dir[256];
    uvmlease_broker *b = ut_broker_start(&cfg, dir);
    const char *ep = uvmlease_broker_endpoint(b);

    unsigned want = 3;
    cr_assert(s_wait(p_count_at_least, &want, 5000), "no heartbeats");
    pthread_mutex_lock(&S.mu);
    cr_assert(!pthread_equal(S.thread, pthread_self()), "heartbeat not on the broker's thread");
    cr_assert_eq(S.last.holders, 0);
    cr_assert(S.last.journal_healthy);
    pthread_mutex_unlock(&S.mu);

    /* Wedge the loop inside a journal write: the heartbeat stops. */
    atomic_store(&S.jmode, 1);
    void *s = ut_dealer(ep);
    ul_request q;
    ut_req(&q, UL_OP_ACQUIRE);
    snprintf(q.uvm, sizeof q.uvm, "%s", UVM_C);
    q.confidential = true;
    snprintf(q.label, sizeof q.label, "wedge");
    q.timeout_ms = 0;
    cr_assert_eq(ut_send(s, &q), 0);
    cr_assert(s_wait(p_blocked, NULL, 5000), "the acquire never reached the journal");
    unsigned before = s_count();
    /* Ten heartbeat periods with the loop stuck. */
    usleep(200 * 1000);
    cr_assert_eq(s_count(), before, "heartbeats while the loop was wedged: %u -> %u", before,
                 s_count());
    /* Unwedged: heartbeats resume and report the lease. */
    pthread_mutex_lock(&S.mu);
    atomic_store(&S.jmode, 0);
    pthread_cond_broadcast(&S.cv);
    pthread_mutex_unlock(&S.mu);
    uint64_t one = 1;
    cr_assert(s_wait(p_holders, &one, 5000), "no heartbeat with the lease held");
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    cr_assert_eq(ut_recv(s, &rep, 5000), 0);
    cr_assert_eq(rep.err, 0);
    uint64_t lease = rep.lease;
    ul_reply_free(&rep);

    /* A failing journal is reported, and so is its recovery. */
    atomic_store(&S.jmode, 2);
    cr_assert_eq(ut_release(s, lease), 0);
    bool healthy = false;
    cr_assert(s_wait(p_journal, &healthy, 5000), "journal failure not reported");
    atomic_store(&S.jmode, 0);
    healthy = true;
    cr_assert(s_wait(p_journal, &healthy, 5000), "journal recovery not reported");
    uint64_t zero = 0;
    cr_assert(s_wait(p_holders, &zero, 5000), "the release is not reported");

    ut_dealer_close(s);
    ut_broker_stop(&b, dir);
}
