/*
 * broker_internal.h — what every broker file shares: the broker's state
 * (struct uvmlease_broker), a route, the peer of a request and a tracked
 * process. Functions live in each file's own header: procs.h, send.h,
 * persist.h, conn.h, watch.h, kills.h (services), events.h (table events),
 * ops.h and admin.h (operations); broker.c is the loop above them.
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
#include "ul_log.h"
#include "ul_proto.h"
#include "uvmlease_broker.h"

/* A ZeroMQ routing id: where to send a reply or an unasked message. Heap
 * copies (a lease's or waiter's user pointer) are allocated only as long
 * as len: read no further than id[len - 1], never copy the struct whole. */
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

struct ul_admin;
struct ul_watch;
struct ul_kills;
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
    int epfd;   /* pidfds of client processes */
    int loopfd; /* what the loop waits on (broker.c) */
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

    ul_buf out;           /* reused for every outgoing message */
    uint32_t max_leases;  /* leases plus waiters on the host */
    ul_journal *journal;  /* in the runtime directory */
    bool journal_failing; /* exclusive grants suspended until a write works */
    uint64_t journal_failing_since, journal_retry_at, journal_nag_at;
    uint64_t *child_pending; /* leases whose child record waits for a retry */
    size_t n_child_pending, child_pending_cap;

    ul_log_rate reject_rate; /* rejected-input log lines */
    uint64_t rejected_total;
    uint64_t rejected_by_code[128];

    struct ul_admin *admin; /* admin.c */
    struct ul_watch *watch; /* watch.c */
    struct ul_kills *kills; /* kills.c */
    struct ul_conns *conns;
    uint64_t heartbeat_at; /* next cfg.heartbeat call */
};

#endif
