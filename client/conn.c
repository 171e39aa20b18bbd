/*
 * conn.c — a connection's socket and who drives it (a calling thread or the
 * I/O thread), its request records, the wait for an answer, and the
 * connection's life: creation, references, close (see ul_client.h for the
 * model). Leases are uvmlease.c's: what the broker says of them reaches it
 * through the on_revoked handler.
 */
#include "ul_client.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "ul_sys.h"

/* Messages handled per wake-up before pending sends get a turn. */
#define RECV_BATCH 64

/* s_own_wait_locked(): the caller gave the socket up and waits on. */
#define HANDED_OVER (-1)

/* ------------------------------------------------------------------ rids */

static _Atomic uint64_t s_next_rid;
static pthread_once_t s_rid_once = PTHREAD_ONCE_INIT;

static void s_rid_seed(void)
{
    /* The broker keys idempotent re-sends by (pid, start time, rid), so a
     * counter would do; a random start also keeps rids of different
     * processes apart in the broker's logs. Half the range leaves room. */
    atomic_store(&s_next_rid, ul_random64() >> 1);
}

uint64_t ul_client_rid(void)
{
    pthread_once(&s_rid_once, s_rid_seed);
    uint64_t r;
    do
        r = atomic_fetch_add(&s_next_rid, 1) + 1;
    while (r == 0);
    return r;
}

/* -------------------------------------------------------------- helpers */

static void s_wake(uvmlease *c)
{
    ul_wakeup_signal(c->wakefd);
}

static void s_abstime(uint64_t ms, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ms / 1000);
    ts->tv_nsec = (long)(ms % 1000) * 1000000L;
}

int ul_waitctx_init(ul_waitctx *w, uvmlease *c)
{
    memset(w, 0, sizeof *w);
    pthread_condattr_t a;
    if (pthread_condattr_init(&a) != 0)
        return UVMLEASE_ENOMEM;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&w->cv, &a);
    pthread_condattr_destroy(&a);
    if (rc != 0)
        return UVMLEASE_ENOMEM;
    w->conn = c;
    ul_list_init(&w->tok_link);
    return 0;
}

void ul_waitctx_destroy(ul_waitctx *w)
{
    pthread_cond_destroy(&w->cv);
}

void ul_waitctx_cancel(ul_waitctx *w)
{
    uvmlease *c = w->conn;
    pthread_mutex_lock(&c->mu);
    w->cancel = true;
    pthread_cond_signal(&w->cv);
    /* A caller driving the socket itself waits in zmq_poll(), not on cv. */
    if (c->owner_w == w)
        s_wake(c);
    pthread_mutex_unlock(&c->mu);
}

void ul_client_reply_free(ul_reply *rep)
{
    if (rep) {
        ul_reply_free(rep);
        free(rep);
    }
}

bool ul_client_usable(const uvmlease *c)
{
    return c && c->pid == getpid();
}

static void s_req_free(ul_req *r)
{
    ul_buf_free(&r->msg);
    ul_client_reply_free(r->rep);
    free(r);
}

/* A record for req, not yet linked. */
static int s_req_new(const ul_request *req, ul_req **out)
{
    ul_req *r = calloc(1, sizeof *r);
    if (!r)
        return UVMLEASE_ENOMEM;
    ul_list_init(&r->link);
    r->rid = req->rid;
    r->op = req->op;
    r->target = req->target_rid;
    r->lease = req->lease;
    r->need_send = true;
    int rc = ul_request_encode(req, &r->msg);
    if (rc) {
        s_req_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

static void s_unlink_free_locked(uvmlease *c, ul_req *r)
{
    ul_list_remove(&r->link);
    s_req_free(r);
    pthread_cond_broadcast(&c->idle_cv);
}

static ul_req *s_find_locked(uvmlease *c, uint64_t rid)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (r->rid == rid)
            return r;
    }
    return NULL;
}

/* ------------------------------------------------ who drives the socket */

/* The I/O thread must take the socket over: wake whoever has it (a caller
 * then gives it up) or the parked I/O thread. */
static void s_want_io_locked(uvmlease *c)
{
    c->io_wanted = true;
    if (c->owner == UL_SOCK_FREE)
        pthread_cond_signal(&c->io_cv);
    else
        s_wake(c);
}

