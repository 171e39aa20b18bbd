/*
 * uvmlease.h — libuvmlease, the client of the uvmlease broker.
 *
 * A container shim takes an exclusive bring-up lease on a confidential
 * utility VM before the host-side steps of a container create (block CIM
 * mount, scratch disk hot-add, layer combine, guest create) and releases
 * it after the guest create, so that no two bring-ups of one UVM overlap.
 *
 *     uvmlease *c;
 *     uvmlease_lease *l;
 *     uvmlease_holder who;
 *     if (uvmlease_connect(NULL, &c) != UVMLEASE_OK) ...
 *     int rc = uvmlease_acquire(c, uvm_id, UVMLEASE_CONFIDENTIAL, container_id,
 *                               30000, NULL, &who, &l);
 *     if (rc != UVMLEASE_OK) ... uvmlease_strerror(rc), who.pid, who.label ...
 *     uvmlease_phase(l, "cim-mount");
 *     ...
 *     uvmlease_release(l);
 *     uvmlease_close(c);
 *
 * Every function returns a uvmlease_status (uvmlease_errors.h) unless its
 * comment says otherwise. Strings passed in are copied; nothing returned
 * needs freeing except where stated.
 *
 * Threads: a connection handle may be shared by any number of threads. A
 * call made while nothing else is in flight on the handle does its round
 * trip on the calling thread; while calls overlap, the handle's background
 * thread drives its socket, so a thread blocked in uvmlease_acquire() never
 * delays another thread's phase report or release. Every acquire is its
 * own waiter: two threads of one process asking for the same confidential
 * UVM queue behind each other.
 *
 * fork(): handles do not survive fork(). In the child every call on an
 * inherited handle returns UVMLEASE_ECLOSED and uvmlease_close() does
 * nothing; the child connects anew if it needs the broker. Leases belong to
 * the process that acquired them and end when it exits.
 *
 * Signals: the library's thread blocks every signal, so signals are always
 * delivered to the application's threads. No function is
 * async-signal-safe.
 */
#ifndef UVMLEASE_H
#define UVMLEASE_H

#include <stdint.h>
#include <sys/types.h>

#include "uvmlease_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define UVMLEASE_API __attribute__((visibility("default")))
#else
#define UVMLEASE_API
#endif

/* A connection to the broker. Opaque. */
typedef struct uvmlease uvmlease;
/* A granted lease. Opaque; owned by the caller until uvmlease_release(). */
typedef struct uvmlease_lease uvmlease_lease;
/* Cancels blocked acquires from another thread. Opaque. */
typedef struct uvmlease_cancel_token uvmlease_cancel_token;

/* Timeouts for uvmlease_acquire(). Any other value >= 0 is milliseconds. */
#define UVMLEASE_TRY     0
#define UVMLEASE_FOREVER (-1)

/* Flags for uvmlease_acquire(). */
#define UVMLEASE_CONFIDENTIAL 0x1u /* exclusive: one holder at a time, FIFO */

/* Bounds on how long calls block when the broker does not answer. */
#define UVMLEASE_CONNECT_TIMEOUT_MS 2000 /* uvmlease_connect() */
#define UVMLEASE_CALL_TIMEOUT_MS    5000 /* phase, release, ping, watch-child */
#define UVMLEASE_ACQUIRE_GRACE_MS   1000 /* timed acquire: added to its timeout */
#define UVMLEASE_CLOSE_TIMEOUT_MS   1000 /* uvmlease_close() flushing releases */

/* Where uvmlease_connect(NULL, ...) looks, after $UVMLEASE_ENDPOINT. */
#define UVMLEASE_SYSTEM_ENDPOINT "ipc:///run/uvmlease/broker.sock"

/* String sizes, in bytes without the terminating NUL. */
#define UVMLEASE_UVM_MAX     256
#define UVMLEASE_LABEL_MAX   256
#define UVMLEASE_PHASE_MAX   64
#define UVMLEASE_COMM_MAX    16
#define UVMLEASE_VERSION_MAX 64

/*
 * Who holds a lease that could not be obtained. Filled on UVMLEASE_EBUSY
 * and UVMLEASE_ETIMEDOUT when the broker named a holder; otherwise pid is 0
 * and the strings are empty. The strings are text the holder chose
 * (validated UTF-8 without control characters, but otherwise arbitrary).
 */
