/*
 * ul_client.h — internals of libuvmlease shared by its files and by
 * uvmleasectl (which links the static library). Not installed.
 *
 * Threading model: each connection has one I/O thread that alone touches
 * the ZeroMQ socket. Callers describe a request as a ul_req record, link it
 * into the connection's list under the connection mutex and wake the I/O
 * thread through an eventfd; the I/O thread sends it, matches the broker's
 * messages to records by rid and signals the waiting caller's condition
 * variable. A record whose caller has gone (timeout, cancel, close) stays
 * with the connection as "background" work when its outcome still matters:
 * an abandoned acquire is cancelled (the broker removes the waiter, or
 * releases the lease if it was granted, even when the grant never arrives)
 * and waits for its grant (released at once) or failure, a release or
 * cancel is re-sent until answered.
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

/* A caller blocked in a call. Lives on the caller's stack. */
typedef struct ul_waitctx {
    pthread_cond_t cv; /* CLOCK_MONOTONIC; waited on with the connection mutex */
    bool cancel;       /* set by a cancel token, under the connection mutex */
    uvmlease *conn;
    ul_list tok_link; /* in uvmlease_cancel_token.waiters */
} ul_waitctx;

struct uvmlease_cancel_token {
    pthread_mutex_t mu; /* lock order: token, then connection */
    bool cancelled;
    ul_list waiters; /* ul_waitctx.tok_link */
};

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
    ul_waitctx *w;    /* the waiting caller, NULL for background work */
    bool done;        /* answered; rep set, unlinked, owned by the caller */
    int local_err;    /* done without an answer (the send failed) */
    ul_reply *rep;
} ul_req;

typedef void (*ul_client_event_fn)(void *ctx, const ul_reply *ev);

struct uvmlease {
    pthread_mutex_t mu;
    pthread_cond_t idle_cv; /* background work finished (close waits on it) */
    pid_t pid;              /* creator: handles do not cross fork() */
    char endpoint[256 + 8];
    void *zctx;
    void *sock; /* touched only by the I/O thread once it runs */
    int wakefd;
    pthread_t io;
    bool io_started;
    bool closing;        /* close() began: calls fail with ECLOSED */
    bool stop;           /* the I/O thread must exit; no more background work */
    unsigned refs;       /* the user's handle, lease handles, calls in progress */
    unsigned lease_refs; /* of refs, the lease handles */
    ul_list reqs;        /* ul_req.link, in send order */
    ul_list leases;      /* uvmlease_lease.link */
    bool have_bi;
    uint64_t bi;         /* broker instance id last seen */
    uint64_t last_rx_ms; /* last message from the broker, monotonic */
    uint64_t next_ping_ms;
    uint32_t broker_pid; /* from hello */
    char server[UL_MAX_CLIENT + 1];
    ul_client_event_fn on_event;
    void *event_ctx;
};

struct uvmlease_lease {
    ul_list link; /* in uvmlease.leases until released or the connection closes */
    uvmlease *conn;
    uint64_t id;
    uint64_t fence;
    bool linked;
    bool revoked;
    char uvm[UL_MAX_UVM + 1];
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

/* Reference counting: ul_client_enter() takes a reference for a call in
 * progress (0 or ECLOSED); unref drops one and frees a closed connection
 * when it was the last. close() waits (bounded) for calls in progress to
 * leave before it stops the I/O thread, so that what they still have to
 * tell the broker (a grant that came too late) is sent. */
int ul_client_enter(uvmlease *c);
void ul_client_unref(uvmlease *c);

/* Wait-context setup with a CLOCK_MONOTONIC condition variable. */
int ul_waitctx_init(ul_waitctx *w, uvmlease *c);
void ul_waitctx_destroy(ul_waitctx *w);

/* Start / stop the I/O thread and socket (conn.c). */
int ul_client_io_start(uvmlease *c);
void ul_client_shutdown(uvmlease *c);

/* Deliver unasked "event" messages (watch) to fn, called on the I/O
 * thread without locks held. fn must not wait on this connection (its
 * answers arrive on that very thread). */
void ul_client_on_event(uvmlease *c, ul_client_event_fn fn, void *ctx);

/* Tests: acquires with a waiting caller that the broker has queued; and
 * every request record not yet settled (calls and background work). */
unsigned ul_client_queued(uvmlease *c);
unsigned ul_client_outstanding(uvmlease *c);

#endif