/* An answer only the lazy may leave unread for now. */
static bool s_lazy_locked(const ul_req *r, uint64_t now)
{
    return r->lazy && !r->need_send && now < r->sent_ms + UL_CLIENT_LAZY_MS;
}

/*
 * Whether the I/O thread has to drive the socket: something must be sent,
 * somebody waits for an answer, a handler must be called. When only lazy
 * answers are due, *until is when the first of them stops being lazy
 * (0 when nothing is due at all).
 */
static bool s_io_needed_locked(uvmlease *c, uint64_t now, uint64_t *until)
{
    *until = 0;
    if (c->io_wanted || c->on_event || !ul_list_empty(&c->notes))
        return true;
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (!s_lazy_locked(r, now))
            return true;
        uint64_t due = r->sent_ms + UL_CLIENT_LAZY_MS;
        if (*until == 0 || due < *until)
            *until = due;
    }
    return false;
}

/* A caller may drive the socket itself: nobody else does or is about to,
 * and no handler needs the I/O thread. */
static bool s_may_own_locked(const uvmlease *c)
{
    return c->io_started && c->owner == UL_SOCK_FREE && !c->io_wanted && !c->on_event &&
           ul_list_empty(&c->notes);
}

/* Whether the parked I/O thread must look again: it is needed now, or a
 * lazy answer falls due before its timer (or it has none). Signalling a
 * thread that need not wake would cost a context switch per call. */
static void s_nudge_io_locked(uvmlease *c)
{
    uint64_t until;
    bool needed = s_io_needed_locked(c, ul_now_ms(), &until);
    if (needed || (until && c->io_parked && (c->io_park_until == 0 || c->io_park_until > until)))
        pthread_cond_signal(&c->io_cv);
}

/* The calling thread gives the socket up. */
static void s_disown_locked(uvmlease *c)
{
    c->owner = UL_SOCK_FREE;
    c->owner_w = NULL;
    s_nudge_io_locked(c);
    pthread_cond_broadcast(&c->idle_cv); /* shutdown waits for this */
}

/* Nothing sent after r may go out before it. */
static bool s_first_unsent_locked(uvmlease *c, const ul_req *r)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *x = ul_container_of(pos, ul_req, link);
        if (x == r)
            return true;
        if (x->need_send)
            return false;
    }
    return false;
}

/* ------------------------------------------------------- background work */

/* Queue work nobody waits for. Without an I/O thread it is pointless: the
 * broker ends a process's leases and waiters when the process exits. */
static void s_background_locked(uvmlease *c, ul_request *q)
{
    if (c->stop)
        return;
    q->version = UL_PROTO_VERSION;
    q->rid = ul_client_rid();
    ul_req *r;
    if (s_req_new(q, &r) != 0)
        return;
    ul_list_insert_tail(&c->reqs, &r->link);
    s_want_io_locked(c);
}

void ul_client_release_bg_locked(uvmlease *c, uint64_t lease)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_RELEASE;
    q.lease = lease;
    s_background_locked(c, &q);
}

static void s_cancel_bg_locked(uvmlease *c, uint64_t acquire_rid)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_CANCEL;
    q.target_rid = acquire_rid;
    s_background_locked(c, &q);
}

int ul_client_nowait_new(uint64_t lease, ul_req **out)
{
    ul_request q;
    memset(&q, 0, sizeof q);
    q.version = UL_PROTO_VERSION;
    q.op = UL_OP_RELEASE;
    q.rid = ul_client_rid();
    q.lease = lease;
    int rc = s_req_new(&q, out);
    if (!rc)
        (*out)->nowait = true;
    return rc;
}

void ul_client_nowait_free(ul_req *r)
{
    if (r)
        s_req_free(r);
}

void ul_client_nowait_send_locked(uvmlease *c, ul_req *r)
{
    ul_list_insert_tail(&c->reqs, &r->link);
    /* While the socket is free the mutex guards it: send from here, so the
     * release leaves before this thread's next request and nobody wakes. */
    if (s_may_own_locked(c) && s_first_unsent_locked(c, r) &&
        zmq_send(c->sock, r->msg.data, r->msg.len, ZMQ_DONTWAIT) >= 0) {
        r->need_send = false;
        r->sent = true;
        r->sent_ms = ul_now_ms();
        r->lazy = true;
        s_nudge_io_locked(c); /* a parked I/O thread may need a timer */
        return;
    }
    /* Busy socket, full pipe or no broker: the owner sends it in order. */
    s_want_io_locked(c);
}

