/*
 * broker_internal.h — state shared by the broker's files: broker.c (loop,
 * processes, sending), ops.c (client operations), admin.c (admin view,
 * forced release, watchers).
 */
#ifndef UL_BROKER_INTERNAL_H
#define UL_BROKER_INTERNAL_H

/* Leases plus waiters one client process may have at once: a runaway or
 * hostile peer cannot grow the tables without bound. */
#define UL_MAX_PER_PROCESS 1024
/* Leases plus waiters on the whole host, unless configured (max_leases):
 * bounds the broker's memory whatever many processes do, and sizes the
 * journal (1 KiB a lease, reserved at start). */
#define UL_MAX_ACTIVE_TOTAL 16384

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "lease_table.h"
#include "runtime.h"
#include "journal.h"
#include "persist.h"
#include "ul_log.h"
#include "ul_proto.h"
#include "uvmlease_broker.h"

/* A ZeroMQ routing id: where to send a reply or an unasked message. */
typedef struct broute {
    uint8_t len;
    uint8_t id[255];
} broute;

struct cpin; /* conn.c: the process pinned behind a connection */

/* The peer of the message being handled: the process pinned behind its
 * connection (conn.h), credentials from the kernel. */
typedef struct ul_peer {
    const broute *route;
    uint32_t uid, gid, pid;
    uint64_t start_time;
    struct cpin *pin;
} ul_peer;

/* A client process the broker watches through a pidfd. */
typedef struct bproc {
    uint32_t pid;
    uint32_t uid;
    uint64_t start_time;
    int pidfd;
    char comm[UL_MAX_COMM + 1];
    lt_owner *owner;
    bool kill_pending;  /* force-release --mode kill signalled it */
    uint32_t n_active;  /* leases + waiters it asked for (bounded per process) */
    ul_list idle_link;  /* on uvmlease_broker.idle while it has nothing */
    ul_list check_link; /* on uvmlease_broker.check: may have become idle */
    struct bproc *hnext;
} bproc;

struct ul_admin; /* admin.c */
struct ul_conns; /* conn.c */

struct uvmlease_broker {
    uvmlease_broker_config cfg; /* strings below are owned copies */
    char *socket_group;
    char *admin_group_name;
    bool have_admin_gid;
    gid_t admin_gid;
    ul_runtime rt;
    ul_logger log;
    uint64_t instance;
    uint64_t wall_base_ms; /* wall clock = wall_base_ms + monotonic */

    void *zctx;
    void *router;
    int stop_efd;
    int epfd; /* pidfds of client processes */
    pthread_t thread;

    lt_table *table;
    bproc **procs; /* hash by pid */
    uint32_t proc_cap;
    uint32_t n_procs;
    ul_list idle; /* processes with nothing held, least recently used first */
    uint32_t n_idle;
    ul_list check; /* processes a table event may have left idle */
    /* Leases whose grant could not be sent, released (reason
     * "undeliverable") once the table call that granted them returns. */
    uint64_t *lost;
    uint32_t n_lost, lost_cap;
    uint64_t undelivered[UL_MSG_EVENT + 1]; /* messages not sent, by ul_msg_kind */
    /* The administrator's reason while a force-release revoke runs: the
     * "revoked" notice carries it. */
    const char *revoke_reason;

    ul_buf out;        /* reused for every outgoing message */
    uint32_t max_leases; /* leases plus waiters on the host */
    ul_journal *journal; /* in the runtime directory */
    bool journal_failing; /* exclusive grants suspended until a write works */
    uint64_t journal_failing_since, journal_retry_at, journal_nag_at;
    uint64_t *child_pending; /* leases whose child record waits for a retry */
    size_t n_child_pending, child_pending_cap;

    uint64_t reject_tokens;
    uint64_t reject_refill_at;
    uint64_t reject_suppressed;
    uint64_t rejected_total;
    uint64_t rejected_by_code[128];

    struct ul_admin *admin;
    struct ul_conns *conns;
    uint64_t heartbeat_at; /* next cfg.heartbeat call */
};

/* broker.c */
bproc *ul_broker_proc_get(uvmlease_broker *b, uint32_t pid, uint32_t uid, int *err);
void ul_broker_proc_maybe_forget(uvmlease_broker *b, bproc *p);
/* Run maybe_forget on every process a table event touched. */
void ul_broker_proc_check_idle(uvmlease_broker *b);
/* A grant of l could not be sent (sent: the ul_broker_send result): log it
 * and queue the lease (safe inside a table event) for ul_broker_undo_lost. */
void ul_broker_grant_lost(uvmlease_broker *b, const lt_lease *l, int sent);
/* Release every queued lost grant with reason "undeliverable"; the next
 * waiters are granted, and their grants may be lost in turn. Call after
 * every table call that can grant. */
void ul_broker_undo_lost(uvmlease_broker *b);
/* Encode rep into b->out (0 or a status, logged). */
int ul_broker_encode(uvmlease_broker *b, ul_reply *rep);
/* Send encoded bytes to a route: 0, -1 if the peer is gone, -2 if not sent
 * (over its high-water mark). */
int ul_broker_send_raw(uvmlease_broker *b, const broute *to, const void *data, size_t len);
/* Encode and send: as ul_broker_send_raw, -2 also when encoding failed.
 * A message not sent is counted by kind (stats "undelivered_total"). */
int ul_broker_send(uvmlease_broker *b, const broute *to, ul_reply *rep);
void ul_broker_fill_holder(const uvmlease_broker *b, const lt_lease *l, uint64_t now, ul_holder *h,
                           bool with_phases);
void ul_broker_log_reject(uvmlease_broker *b, uint32_t pid, int code, const char *what);
uint64_t ul_broker_wall_of(const uvmlease_broker *b, uint64_t mono_ms);


/* heartbeat.c: call cfg.heartbeat if due; the next time it is (LT_NEVER
 * without one). */
uint64_t ul_heartbeat_tick(uvmlease_broker *b, uint64_t now);

/* ops.c */
void ul_broker_handle(uvmlease_broker *b, const ul_peer *peer, const void *data, size_t len);
void ul_broker_reply_error(uvmlease_broker *b, const ul_peer *peer, const ul_request *req, int code,
                           const char *detail);

/* admin.c: list/show/stats/watch/drain/force-release; hooks the loop calls */
void ul_broker_admin(uvmlease_broker *b, const ul_peer *peer, const ul_request *req);
void ul_broker_event_hook(uvmlease_broker *b, const lt_event *ev);
void ul_broker_proc_gone_hook(uvmlease_broker *b, bproc *p);
bool ul_broker_proc_pinned(uvmlease_broker *b, const bproc *p);
uint64_t ul_broker_timers(uvmlease_broker *b, uint64_t now);
void ul_broker_admin_free(uvmlease_broker *b);

#endif
