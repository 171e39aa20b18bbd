/*
 * ul_client.h — internals of libuvmlease shared by its files and by
 * uvmleasectl (which links the static library). Not installed.
 *
 * Threading model: a ZeroMQ socket may be used by one thread at a time, so
 * each connection has one "owner" of its socket at any moment (c->owner):
 * nobody, the I/O thread, or one calling thread. Every request is a
 * ul_req record in the connection's list, in send order; whoever owns the
 * socket sends what is due in that order, matches the broker's messages to
 * records by rid and signals the waiting callers' condition variables.
 *
 * The fast path: a call on a connection whose socket nobody drives (no
 * other call in progress, no background work, no event handler) makes the
 * calling thread the owner: it sends its request and waits in zmq_poll()
 * itself, which saves the two thread hand-offs per round trip of going
 * through the I/O thread. It gives the socket up as soon as anything else
 * needs it (io_wanted: another call, background work, an event handler, a
 * note to deliver), and then waits on its condition variable like any
 * other caller while the I/O thread drives the socket. The I/O thread
 * parks (touching neither the socket nor its descriptors) while nothing
 * needs it; messages the broker sends meanwhile (a revocation) are read by
 * the next owner, before the answer to its own request, as the broker sent
 * them. While the socket is free, c->mu alone guards it: a thread holding
 * the mutex may send without becoming the owner (release_nowait does).
 *
 * A record whose caller has gone (timeout, cancel, close) stays with the
 * connection as "background" work when its outcome still matters: an
 * abandoned acquire is cancelled (the broker removes the waiter, or
 * releases the lease if it was granted, even when the grant never arrives)
 * and waits for its grant (released at once) or failure, a release or
 * cancel is re-sent every UL_CLIENT_RESEND_MS until answered (the same
 * rid: an answer the broker could not deliver is not lost for good). A
 * release nobody waits for that its
 * caller sent itself (release_nowait) is "lazy": its answer is left for
 * the next owner to read, and the I/O thread fetches it only when no call
 * has within UL_CLIENT_LAZY_MS.
 *
 * Handlers (events, failed nowait releases) run only on the I/O thread:
 * whoever receives such a message queues it as a note for the I/O thread.
 */
#ifndef UL_CLIENT_H
#define UL_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ul_list.h"
#include "ul_proto.h"
#include "uvmlease.h"

/* While requests are outstanding, ping this often to notice a restarted
 * broker (a new instance id), to which they are then sent again. */
#define UL_CLIENT_PING_MS 1000

/* A release or cancel nobody waits for any more (its caller gave up, or
 * release_nowait) is sent again when no answer came within this: an
 * answer the broker could not deliver is not lost for good. Both are
 * idempotent at the broker. */
#define UL_CLIENT_RESEND_MS 1000

/* How long the answer to a release_nowait is left for the next call to
 * read before the I/O thread wakes to read it. Long enough that a caller
 * doing cycles back to back never wakes the I/O thread; short enough that
 * a failure is reported promptly. */
#define UL_CLIENT_LAZY_MS 5

/*
 * A caller blocked in a call. Lives on the caller's stack; conn.c owns it,
 * except tok_link, which belongs to the cancel token it is registered with
 * (uvmlease.c).
 */
typedef struct ul_waitctx {
    pthread_cond_t cv; /* CLOCK_MONOTONIC; waited on with the connection mutex */
    bool cancel;       /* set by ul_waitctx_cancel(), under the connection mutex */
    uvmlease *conn;
    ul_list tok_link; /* in uvmlease_cancel_token.waiters */
} ul_waitctx;

typedef struct ul_req {
    ul_list link; /* in uvmlease.reqs while the connection owns it */
    uint64_t rid;
    ul_op op;
    uint64_t target;  /* cancel: the acquire's rid */
    ul_buf msg;       /* encoded, kept for re-sends */
    bool need_send;   /* the I/O thread must (re)send it */
    bool sent;        /* sent at least once */
    uint64_t sent_ms; /* last send, monotonic */
    bool queued;      /* acquire: the broker said "queued" */
    bool resent;      /* sent again to a new broker instance */
    uint64_t lease;   /* release: the lease */
    bool nowait;      /* release: its caller did not wait; a failure is reported */
    bool lazy;        /* sent by its caller: the answer may wait for the next owner */
    ul_waitctx *w;    /* the waiting caller, NULL for background work */
    bool done;        /* answered; rep set, unlinked, owned by the caller */
    int local_err;    /* done without an answer (the send failed) */
    ul_reply *rep;
} ul_req;