/* ----------------------------------------------- notes for the I/O thread */

typedef struct ul_note {
    ul_list link;
    ul_reply *ev;   /* an event, or NULL: a failed nowait release */
    uint64_t lease; /* the release's lease and the broker's status */
    int status;
} ul_note;

static void s_note_locked(uvmlease *c, ul_reply *ev, uint64_t lease, int status)
{
    ul_note *n = calloc(1, sizeof *n);
    if (!n) {
        ul_client_reply_free(ev);
        return; /* a note is information; losing it under ENOMEM is allowed */
    }
    n->ev = ev;
    n->lease = lease;
    n->status = status;
    ul_list_insert_tail(&c->notes, &n->link);
    s_want_io_locked(c);
}

/* On the I/O thread, which owns the socket: hand each note to its handler
 * without the lock, so that it may take its own locks and block on its
 * output; in_event lets the setters of handlers wait for it. */
static void s_deliver_notes_locked(uvmlease *c)
{
    while (!ul_list_empty(&c->notes) && !c->stop) {
        ul_note *n = ul_container_of(c->notes.next, ul_note, link);
        ul_list_remove(&n->link);
        ul_client_event_fn ev_fn = n->ev ? c->on_event : NULL;
        ul_client_release_error_fn rel_fn = n->ev ? NULL : c->on_release_error;
        void *ctx = n->ev ? c->event_ctx : c->release_error_ctx;
        c->in_event = ev_fn || rel_fn;
        pthread_mutex_unlock(&c->mu);
        if (ev_fn)
            ev_fn(ctx, n->ev);
        else if (rel_fn)
            rel_fn(ctx, n->lease, n->status);
        ul_client_reply_free(n->ev);
        free(n);
        pthread_mutex_lock(&c->mu);
        c->in_event = false;
        pthread_cond_broadcast(&c->idle_cv);
    }
}

/* ------------------------------------------------ answers from the broker */

static void s_finish_locked(uvmlease *c, ul_req *r, ul_reply *rep, int local_err)
{
    (void)c;
    ul_list_remove(&r->link);
    r->rep = rep;
    r->local_err = local_err;
    r->done = true;
    pthread_cond_signal(&r->w->cv);
}

/* A final outcome of an acquire: a refusal, a grant, or a failure after
 * "queued". Returns rep when it was not handed on. */
static ul_reply *s_on_outcome_locked(uvmlease *c, ul_req *r, ul_reply *rep)
{
    bool granted = rep->kind == UL_MSG_GRANT || (rep->kind == UL_MSG_REPLY && rep->err == 0);
    if (r->w) {
        s_finish_locked(c, r, rep, 0);
        return NULL;
    }
    /* The caller gave up: a grant that arrives now must not linger. */
    if (granted && rep->lease)
        ul_client_release_bg_locked(c, rep->lease);
    s_unlink_free_locked(c, r);
    return rep;
}

static ul_reply *s_on_reply_locked(uvmlease *c, ul_req *r, ul_reply *rep)
{
    if (r->op == UL_OP_ACQUIRE) {
        if (rep->err == 0 && rep->queued) {
            r->queued = true;
            return rep;
        }
        return s_on_outcome_locked(c, r, rep);
    }
    if (r->op == UL_OP_CANCEL) {
        /* Whatever the answer, the abandoned acquire is settled: "ok"
         * removed the waiter, or released its grant (the reply names the
         * lease) even if that grant never reached us (lost in a broker
         * crash); "not-waiting" comes after its failure, or from an older
         * broker after its grant (one connection keeps the broker's order;
         * the grant was released on arrival). */
        ul_req *a = s_find_locked(c, r->target);
        if (a && a->op == UL_OP_ACQUIRE && !a->w)
            s_unlink_free_locked(c, a);
    }
    /* A release sent again after a restart may have been done before it. */
    if (r->op == UL_OP_RELEASE && r->resent && rep->err == UVMLEASE_ENOLEASE)
        rep->err = 0;
    if (r->w) {
        s_finish_locked(c, r, rep, 0);
        return NULL;
    }
    if (r->nowait && rep->err != 0)
        s_note_locked(c, NULL, r->lease, (int)rep->err);
    s_unlink_free_locked(c, r);
    return rep;
}