typedef struct uvmlease_holder {
    pid_t pid;                          /* the holding process */
    char comm[UVMLEASE_COMM_MAX + 1];   /* its command name */
    char label[UVMLEASE_LABEL_MAX + 1]; /* its label, e.g. a container ID */
    char phase[UVMLEASE_PHASE_MAX + 1]; /* its last reported phase, or "" */
    uint64_t held_ms;                   /* how long it has held the lease */
    uint64_t phase_ms;                  /* how long it has been in that phase */
} uvmlease_holder;

/* What uvmlease_ping() learns about the broker. */
typedef struct uvmlease_ping_info {
    pid_t pid;                              /* the broker's process */
    uint64_t instance;                      /* changes when the broker restarts */
    char version[UVMLEASE_VERSION_MAX + 1]; /* the broker's software version */
    uint64_t rtt_us;                        /* round trip of this ping */
    int journal;                            /* 1: the broker records leases; 0: its journal
                                               fails and exclusive grants are suspended;
                                               -1: the broker does not say */
} uvmlease_ping_info;

/*
 * Connect to the broker.
 * endpoint: "ipc://PATH"; NULL selects $UVMLEASE_ENDPOINT if set and not
 * empty, else UVMLEASE_SYSTEM_ENDPOINT if its socket exists, else
 * ipc://$XDG_RUNTIME_DIR/uvmlease/broker.sock.
 * On success *out is a new handle the caller owns (uvmlease_close()).
 * Errors: UVMLEASE_EBADENDPOINT (not ipc://PATH, or the path is too long for
 * a Unix socket), UVMLEASE_ENOBROKER (no socket at the path, nobody
 * listening, or no answer within UVMLEASE_CONNECT_TIMEOUT_MS),
 * UVMLEASE_ESYSTEM (errno set, e.g. EACCES: no permission on the socket),
 * UVMLEASE_EPEER (the broker refused this process), UVMLEASE_EVERSION,
 * UVMLEASE_ENOMEM, UVMLEASE_EINVAL (out is NULL). *out is NULL on error.
 * Blocks for one round trip; at most UVMLEASE_CONNECT_TIMEOUT_MS when a
 * socket exists but its broker does not answer. Thread-safe.
 */
UVMLEASE_API int uvmlease_connect(const char *endpoint, uvmlease **out);

/*
 * Close a connection and free it (once every lease handle is released too).
 * Leases still held through it are released on the broker (as closing a
 * file drops its locks); calls blocked on other threads return
 * UVMLEASE_ECLOSED, and a grant that reaches them now is released. Lease
 * handles the caller still has stay valid objects: pass them to
 * uvmlease_release(), which then only frees them. Blocks until those
 * calls have returned and the broker has answered, at most
 * UVMLEASE_CLOSE_TIMEOUT_MS when it does not. Call it once; no call on c
 * may start once close has started. Safe on NULL.
 */
UVMLEASE_API void uvmlease_close(uvmlease *c);

/*
 * Acquire the bring-up lease of a UVM.
 * uvm_id: 1-256 bytes of printable ASCII without spaces.
 * flags: 0 (standard UVM: granted at once, shared, but recorded) or
 *        UVMLEASE_CONFIDENTIAL (exclusive, waiters served in FIFO order).
 * label: who is asking, e.g. the container ID; NULL or "" for none; at most
 *        UVMLEASE_LABEL_MAX bytes of UTF-8 without control characters.
 * timeout_ms: UVMLEASE_TRY (fail at once if held), a number of
 *        milliseconds, or UVMLEASE_FOREVER.
 * cancel: NULL, or a token another thread may cancel (see below).
 * holder: NULL, or filled on UVMLEASE_EBUSY / UVMLEASE_ETIMEDOUT with who
 *        is in the way (always zeroed first).
 * On success *lease_out is a new lease the caller owns and must pass to
 * uvmlease_release(); on error it is NULL.
 * Errors: UVMLEASE_EBUSY (try on a held lease), UVMLEASE_ETIMEDOUT,
 * UVMLEASE_ECANCELLED, UVMLEASE_EDRAINING (an administrator is draining the
 * UVM), UVMLEASE_ECLASS (the UVM is leased with the other class),
 * UVMLEASE_EBADUVM, UVMLEASE_EBADTEXT, UVMLEASE_EINVAL (NULL arguments,
 * unknown flags, timeout < -1), UVMLEASE_ENOBROKER (nothing heard from the
 * broker before the deadline), UVMLEASE_ECLOSED, UVMLEASE_ENOMEM, or a
 * broker condition (UVMLEASE_ERESOURCE, UVMLEASE_EPEER, ...).
 * Blocks until the lease is granted or refused. The broker enforces the
 * timeout; the call returns at the latest UVMLEASE_ACQUIRE_GRACE_MS after
 * it if the broker stops answering. A forever acquire keeps waiting while
 * the broker restarts (the request is sent again to the new instance).
 * A grant that arrives after the call gave up (timeout, cancel, close) is
 * released by the library at once; the caller sees only its error.
 * Thread-safe; each call is its own waiter.
 */