/* An event message (watch), on the I/O thread, without locks held. */
typedef void (*ul_client_event_fn)(void *ctx, const ul_reply *ev);
/* A release_nowait the broker refused: the same, with the lease and status. */
typedef void (*ul_client_release_error_fn)(void *ctx, uint64_t lease, int status);

/* Who uses the socket (see the model above). */
typedef enum ul_sock_owner { UL_SOCK_FREE, UL_SOCK_IO, UL_SOCK_CALLER } ul_sock_owner;
/* The broker revoked a lease: called on the I/O thread with c->mu held, in
 * the order of the broker's messages. Must not block. */
typedef void (*ul_client_revoked_fn)(uvmlease *c, uint64_t lease);

/*
 * One connection. Each field has one owner: conn.c (the transport, the
 * request records, the references and the handlers) or uvmlease.c (what
 * the public API keeps: the leases handed out, the broker's hello). The
 * other file reads or changes them only through the functions below. c->mu
 * guards both parts, so that a lease cannot be created on a connection
 * that is closing.
 */
struct uvmlease {
    /* ---- conn.c */
    pthread_mutex_t mu;
    pthread_cond_t idle_cv; /* background work or a call finished */
    pthread_cond_t io_cv;   /* the I/O thread parks here */
    pid_t pid;              /* creator: handles do not cross fork() */
    char endpoint[256 + 8];
    void *zctx;
    void *sock; /* used by its owner only; while free, by a holder of mu */
    int wakefd;
    pthread_t io;
    bool io_started;
    ul_sock_owner owner;
    ul_waitctx *owner_w;    /* the owning caller's, woken through wakefd */
    bool io_wanted;         /* the I/O thread must take the socket over */
    bool io_parked;         /* the I/O thread waits on io_cv ... */
    uint64_t io_park_until; /* ... until then (monotonic ms; 0: until signalled) */
    bool closing;           /* close() began: calls fail with ECLOSED */
    bool stop;              /* the I/O thread must exit; no more background work */
    unsigned refs;          /* the user's handle, lease handles, calls in progress */
    unsigned calls;         /* of refs, the calls in progress */
    ul_list reqs;           /* ul_req.link, in send order */
    bool have_bi;
    uint64_t bi;         /* broker instance id last seen */
    uint64_t last_rx_ms; /* last message from the broker, monotonic */
    uint64_t next_ping_ms;
    ul_client_revoked_fn on_revoked;
    ul_client_event_fn on_event;
    void *event_ctx;
    ul_client_release_error_fn on_release_error;
    void *release_error_ctx;
    ul_list notes;          /* for the I/O thread to hand to a handler, in order */
    bool in_event;          /* a handler is running */
    unsigned long io_turns; /* the I/O thread's turns with the socket (test hook) */

    /* ---- uvmlease.c */
    ul_list leases;      /* uvmlease_lease.link */
    uint32_t broker_pid; /* from hello */
    char server[UL_MAX_CLIENT + 1];
};

/* A fresh rid: one process-wide counter with a random start, never 0. */
uint64_t ul_client_rid(void);

/* Resolve an endpoint as uvmlease_connect() does into out (ipc://PATH).
 * 0 or UVMLEASE_EBADENDPOINT. */
int ul_client_resolve_endpoint(const char *arg, char *out, size_t outsz);

/* Whether the handle may be used by this process (not inherited by fork). */
bool ul_client_usable(const uvmlease *c);

/*
 * Send req (rid and version are filled in) and wait for its outcome: a
 * reply, or for an acquire the grant / failure that follows "queued".
 * wait_ms < 0 waits forever. w may be NULL (an internal one is used) or a
 * caller's context registered with a cancel token.
 * Returns 0 with *out (free with ul_client_reply_free) or a status:
 * ECANCELLED, ECLOSED, ENOMEM, an encode error, ENOBROKER at the deadline
 * (ETIMEDOUT for an acquire when the broker had answered something since the
 * request was sent). The broker's own error is in (*out)->err.
 */
