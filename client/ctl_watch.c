/*
 * ctl_watch.c — `uvmleasectl watch`: subscribe to the broker's events and
 * print them until SIGINT, SIGTERM or SIGHUP.
 *
 * Events arrive on the library's I/O thread (ul_client_on_event). They
 * are queued for the main thread, which alone writes: a reader that stops
 * reading then blocks the main thread, never the I/O thread (which keeps
 * answering and receiving), and the queue bounds what is kept meanwhile.
 * The signal thread (ctl_signal.h) only marks the stop; the main thread
 * sees it in the same wait as the events.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "ctl_signal.h"
#include "ul_client.h"
#include "ul_sys.h"

/* How often watch checks that the broker still answers, and how long an
 * answer may take before watch gives up. */
#define WATCH_PING_MS 1000
#define WATCH_DEAD_MS 3000
/* Events held while the output is slow; more are counted and dropped, as
 * the broker itself does for slow watchers. */
#define WATCH_QUEUE 1024

typedef struct watch_queue {
    pthread_mutex_t mu;
    ul_event *ev; /* ring of WATCH_QUEUE */
    size_t first, n;
    uint64_t dropped;
    bool stop; /* a stop signal came */
    int efd;   /* wake-up event (ul_sys.h): something was queued, or stop */
} watch_queue;

static void s_wake(watch_queue *wq)
{
    ul_wakeup_signal(wq->efd);
}

static void s_on_event(void *ctx, const ul_reply *rep)
{
    watch_queue *wq = ctx;
    pthread_mutex_lock(&wq->mu);
    if (wq->n < WATCH_QUEUE)
        wq->ev[(wq->first + wq->n++) % WATCH_QUEUE] = rep->event;
    else
        wq->dropped++;
    pthread_mutex_unlock(&wq->mu);
    s_wake(wq);
}

static void s_on_signal(void *ctx, int sig, const siginfo_t *si)
{
    (void)sig;
    (void)si;
    watch_queue *wq = ctx;
    pthread_mutex_lock(&wq->mu);
    wq->stop = true;
    pthread_mutex_unlock(&wq->mu);
    s_wake(wq);
}

/* Print what is queued. 0, or -1 when the output failed. */
static int s_print(watch_queue *wq, ctl_out *out)
{
    ul_wakeup_clear(wq->efd);
    for (;;) {
        ul_event e;
        pthread_mutex_lock(&wq->mu);
        bool have = wq->n > 0;
        if (have) {
            e = wq->ev[wq->first];
            wq->first = (wq->first + 1) % WATCH_QUEUE;
            wq->n--;
        }
        uint64_t dropped = wq->dropped;
        wq->dropped = 0;
        pthread_mutex_unlock(&wq->mu);
        if (dropped)
            ctl_diag("watch: %" PRIu64 " events dropped: the output did not keep up", dropped);
        if (!have)
            return 0;
        ctl_item it = {.kind = CTL_ITEM_EVENT, .event = &e};
        if (ctl_out_row(out, &it) != 0)
            return -1;
    }
}

static int s_subscribe(uvmlease *c, uint64_t *instance)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_WATCH;
    ul_reply *rep = ctl_call(c, "watch", &q, UVMLEASE_CALL_TIMEOUT_MS);
    if (!rep)
        return -1;
    *instance = rep->instance;
    ul_client_reply_free(rep);
    return 0;
}

/* The broker still answers, and is the one we subscribed to: a restarted
 * broker has no watchers, so subscribe to it again. */
static int s_check(uvmlease *c, uint64_t *instance)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_PING;
    ul_reply *rep = NULL;
    int rc = ul_client_enter(c);
    if (rc == 0) {
        rc = ul_client_call(c, &q, WATCH_DEAD_MS, NULL, &rep);
        ul_client_leave(c);
    }
    if (rc) {
        ctl_diag("watch: the broker stopped answering (%s)", uvmlease_strerror(rc));
        return -1;
    }
    uint64_t now_bi = rep->instance;
    ul_client_reply_free(rep);
    if (now_bi == *instance)
        return 0;
    ctl_diag("watch: the broker restarted; events in between were missed; watching again");
    return s_subscribe(c, instance);
}