/* A new broker instance: send it everything still outstanding. Waiting
 * acquires keep their rid, so a broker that restored them answers
 * idempotently (PROTOCOL.md section 8). */
static void s_resend_locked(uvmlease *c)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (r->op == UL_OP_ACQUIRE && !r->w)
            continue; /* abandoned: its cancel goes out instead */
        if (r->sent) {
            r->need_send = true;
            r->resent = true;
        }
        r->queued = false;
    }
}

/* Returns rep if it is still the caller's to free (or to pass on). */
static ul_reply *s_dispatch_locked(uvmlease *c, ul_reply *rep)
{
    c->last_rx_ms = ul_now_ms();
    bool restarted = c->have_bi && rep->instance != c->bi;
    c->have_bi = true;
    c->bi = rep->instance;

    ul_req *r;
    switch (rep->kind) {
    case UL_MSG_REPLY:
        r = s_find_locked(c, rep->rid);
        /* An unreadable request is answered without an op. */
        if (r && (rep->op == r->op || rep->op == UL_OP_NONE))
            rep = s_on_reply_locked(c, r, rep);
        break;
    case UL_MSG_GRANT:
    case UL_MSG_ACQUIRE_FAILED:
        r = s_find_locked(c, rep->rid);
        if (r && r->op == UL_OP_ACQUIRE)
            rep = s_on_outcome_locked(c, r, rep);
        break;
    case UL_MSG_REVOKED:
        if (c->on_revoked)
            c->on_revoked(c, rep->lease);
        break;
    case UL_MSG_EVENT:
        /* Events that arrive without a handler are dropped. */
        if (c->on_event) {
            s_note_locked(c, rep, 0, 0);
            rep = NULL;
        }
        break;
    default:
        break;
    }
    if (restarted)
        s_resend_locked(c);
    return rep;
}

/* --------------------------------------------------------------- sending */

/* Send what is due, in order. Returns true when the socket would block
 * (no broker connected yet, or the pipe is full). */
static bool s_flush_locked(uvmlease *c, uint64_t now)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (!r->need_send)
            continue;
        if (zmq_send(c->sock, r->msg.data, r->msg.len, ZMQ_DONTWAIT) < 0) {
            int e = zmq_errno();
            if (e == EAGAIN || e == EINTR)
                return true;
            /* Not a transient condition: retrying would spin. */
            if (r->w)
                s_finish_locked(c, r, NULL, UVMLEASE_ESYSTEM);
            else if (r->nowait)
                s_note_locked(c, NULL, r->lease, UVMLEASE_ESYSTEM);
            if (!r->w)
                s_unlink_free_locked(c, r);
            continue;
        }
        r->need_send = false;
        r->sent = true;
        r->sent_ms = now;
    }
    return false;
}

/* Background releases and cancels without an answer for
 * UL_CLIENT_RESEND_MS are sent again (the same rid). Returns the ms until
 * the next one falls due, -1 for none. */
static int s_resend_stale_locked(uvmlease *c, uint64_t now)
{
    int next = -1;
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (r->w || r->op == UL_OP_ACQUIRE || !r->sent || r->need_send)
            continue;
        uint64_t due = r->sent_ms + UL_CLIENT_RESEND_MS;
        if (now >= due) {
            r->need_send = true;
            r->resent = true; /* a release done already answers no-such-lease */
            continue;
        }
        if (next < 0 || due - now < (uint64_t)next)
            next = (int)(due - now);
    }
    return next;
}

/* Ping while anything is outstanding, so a restarted broker is noticed
 * (its answer carries a new instance id). Returns the poll timeout. */