UVMLEASE_API int uvmlease_acquire(uvmlease *c, const char *uvm_id, unsigned flags,
                                  const char *label, int64_t timeout_ms,
                                  uvmlease_cancel_token *cancel, uvmlease_holder *holder,
                                  uvmlease_lease **lease_out);

/*
 * The lease's fence token: a number that never goes backwards for a UVM,
 * across broker restarts too. 0 for NULL. Does not block. Thread-safe.
 */
UVMLEASE_API uint64_t uvmlease_lease_fence(const uvmlease_lease *lease);

/* The lease's ID as the broker and `uvmleasectl` show it. 0 for NULL.
 * Does not block. Thread-safe. */
UVMLEASE_API uint64_t uvmlease_lease_id(const uvmlease_lease *lease);

/*
 * Report the step the holder is in ("cim-mount", "scratch-attach",
 * "combine-layers", "guest-create", ...: at most UVMLEASE_PHASE_MAX bytes of
 * UTF-8 without control characters). The broker timestamps it for admins.
 * Errors: UVMLEASE_EBADTEXT, UVMLEASE_EINVAL, UVMLEASE_EREVOKED (an
 * administrator took the lease away), UVMLEASE_ENOLEASE, UVMLEASE_ENOBROKER
 * (no answer within UVMLEASE_CALL_TIMEOUT_MS), UVMLEASE_ECLOSED.
 * Blocks for one round trip. Thread-safe (not concurrently with
 * uvmlease_release() of the same lease).
 */
UVMLEASE_API int uvmlease_phase(uvmlease_lease *lease, const char *phase);

/*
 * Keep the lease until `child` has exited too, even if this process dies
 * first (what `uvmleasectl run` does for its command). child must be a
 * direct child of the caller. Errors: UVMLEASE_ENOTCHILD, UVMLEASE_EBADVALUE
 * (the lease already has a watched child), UVMLEASE_ENOTIMPL (the broker
 * cannot do it), UVMLEASE_EREVOKED, UVMLEASE_ENOLEASE, UVMLEASE_ENOBROKER,
 * UVMLEASE_ECLOSED, UVMLEASE_EINVAL. Blocks for one round trip.
 * Thread-safe (not concurrently with uvmlease_release() of the same lease).
 */
UVMLEASE_API int uvmlease_watch_child(uvmlease_lease *lease, pid_t child);

/*
 * Release a lease and free the handle, whatever the outcome: lease must not
 * be used afterwards (except in a forked child, where nothing is touched
 * and UVMLEASE_ECLOSED is returned). Safe on NULL (UVMLEASE_EINVAL).
 * Returns UVMLEASE_OK, UVMLEASE_EREVOKED (an administrator had already
 * taken it away), UVMLEASE_ECLOSED (the connection was closed, which
 * released it), UVMLEASE_ENOLEASE, or UVMLEASE_ENOBROKER (no answer within
 * UVMLEASE_CALL_TIMEOUT_MS: the library keeps sending the release, also to a
 * restarted broker, until the connection is closed; the broker releases it
 * anyway when this process exits).
 * Blocks for one round trip. Thread-safe with respect to other leases.
 */
UVMLEASE_API int uvmlease_release(uvmlease_lease *lease);

/* uvmlease_release_nowait() and uvmlease_on_release_error() exist. */
#define UVMLEASE_HAVE_RELEASE_NOWAIT 1

