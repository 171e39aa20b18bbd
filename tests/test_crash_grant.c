// ctest-timeout: 60
/*
 * test_crash_grant.c — the broker dies after recording a grant and before
 * sending it; the caller's deadline passes while no broker runs; a new
 * broker restores the lease (its holder is alive). The lease must not stay
 * with a caller that gave up on it: libuvmlease's cancel, sent again to the
 * new instance, releases it, and another client gets the UVM.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_proto.h"
#include "uvmlease.h"
#include "uvmlease_broker.h"
#include "uvmlease_errors.h"

TestSuite(crashgrant, .timeout = 60);

#define S_UVM "crash@vm"

/* Die as soon as the victim's grant record is on disk: the grant it
 * belongs to is never sent. */
static ssize_t s_die_after_victim(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
    (void)ctx;
    ssize_t w = pwrite(fd, buf, n, off);
    if (w == (ssize_t)n && n > 64 && memmem(buf, n, "victim", 6))
        raise(SIGKILL);
    return w;
}

static void s_config(uvmlease_broker_config *cfg, const char *rt, const char *ep)
{
    uvmlease_broker_config_init(cfg);
    cfg->runtime_dir = rt;
    cfg->endpoint = ep;
    cfg->max_leases = 64;
    cfg->log_level = getenv("UL_TEST_VERBOSE") ? UL_LOG_DEBUG : UL_LOG_ERROR + 1;
}

/* The first broker, in a child, dying inside the victim's grant. */
static void s_broker_child(const char *rt, const char *ep, ut_chan *ready)
{
    uvmlease_broker_config cfg;
    s_config(&cfg, rt, ep);
    cfg.journal_write = s_die_after_victim;
    uvmlease_broker *b = NULL;
    char err[512];
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "broker: %s\n", err);
        _exit(2);
    }
    ut_chan_put(ready, 'r');
    for (;;)
        pause();
}

/* The victim: waits with a deadline, gives up while no broker runs, then
 * stays alive (its lease would be restored) until told to go. */
static void s_victim_child(const char *ep, ut_chan *go, ut_chan *out)
{
    if (ut_chan_get(go, 20000) != 'g')
        _exit(2);
    uvmlease *c;
    if (uvmlease_connect(ep, &c) != 0)
        _exit(3);
    uvmlease_lease *l = NULL;
    int rc = uvmlease_acquire(c, S_UVM, UVMLEASE_CONFIDENTIAL, "victim", 1500, NULL, NULL, &l);
    ut_chan_put(out, rc == 0 ? '0' : 't');
    ut_chan_get(go, 30000); /* keep the handle: its cancel is still to be sent */
    uvmlease_close(c);
    _exit(0);
}

static bool s_waiters_one(void *ctx)
{
    void *s = ctx;
    ul_request q;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, "%s", S_UVM);
    ul_reply rep;
    bool one = ut_call(s, &q, &rep, 2000) == 0 && rep.err == 0 && rep.n_uvms == 1 &&
               rep.uvms[0].waiter_count == 1;
    ul_reply_free(&rep);
    return one;
}

/* The second broker's "journal read" line, kept for the test. */
static char s_journal_line[1024];

static void s_journal_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    if (strstr(line, "msg=\"journal read\""))
        snprintf(s_journal_line, sizeof s_journal_line, "%s", line);
}

/* The victim's restored lease was released by its own cancel. */
static bool s_released(void *ctx)
{
    void *s = ctx;
    ul_request q;
    ut_req(&q, UL_OP_SHOW);
    snprintf(q.uvm, sizeof q.uvm, "%s", S_UVM);
    ul_reply rep;
    /* A UVM with nothing left on it is forgotten: unknown-uvm. */
    bool done = ut_call(s, &q, &rep, 2000) == 0 &&
                (rep.err == UVMLEASE_EUNKNOWNUVM ||
                 (rep.err == 0 && rep.n_uvms == 1 && rep.uvms[0].n_holders == 0));
    ul_reply_free(&rep);
    return done;
}

Test(crashgrant, grant_recorded_not_sent_then_abandoned_leaves_nothing_held)
{
    char dir[256], rt[300], ep[320];
    ut_tmpdir("crashgrant", dir, sizeof dir);
    snprintf(rt, sizeof rt, "%s/rt", dir);
    snprintf(ep, sizeof ep, "ipc://%s/broker.sock", dir);
    ut_chan ready, go, out;
    ut_chan_open(&ready);
    ut_chan_open(&go);
    ut_chan_open(&out);
    /* Both children before this process starts any ZeroMQ thread. */
    pid_t b1 = ut_fork();
    if (b1 == 0)
        s_broker_child(rt, ep, &ready);
    cr_assert_eq(ut_chan_get(&ready, 10000), 'r', "first broker did not start");
    pid_t victim = ut_fork();
    if (victim == 0)
        s_victim_child(ep, &go, &out);

    void *s = ut_dealer(ep);
    ul_reply rep;
    cr_assert_eq(ut_acquire(s, S_UVM, true, "first", 0, &rep, NULL, NULL, 5000), 0);
    uint64_t first = rep.lease, first_fence = rep.fence;
    ul_reply_free(&rep);
    ut_chan_put(&go, 'g');
    cr_assert(ut_wait_until(s_waiters_one, s, 10000), "the victim never queued");
    /* The broker dies handling this release (it grants the victim), so no
     * answer comes back. */
    ul_request rq;
    ut_req(&rq, UL_OP_RELEASE);
    rq.lease = first;
    cr_assert_eq(ut_send(s, &rq), 0);
    cr_assert_eq(ut_wait_code(b1, 10000), 1000 + SIGKILL,
                 "the broker should have died right after recording the victim's grant");
    cr_assert_eq(ut_chan_get(&out, 10000), 't', "the victim must not see a grant");

    /* A new broker on the same runtime directory: the victim is alive, so
     * its journalled lease is restored... */
    uvmlease_broker_config cfg;
    s_config(&cfg, rt, ep);
    cfg.log_level = UL_LOG_INFO;
    cfg.log_sink = s_journal_sink;
    uvmlease_broker *b2 = NULL;
    char err[512];
    cr_assert_eq(uvmlease_broker_start(&cfg, &b2, NULL, err, sizeof err), 0, "%s", err);
    cr_assert(strstr(s_journal_line, " restored=1 "), "the victim's lease was not restored: %s",
              s_journal_line);
    /* ...and the victim's library, seeing the new instance, sends the cancel
     * of the acquire it gave up on again, which releases it. */
    cr_assert(ut_wait_until(s_released, s, 20000), "the abandoned lease stayed held by the victim");
    cr_assert_eq(ut_acquire(s, S_UVM, true, "after", 0, &rep, NULL, NULL, 5000), 0);
    cr_assert_gt(rep.fence, first_fence, "fences keep going up across the crash");
    ul_reply_free(&rep);
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(victim, 10000), 0);
    ut_dealer_close(s);
    uvmlease_broker_stop(&b2);
    ut_rmrf(dir);
}