static int s_ping_locked(uvmlease *c, uint64_t now, bool blocked)
{
    if (ul_list_empty(&c->reqs)) {
        c->next_ping_ms = 0;
        return -1;
    }
    if (c->next_ping_ms == 0)
        c->next_ping_ms = now + UL_CLIENT_PING_MS;
    if (now >= c->next_ping_ms) {
        if (!blocked) {
            ul_request q;
            memset(&q, 0, sizeof q);
            q.version = UL_PROTO_VERSION;
            q.op = UL_OP_PING;
            q.rid = ul_client_rid();
            ul_buf b = {0};
            if (ul_request_encode(&q, &b) == 0)
                zmq_send(c->sock, b.data, b.len, ZMQ_DONTWAIT);
            ul_buf_free(&b);
        }
        c->next_ping_ms = now + UL_CLIENT_PING_MS;
    }
    return (int)(c->next_ping_ms - now);
}

/* ------------------------------------------------------------- receiving */

static void s_receive(uvmlease *c)
{
    for (int i = 0; i < RECV_BATCH; i++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        bool more = zmq_msg_more(&m);
        ul_reply *rep = more ? NULL : calloc(1, sizeof *rep);
        int rc = rep ? ul_reply_decode(zmq_msg_data(&m), zmq_msg_size(&m), rep) : -1;
        zmq_msg_close(&m);
        /* The protocol is one frame per message: drop the rest of a
         * multi-frame one along with it. */
        while (more) {
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT) < 0)
                more = false;
            else
                more = zmq_msg_more(&m);
            zmq_msg_close(&m);
        }
        if (rc != 0) {
            /* Undecodable: nothing in it can be trusted, not even a rid. */
            free(rep);
            continue;
        }

        pthread_mutex_lock(&c->mu);
        rep = s_dispatch_locked(c, rep);
        pthread_mutex_unlock(&c->mu);
        ul_client_reply_free(rep);
    }
}

/* ------------------------------------------------- a turn with the socket */

/*
 * What the owner of the socket does, c->mu held on entry and on return:
 * send what is due, wait (at most limit_ms, -1: no limit of its own) for a
 * message, a wake-up or the next ping, and take in what arrived.
 */
static void s_turn_locked(uvmlease *c, int limit_ms)
{
    uint64_t now = ul_now_ms();
    int stale = s_resend_stale_locked(c, now);
    bool blocked = s_flush_locked(c, now);
    int timeout = s_ping_locked(c, now, blocked);
    if (stale >= 0 && (timeout < 0 || stale < timeout))
        timeout = stale;
    if (limit_ms >= 0 && (timeout < 0 || limit_ms < timeout))
        timeout = limit_ms;
    pthread_mutex_unlock(&c->mu);

    zmq_pollitem_t items[2] = {
        {.socket = c->sock, .events = ZMQ_POLLIN | (blocked ? ZMQ_POLLOUT : 0)},
        {.fd = c->wakefd, .events = ZMQ_POLLIN},
    };
    int n = zmq_poll(items, 2, timeout);
    if (n > 0 && (items[1].revents & ZMQ_POLLIN))
        ul_wakeup_clear(c->wakefd);
    if (n > 0 && (items[0].revents & ZMQ_POLLIN))
        s_receive(c);
    pthread_mutex_lock(&c->mu);
}

/* ------------------------------------------------------------ the thread */

/* Wait on io_cv until signalled, or until `until` (a lazy answer's time). */
static void s_park_locked(uvmlease *c, uint64_t until)
{
    c->io_parked = true;
    c->io_park_until = until;
    if (until) {
        struct timespec ts;
        s_abstime(until, &ts);
        pthread_cond_timedwait(&c->io_cv, &c->mu, &ts);
    } else {
        pthread_cond_wait(&c->io_cv, &c->mu);
    }
    c->io_parked = false;
    c->io_park_until = 0;
}

static void *s_io_main(void *arg)
{
    uvmlease *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stop) {
        if (c->owner == UL_SOCK_CALLER) {
            /* It gives the socket up when we want it (io_wanted). */
            s_park_locked(c, 0);
            continue;
        }
        uint64_t until;
        if (!s_io_needed_locked(c, ul_now_ms(), &until)) {
            c->owner = UL_SOCK_FREE;
            s_park_locked(c, until);
            continue;
        }
        c->owner = UL_SOCK_IO;
        c->io_wanted = false;
        s_deliver_notes_locked(c);
        /* The notes may have been all there was to do. */
        if (c->stop || !s_io_needed_locked(c, ul_now_ms(), &until))
            continue;
        c->io_turns++;
        s_turn_locked(c, -1);
    }
    c->owner = UL_SOCK_FREE;
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