/*
 * Release a lease without waiting for the broker's answer, and free the
 * handle whatever the outcome (lease must not be used afterwards, except in
 * a forked child, where nothing is touched and UVMLEASE_ECLOSED is
 * returned). Returns once the release is handed to the transport: sent by
 * the calling thread when nothing else is in flight on the connection, or
 * else queued behind what is. Every later request of this connection is
 * sent after it, and the broker handles one connection's requests in
 * order, so an acquire made afterwards on the same connection never
 * overtakes it (it is not refused as "busy" by this very lease). The
 * library keeps the release until the broker answers it, sends it again to
 * a restarted broker (the same request id; "no such lease" then counts as
 * done), and uvmlease_close() waits for it as for a release it queued
 * itself (at most UVMLEASE_CLOSE_TIMEOUT_MS).
 * What the caller gives up: the answer. An answer other than success
 * (UVMLEASE_EREVOKED: an administrator had already taken the lease away;
 * UVMLEASE_ENOTOWNER, UVMLEASE_ENOLEASE, ...) reaches only the handler set
 * with uvmlease_on_release_error(), later and on another thread; without a
 * handler it is dropped. A broker that does not answer is not reported
 * (the library sends it again every second, as it does a
 * uvmlease_release() that returned UVMLEASE_ENOBROKER; the broker releases
 * the lease anyway when this process exits). Call uvmlease_close() before
 * exiting: a process that exits first may die before the broker has read
 * the release, which then counts as an abnormal release (holder-exit).
 * Returns UVMLEASE_OK (sent or queued), UVMLEASE_EREVOKED (the library
 * already knew the lease was revoked: nothing is sent), UVMLEASE_ECLOSED
 * (the connection was closed, which released it), UVMLEASE_EINVAL (NULL);
 * if the request cannot be built (UVMLEASE_ENOMEM) it falls back to
 * uvmlease_release() and returns what that returns.
 * Does not block on the broker. Thread-safe with respect to other leases.
 */
UVMLEASE_API int uvmlease_release_nowait(uvmlease_lease *lease);

/* Told of a uvmlease_release_nowait() the broker refused: the lease's ID
 * (uvmlease_lease_id()) and the status. */
typedef void (*uvmlease_release_error_fn)(void *ctx, uint64_t lease_id, int status);

/*
 * Set (or with NULL, clear) the handler of failed uvmlease_release_nowait()
 * calls on c. It runs on the library's thread, one call at a time, in the
 * order of the broker's answers, without library locks held; it must not
 * block for long nor call functions on c (their answers would wait for that
 * very thread); other handles are fine. When this returns, the previous
 * handler is not running and will not be called again, so its ctx may be
 * freed. Failures that arrive without a handler are dropped.
 * Returns UVMLEASE_OK, UVMLEASE_EINVAL (c is NULL) or UVMLEASE_ECLOSED.
 * Thread-safe; not from within the handler itself.
 */
UVMLEASE_API int uvmlease_on_release_error(uvmlease *c, uvmlease_release_error_fn fn, void *ctx);

/*
 * Ask the broker who it is and time the round trip. info may be NULL.
 * Errors: UVMLEASE_ENOBROKER (no answer within UVMLEASE_CALL_TIMEOUT_MS),
 * UVMLEASE_ECLOSED, UVMLEASE_EINVAL. Blocks for one round trip. Thread-safe.
 */
UVMLEASE_API int uvmlease_ping(uvmlease *c, uvmlease_ping_info *info);

/*
 * Cancel tokens. An acquire given a token returns UVMLEASE_ECANCELLED as
 * soon as the token is cancelled (at once if it already is: cancelling is
 * permanent, so a cancel that lands just before the acquire starts is not
 * lost). One token may serve several acquires, on several threads and
 * connections; uvmlease_cancel() ends all of them.
 * uvmlease_cancel_token_new(): *out is a new token the caller owns;
 * UVMLEASE_ENOMEM or UVMLEASE_EINVAL on error. Does not block.
 * uvmlease_cancel(): thread-safe, does not block on the broker (the broker
 * is told in the background), not async-signal-safe. Safe on NULL.
 * uvmlease_cancel_token_free(): only once no acquire is using the token.
 * Safe on NULL.
 */
UVMLEASE_API int uvmlease_cancel_token_new(uvmlease_cancel_token **out);
UVMLEASE_API void uvmlease_cancel(uvmlease_cancel_token *token);
UVMLEASE_API void uvmlease_cancel_token_free(uvmlease_cancel_token *token);

/* A status's message ("the UVM's lease is held") and short name ("busy").
 * Static strings; "unknown" for unknown codes. Thread-safe. */
UVMLEASE_API const char *uvmlease_strerror(int status);
UVMLEASE_API const char *uvmlease_status_name(int status);

/* The library's version, e.g. "0.1.0". Static string. Thread-safe. */
UVMLEASE_API const char *uvmlease_version(void);

#ifdef __cplusplus
}
#endif

#endif