int ul_client_call(uvmlease *c, ul_request *req, int64_t wait_ms, ul_waitctx *w, ul_reply **out);
void ul_client_reply_free(ul_reply *rep);

/* Queue a release nobody waits for (a grant that came too late, or close).
 * Caller holds c->mu. */
void ul_client_release_bg_locked(uvmlease *c, uint64_t lease);

/*
 * A release whose caller does not wait (uvmlease_release_nowait), in two
 * steps so that the lease owner can decide under c->mu without allocating
 * there. new: the record, or ENOMEM. send_locked (c->mu held, c not
 * closing) queues it behind every earlier request and, when the socket is
 * free, sends it at once from the calling thread. Its answer is read by
 * whoever owns the socket next; a failure goes to the release-error
 * handler. free: a record that was not sent (NULL is fine).
 */
int ul_client_nowait_new(uint64_t lease, ul_req **out);
void ul_client_nowait_send_locked(uvmlease *c, ul_req *r);
void ul_client_nowait_free(ul_req *r);

/* Who is told of a failed nowait release: fn(ctx, lease, status) on the
 * I/O thread, without locks held; the same rules as ul_client_on_event. */
void ul_client_on_release_error(uvmlease *c, ul_client_release_error_fn fn, void *ctx);

/* ---- a connection's life (conn.c) */

/* A connection to endpoint (already resolved) with no I/O thread yet, one
 * reference (the user's handle). on_revoked is told of every "revoked"
 * message. 0 or ENOMEM. */
int ul_client_new(const char *endpoint, ul_client_revoked_fn on_revoked, uvmlease **out);

/* Start the I/O thread and socket. 0 or ESYSTEM (errno set). */
int ul_client_io_start(uvmlease *c);

/* Close, in two steps. begin_close (c->mu held) makes every call in
 * progress and every later one fail with ECLOSED, and ul_client_hold_locked
 * refuse; the lease owner then queues what its leases still need, before
 * the lock is dropped. shutdown waits (bounded) for calls in progress and
 * background work, then stops the I/O thread; calling it alone is fine. */
void ul_client_begin_close_locked(uvmlease *c);
void ul_client_shutdown(uvmlease *c);

/*
 * References. enter takes one for a call in progress (0 or ECLOSED) and
 * leave gives it back; hold_locked takes one for a lease handle (0, or
 * ECLOSED once closing), given back with unref. The last unref frees a
 * closed connection. close() waits (bounded) for calls in progress to
 * leave before it stops the I/O thread, so that what they still have to
 * tell the broker (a grant that came too late) is sent.
 */
int ul_client_enter(uvmlease *c);
void ul_client_leave(uvmlease *c);
int ul_client_hold_locked(uvmlease *c);
void ul_client_unref(uvmlease *c);

/* Wait-context setup with a CLOCK_MONOTONIC condition variable. cancel
 * makes the call waiting on w return ECANCELLED (any thread; takes the
 * connection mutex). */
int ul_waitctx_init(ul_waitctx *w, uvmlease *c);
void ul_waitctx_destroy(ul_waitctx *w);
void ul_waitctx_cancel(ul_waitctx *w);

/* ---- events: how `uvmleasectl watch` receives what it subscribed to */

/*
 * Hand every "event" message (the stream a UL_OP_WATCH request subscribes
 * the connection to) to fn(ctx, ev), in the broker's order, on the I/O
 * thread and without locks held; ev is valid during the call only. fn must
 * not wait on this connection: its answers arrive on that very thread.
 * Replaces any previous handler; NULL stops delivery. On return the old
 * handler is not running and will not be called again (unless this is
 * called from within it), so its ctx may be freed. Events that arrive
 * without a handler are dropped.
 */
void ul_client_on_event(uvmlease *c, ul_client_event_fn fn, void *ctx);

/* ---- test hooks */

/* Acquires with a waiting caller that the broker has queued; and every
 * request record not yet settled (calls and background work). */
unsigned ul_client_queued(uvmlease *c);
unsigned ul_client_outstanding(uvmlease *c);
/* How many turns with the socket the I/O thread has taken: calls on an
 * idle connection take none. */
unsigned long ul_client_io_turns(uvmlease *c);

#endif