int ul_client_io_start(uvmlease *c)
{
    c->wakefd = ul_wakeup_new();
    if (c->wakefd < 0)
        return UVMLEASE_ESYSTEM;

    /* libzmq's threads and ours must never take the application's
     * signals: start them all with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = UVMLEASE_ESYSTEM;
    c->zctx = zmq_ctx_new();
    if (c->zctx)
        c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (c->sock) {
        int linger = 0;    /* close() waits for answers itself, bounded */
        int immediate = 1; /* no queueing into a broker that is not there */
        int64_t maxmsg = UL_MAX_REPLY;
        if (zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) == 0 &&
            zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate) == 0 &&
            zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) == 0 &&
            zmq_connect(c->sock, c->endpoint) == 0) {
            if (pthread_create(&c->io, NULL, s_io_main, c) == 0) {
                c->io_started = true;
                rc = 0;
            }
        }
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = saved;
    return rc;
}

/* ------------------------------------------- the connection, references */

static int s_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    if (pthread_condattr_init(&a) != 0)
        return -1;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

int ul_client_new(const char *endpoint, ul_client_revoked_fn on_revoked, uvmlease **out)
{
    uvmlease *c = calloc(1, sizeof *c);
    if (!c)
        return UVMLEASE_ENOMEM;
    if (s_cond_init(&c->idle_cv) != 0)
        goto fail;
    if (s_cond_init(&c->io_cv) != 0) {
        pthread_cond_destroy(&c->idle_cv);
        goto fail;
    }
    pthread_mutex_init(&c->mu, NULL);
    ul_list_init(&c->reqs);
    ul_list_init(&c->notes);
    c->pid = getpid();
    c->refs = 1;
    c->wakefd = -1;
    c->owner = UL_SOCK_FREE;
    c->on_revoked = on_revoked;
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    *out = c;
    return 0;
fail:
    free(c);
    return UVMLEASE_ENOMEM;
}