static void s_unsubscribe(uvmlease *c)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_UNWATCH;
    ul_reply *rep = NULL;
    /* Best effort: the broker also forgets a watcher whose process died. */
    if (ul_client_enter(c) == 0) {
        ul_client_call(c, &q, 500, NULL, &rep);
        ul_client_leave(c);
    }
    ul_client_reply_free(rep);
}

/* Print events until a stop signal (exit 0), a broker that stopped
 * answering or an output that failed (exit 1). */
static int s_loop(watch_queue *wq, uvmlease *c, uint64_t instance, ctl_out *out)
{
    uint64_t next_check = ul_now_ms() + WATCH_PING_MS;
    for (;;) {
        uint64_t now = ul_now_ms();
        int timeout = next_check > now ? (int)(next_check - now) : 0;
        struct pollfd p = {.fd = wq->efd, .events = POLLIN};
        int n = poll(&p, 1, timeout);
        if (n < 0 && errno != EINTR) {
            ctl_diag("watch: poll: %s", strerror(errno));
            return CTL_EXIT_FAIL;
        }
        /* What arrived before the stop is still printed. */
        if (n > 0 && s_print(wq, out) != 0)
            return ctl_write_failed("watch");
        pthread_mutex_lock(&wq->mu);
        bool stop = wq->stop;
        pthread_mutex_unlock(&wq->mu);
        if (stop)
            return CTL_EXIT_OK;
        if (ul_now_ms() >= next_check) {
            if (s_check(c, &instance) != 0)
                return CTL_EXIT_FAIL;
            next_check = ul_now_ms() + WATCH_PING_MS;
        }
    }
}

/* Subscribed on c, print until told to stop, unsubscribe if stopped. */
static int s_watch(const ctl_opts *g, watch_queue *wq, uvmlease *c)
{
    ul_client_on_event(c, s_on_event, wq);
    uint64_t instance = 0;
    if (s_subscribe(c, &instance) != 0)
        return CTL_EXIT_FAIL;
    ctl_out out;
    ctl_out_init(&out, g->json ? &ctl_output_json : &ctl_output_text, true, stdout);
    int code = s_loop(wq, c, instance, &out);
    ctl_out_free(&out);
    ul_client_on_event(c, NULL, NULL);
    if (code == CTL_EXIT_OK)
        s_unsubscribe(c);
    return code;
}

int ctl_watch(const ctl_cmd *cmd, const ctl_opts *g, const ctl_args *a)
{
    (void)cmd;
    (void)a;
    static const int stop[] = {SIGINT, SIGTERM, SIGHUP};
    watch_queue wq;
    memset(&wq, 0, sizeof wq);
    pthread_mutex_init(&wq.mu, NULL);
    wq.efd = ul_wakeup_new();
    wq.ev = calloc(WATCH_QUEUE, sizeof *wq.ev);
    int code = CTL_EXIT_FAIL;
    uvmlease *c = NULL;
    if (wq.efd < 0 || !wq.ev) {
        ctl_diag("watch: %s", strerror(errno ? errno : ENOMEM));
        goto out;
    }
    /* Before connecting: the library's thread must inherit the mask. */
    if (ctl_signals_start(stop, sizeof stop / sizeof stop[0], s_on_signal, &wq, NULL) != 0) {
        ctl_diag("watch: cannot start the signal thread: %s", strerror(errno));
        goto out;
    }
    if (ctl_connect(g, "watch", &c) == 0)
        code = s_watch(g, &wq, c);
out:
    ctl_signals_stop();
    uvmlease_close(c);
    free(wq.ev);
    if (wq.efd >= 0)
        close(wq.efd);
    pthread_mutex_destroy(&wq.mu);
    return code;
}