int ul_client_enter(uvmlease *c)
{
    if (!ul_client_usable(c))
        return UVMLEASE_ECLOSED;
    pthread_mutex_lock(&c->mu);
    int rc = c->closing ? UVMLEASE_ECLOSED : 0;
    if (!rc) {
        c->refs++;
        c->calls++;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int ul_client_hold_locked(uvmlease *c)
{
    if (c->closing)
        return UVMLEASE_ECLOSED;
    c->refs++;
    return 0;
}

static void s_notes_free_locked(uvmlease *c)
{
    while (!ul_list_empty(&c->notes)) {
        ul_note *n = ul_container_of(c->notes.next, ul_note, link);
        ul_list_remove(&n->link);
        ul_client_reply_free(n->ev);
        free(n);
    }
}

static void s_conn_free(uvmlease *c)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        ul_list_remove(&r->link);
        s_req_free(r);
    }
    s_notes_free_locked(c);
    pthread_cond_destroy(&c->io_cv);
    pthread_cond_destroy(&c->idle_cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void ul_client_unref(uvmlease *c)
{
    pthread_mutex_lock(&c->mu);
    bool last = --c->refs == 0;
    pthread_cond_broadcast(&c->idle_cv);
    pthread_mutex_unlock(&c->mu);
    if (last)
        s_conn_free(c);
}

void ul_client_leave(uvmlease *c)
{
    pthread_mutex_lock(&c->mu);
    c->calls--;
    pthread_mutex_unlock(&c->mu);
    ul_client_unref(c); /* wakes a close() waiting for calls to leave */
}

/* ------------------------------------------------------- calls, waiting */

/* The caller stops waiting for r. Keep it as background work when its
 * outcome still matters to the broker's state. */
static void s_abandon_locked(uvmlease *c, ul_req *r)
{
    r->w = NULL;
    bool keep = false;
    if (!c->stop) {
        if (r->op == UL_OP_ACQUIRE && r->sent) {
            /* The broker may have queued or even granted it already: the
             * cancel removes the waiter or releases the grant, also one
             * that never reaches us. */
            s_cancel_bg_locked(c, r->rid);
            keep = true;
        } else if (r->op == UL_OP_RELEASE || r->op == UL_OP_CANCEL) {
            keep = true;
            s_want_io_locked(c); /* it is the I/O thread's to finish now */
        }
    }
    if (!keep)
        s_unlink_free_locked(c, r);
}

static int s_deadline_status(const uvmlease *c, const ul_req *r)
{
    if (r->op == UL_OP_ACQUIRE && r->sent && c->last_rx_ms >= r->sent_ms)
        return UVMLEASE_ETIMEDOUT;
    return UVMLEASE_ENOBROKER;
}

/* Why the caller of r stops waiting: 0 (it may wait on), or a status. */
static int s_wait_over_locked(uvmlease *c, const ul_req *r, const ul_waitctx *w, uint64_t deadline,
                              uint64_t now)
{
    if (r->done)
        return 0;
    if (c->closing)
        return UVMLEASE_ECLOSED;
    if (w->cancel)
        return UVMLEASE_ECANCELLED;
    if (deadline && now >= deadline)
        return s_deadline_status(c, r);
    return 0;
}

/*
 * The fast path: the calling thread drives the socket until r is answered
 * or the caller stops waiting (a status), or until the I/O thread is
 * wanted (HANDED_OVER: wait on as any other caller).
 */
static int s_own_wait_locked(uvmlease *c, ul_req *r, ul_waitctx *w, uint64_t deadline)
{
    c->owner = UL_SOCK_CALLER;
    c->owner_w = w;
    int rc;
    for (;;) {
        uint64_t now = deadline ? ul_now_ms() : 0;
        rc = s_wait_over_locked(c, r, w, deadline, now);
        if (rc || r->done)
            break;
        if (c->io_wanted) {
            rc = HANDED_OVER;
            break;
        }
        /* The turn's own limit (the next ping) is far shorter than INT_MAX. */
        uint64_t left = deadline ? deadline - now : 0;
        s_turn_locked(c, !deadline ? -1 : left > INT32_MAX ? INT32_MAX : (int)left);
    }
    s_disown_locked(c);
    return rc;
}

/* The other path: the I/O thread drives the socket; wait to be told. */
static int s_cv_wait_locked(uvmlease *c, ul_req *r, ul_waitctx *w, uint64_t deadline)
{
    for (;;) {
        uint64_t now = deadline ? ul_now_ms() : 0;
        int rc = s_wait_over_locked(c, r, w, deadline, now);
        if (rc || r->done)
            return rc;
        if (deadline) {
            struct timespec ts;
            s_abstime(deadline, &ts);
            pthread_cond_timedwait(&w->cv, &c->mu, &ts);
        } else {
            pthread_cond_wait(&w->cv, &c->mu);
        }
    }
}

int ul_client_call(uvmlease *c, ul_request *req, int64_t wait_ms, ul_waitctx *w, ul_reply **out)
{
    *out = NULL;
    ul_waitctx own;
    bool own_w = !w;
    if (own_w) {
        if (ul_waitctx_init(&own, c) != 0)
            return UVMLEASE_ENOMEM;
        w = &own;
    }
    req->version = UL_PROTO_VERSION;
    req->rid = ul_client_rid();
    ul_req *r = NULL;
    int rc = s_req_new(req, &r);
    if (rc)
        goto out;
    r->w = w;
    uint64_t deadline = wait_ms >= 0 ? ul_now_ms() + (uint64_t)wait_ms : 0;

    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        s_req_free(r);
        rc = UVMLEASE_ECLOSED;
        goto out;
    }
    ul_list_insert_tail(&c->reqs, &r->link);
    rc = HANDED_OVER;
    if (s_may_own_locked(c))
        rc = s_own_wait_locked(c, r, w, deadline);
    else
        s_want_io_locked(c);
    if (rc == HANDED_OVER)
        rc = s_cv_wait_locked(c, r, w, deadline);
    if (r->done) {
        rc = r->local_err;
        if (!rc) {
            *out = r->rep;
            r->rep = NULL;
        }
        s_req_free(r);
    } else {
        s_abandon_locked(c, r);
    }
    pthread_mutex_unlock(&c->mu);
out:
    if (own_w)
        ul_waitctx_destroy(&own);
    return rc;
}

/* ----------------------------------------------------------------- close */

/* Calls still in progress, or work nobody waits for. */
static bool s_busy_locked(uvmlease *c)
{
    if (c->calls > 0)
        return true;
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        if (!ul_container_of(pos, ul_req, link)->w)
            return true;
    }
    return false;
}

void ul_client_begin_close_locked(uvmlease *c)
{
    c->closing = true;
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (r->w)
            pthread_cond_signal(&r->w->cv);
    }
    /* A caller driving the socket stops; lazy answers are fetched now. */
    if (c->io_started)
        s_want_io_locked(c);
}

void ul_client_shutdown(uvmlease *c)
{
    pthread_mutex_lock(&c->mu);
    ul_client_begin_close_locked(c);
    if (c->io_started) {
        /* Leave nothing behind on the broker (releases, cancels of acquires
         * just given up), but never hang on a broker that is gone. */
        uint64_t deadline = ul_now_ms() + UVMLEASE_CLOSE_TIMEOUT_MS;
        while (s_busy_locked(c)) {
            if (ul_now_ms() >= deadline)
                break;
            struct timespec ts;
            s_abstime(deadline, &ts);
            pthread_cond_timedwait(&c->idle_cv, &c->mu, &ts);
        }
        /* A caller still driving the socket sees closing at once. */
        while (c->owner == UL_SOCK_CALLER)
            pthread_cond_wait(&c->idle_cv, &c->mu);
    }
    c->stop = true;
    pthread_cond_signal(&c->io_cv);
    pthread_mutex_unlock(&c->mu);

    if (c->io_started) {
        s_wake(c);
        pthread_join(c->io, NULL);
        c->io_started = false;
    }
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    c->sock = c->zctx = NULL;
    if (c->wakefd >= 0)
        close(c->wakefd);
    c->wakefd = -1;

    /* Background work dies with the thread; callers still waking up free
     * their own records. */
    pthread_mutex_lock(&c->mu);
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (!r->w) {
            ul_list_remove(&r->link);
            s_req_free(r);
        }
    }
    s_notes_free_locked(c);
    pthread_mutex_unlock(&c->mu);
}

/* ---------------------------------------------------------------- events */

/* Handlers run on the I/O thread: from within one, waiting for it would
 * never end. */
static void s_handler_quiet_locked(uvmlease *c)
{
    bool on_io = c->io_started && pthread_equal(pthread_self(), c->io);
    while (c->in_event && !on_io)
        pthread_cond_wait(&c->idle_cv, &c->mu);
}

void ul_client_on_event(uvmlease *c, ul_client_event_fn fn, void *ctx)
{
    pthread_mutex_lock(&c->mu);
    c->on_event = fn;
    c->event_ctx = ctx;
    /* With a handler the I/O thread must be there to receive events; a
     * caller driving the socket hands it over. Without, it may park. */
    if (c->io_started) {
        if (fn)
            s_want_io_locked(c);
        else if (c->owner == UL_SOCK_IO)
            s_wake(c);
    }
    s_handler_quiet_locked(c);
    pthread_mutex_unlock(&c->mu);
}

void ul_client_on_release_error(uvmlease *c, ul_client_release_error_fn fn, void *ctx)
{
    pthread_mutex_lock(&c->mu);
    c->on_release_error = fn;
    c->release_error_ctx = ctx;
    s_handler_quiet_locked(c);
    pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------ test hooks */

unsigned ul_client_queued(uvmlease *c)
{
    unsigned n = 0;
    pthread_mutex_lock(&c->mu);
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        ul_req *r = ul_container_of(pos, ul_req, link);
        if (r->op == UL_OP_ACQUIRE && r->queued && r->w)
            n++;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

unsigned ul_client_outstanding(uvmlease *c)
{
    unsigned n = 0;
    pthread_mutex_lock(&c->mu);
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->reqs)
    {
        n++;
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

unsigned long ul_client_io_turns(uvmlease *c)
{
    pthread_mutex_lock(&c->mu);
    unsigned long n = c->io_turns;
    pthread_mutex_unlock(&c->mu);
    return n;
}
