/*
 * lease_table.h — the broker's lease tables: a pure module.
 *
 * No I/O and no clock: every call that depends on time takes `now`
 * (monotonic milliseconds), and lt_tick() returns the next deadline. The
 * table tells the broker what happened through one callback (lt_config
 * .on_event), called synchronously from inside the table call that caused
 * it. The callback must not call back into the table.
 *
 * Objects:
 *   lt_owner  — one client process (pid + start time). Leases and waiters
 *               belong to an owner; lt_owner_exit() ends them all.
 *   lt_uvm    — one UVM entry: class, holders, FIFO waiters, drain flag,
 *               quarantine, last release. Freed when idle and not drained.
 *   lt_lease  — a granted lease. Exclusive (one per UVM) or shared.
 *   lt_waiter — a queued acquire.
 * Structs are visible so the broker can read them for replies and views;
 * only lease_table.c writes them (except the `user` pointers).
 *
 * Complexity: UVM lookup, grant, release and removal of any waiter are O(1)
 * amortised (hash tables, intrusive lists, a deadline heap with lazy
 * deletion). Queuing a waiter with a deadline is O(log n). With a host-wide
 * cap, choosing the next UVM is O(log n).
 *
 * Time: `now` must not go backwards; a smaller value than one seen before is
 * read as the largest seen so far, so deadlines, grant order and the
 * overdue/quarantine lists stay ordered.
 *
 * Errors common to every call returning a status: UVMLEASE_EINVAL for a NULL
 * table, owner or argument struct. Input the broker has already validated is
 * still bounds-checked (a UVM id of 0 or more than LT_MAX_UVM bytes:
 * EBADUVM; a label or phase too long: EBADTEXT), so a caller bug can never
 * overflow a field. Nothing is changed when a call returns an error.
 */
#ifndef UL_LEASE_TABLE_H
#define UL_LEASE_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lt_hash.h"
#include "ul_list.h"

#define LT_NEVER UINT64_MAX

/* Sizes of the table's text fields (bytes, without the NUL). The wire
 * protocol's limits are the same numbers; the broker checks they agree. */
#define LT_MAX_UVM    256
#define LT_MAX_LABEL  256
#define LT_MAX_PHASE  64
#define LT_MAX_COMM   16
#define LT_PHASES_MAX 8 /* phase history kept per lease, newest last */

/* One reported phase and when (monotonic ms). */
typedef struct lt_phase_rec {
    char phase[LT_MAX_PHASE + 1]; /* "" when the holder cleared its phase */
    uint64_t at_ms;
} lt_phase_rec;

typedef struct lt_table lt_table;
typedef struct lt_uvm lt_uvm;
typedef struct lt_owner lt_owner;
typedef struct lt_lease lt_lease;
typedef struct lt_waiter lt_waiter;

typedef enum lt_serialize {
    LT_SERIALIZE_CONFIDENTIAL = 0, /* default: confidential exclusive, standard shared */
    LT_SERIALIZE_ALL,              /* every UVM exclusive */
    LT_SERIALIZE_NONE,             /* every UVM shared (recorded only) */
} lt_serialize;

typedef enum lt_reason {
    LT_R_RELEASED = 0, /* "released": the holder released it */
    LT_R_HOLDER_EXIT,  /* "holder-exit": the holder process died */
    LT_R_REVOKED,      /* "revoked": forced release, mode revoke */
    LT_R_KILLED,       /* "killed": forced release, mode kill, death proven */
    /* "undeliverable": the grant could not be sent, so its holder never
     * learnt of it. Not abnormal (no quarantine): the holder never started
     * work on the UVM. */
    LT_R_UNDELIVERABLE,
    LT_R_COUNT_
} lt_reason;

const char *lt_reason_name(lt_reason r);
/* Abnormal releases start the quarantine. */
bool lt_reason_abnormal(lt_reason r);

typedef enum lt_event_type {
    LT_EV_GRANTED = 1, /* lease: the new lease; waiter: the waiter it came from
                          (NULL if granted inside lt_acquire), freed after the
                          callback returns */
    LT_EV_FAILED,      /* waiter: removed without a grant; err: ETIMEDOUT,
                          ECANCELLED or EDRAINING (waiter freed after the
                          callback). Not emitted for waiters of an exiting
                          owner. holder: who was in the way, may be NULL */
    LT_EV_RELEASED,    /* lease: being released (freed after the callback);
                          reason */
    LT_EV_OVERDUE,     /* lease: held longer than hold_warn_ms (once) */
    LT_EV_PHASE,       /* lease: reported a new phase */
    LT_EV_QUEUED,      /* waiter: enqueued */
    LT_EV_DRAIN,       /* uvm: drained */
    LT_EV_UNDRAIN,     /* uvm: undrained */
} lt_event_type;

typedef struct lt_event {
    lt_event_type type;
    lt_uvm *uvm;
    lt_lease *lease;
    lt_waiter *waiter;
    const lt_lease *holder; /* FAILED, QUEUED: the current holder, if any */
    int err;
    lt_reason reason;
    uint64_t now;
} lt_event;

typedef struct lt_config {
    lt_serialize serialize;
    uint32_t max_active;     /* host-wide cap on exclusive leases; 0 = none */
    uint64_t quarantine_ms;  /* after an abnormal release; 0 = none */
    uint64_t hold_warn_ms;   /* overdue after this; 0 = never */
    uint64_t fence_floor;    /* every fence handed out is > this */
    uint64_t lease_id_floor; /* every lease id handed out is > this */
    void (*on_event)(void *ctx, const lt_event *ev);
    /* Called before a grant takes effect, with the lease filled in (id,
     * fence, uvm, owner, rid, label, exclusive) but not yet linked; must not
     * call back into the table. 0 grants it. Otherwise an exclusive lease
     * is not granted (its waiter stays queued; an immediate acquire waits,
     * or a try gets EJOURNAL) and exclusive grants are suspended until
     * lt_resume(); a shared lease is granted anyway. NULL: always 0. */
    int (*persist)(void *ctx, const lt_lease *l);
    void *ctx; /* for on_event and persist */
    /* SipHash key for the hash tables. UVM ids are chosen by peers, so set
     * it from a random source to keep chains short against crafted ids; all
     * zero selects a fixed built-in key (predictable, fine for tests). */
    uint64_t hash_key[2];
    /* Optional allocator: alloc(alloc_ctx, p, n) resizes p to n bytes (p
     * NULL: allocate; n 0: free p, return NULL). NULL selects realloc/free.
     * Lets tests inject allocation failures. */
    void *(*alloc)(void *alloc_ctx, void *p, size_t n);
    void *alloc_ctx;
} lt_config;

/* Identity of a client process, from the kernel (never from messages). */
typedef struct lt_ident {
    uint32_t pid;
    uint32_t uid;
    uint64_t start_time; /* /proc/<pid>/stat field 22: guards against pid reuse */
    char comm[LT_MAX_COMM + 1];
} lt_ident;

struct lt_owner {
    lt_ident id;
    void *user;          /* broker's per-process data (pidfd, ...) */
    ul_list leases;      /* lt_lease.owner_link */
    ul_list waiters;     /* lt_waiter.owner_link */
    ul_list anchored;    /* lt_lease.child_link: leases this process anchors as a watched child */
    uint64_t revoked[8]; /* ring of recently revoked/killed lease ids */
    unsigned revoked_next;
    /* private */
    lt_hnode hnode; /* by (pid, start_time) */
};

struct lt_lease {
    uint64_t id;
    uint64_t fence;
    uint64_t rid; /* the acquire's request id (idempotent re-send) */
    lt_uvm *uvm;
    lt_owner *owner; /* NULL once the owner exited while a child anchors it */
    lt_owner *child; /* watched child process (uvmleasectl run), or NULL */
    uint32_t pid;    /* the owner's pid; kept after the owner exits */
    bool exclusive;
    bool overdue;
    char *label; /* owned, exactly as long as it is (never NULL) */
    char phase[LT_MAX_PHASE + 1];
    uint64_t granted_at;  /* monotonic ms */
    uint64_t phase_at;    /* monotonic ms */
    uint64_t waited_ms;   /* time spent queued before the grant */
    uint32_t n_phases;    /* history, oldest first; newest kept when full */
    uint32_t cap_phases;  /* entries allocated (grown up to LT_PHASES_MAX) */
    lt_phase_rec *phases; /* NULL until the first phase is reported */
    void *user;           /* broker's per-lease data */
    /* private */
    ul_list uvm_link;
    ul_list owner_link;
    ul_list child_link;
    ul_list warn_link; /* not yet overdue, grant order */
    lt_hnode hnode;    /* by id */
    lt_hnode rnode;    /* by (owner, rid), while it has an owner */
};

struct lt_waiter {
    uint64_t rid;
    lt_uvm *uvm;
    lt_owner *owner;
    bool confidential;
    const char *label;    /* the spare lease's label (owned there) */
    uint64_t enqueued_at; /* monotonic ms */
    int64_t timeout_ms;   /* as requested: -1 forever */
    uint64_t deadline;    /* LT_NEVER for forever */
    uint64_t seq;         /* global arrival order */
    void *user;           /* broker's per-waiter data (reply route) */
    /* private */
    ul_list uvm_link;
    ul_list owner_link;
    uint32_t heap_idx; /* slot in the deadline heap, UINT32_MAX if none */
    lt_hnode rnode;    /* by (owner, rid) */
    lt_lease *spare;   /* allocated at enqueue, so a grant never allocates */
};

typedef struct lt_last_release {
    bool valid;
    lt_reason reason;
    uint32_t pid;
    uint64_t at; /* monotonic ms */
} lt_last_release;

struct lt_uvm {
    bool class_set;
    bool confidential;
    bool draining;
    uint64_t quarantine_until; /* monotonic ms; 0 = none. The class is kept
                                  while quarantined, as if the dead holder's
                                  lease lingered. */
    uint32_t n_holders;
    uint32_t n_waiters;
    ul_list holders; /* lt_lease.uvm_link, grant order */
    ul_list waiters; /* lt_waiter.uvm_link, FIFO */
    lt_last_release last;
    /* private */
    lt_hnode hnode;     /* by id; hash cached for resizing */
    ul_list all_link;   /* every UVM, creation order */
    ul_list quar_link;  /* quarantined, expiry order */
    uint32_t ready_idx; /* slot in the cap-ready heap, UINT32_MAX if none */
    char id[];          /* the UVM id, allocated with the entry */
};

/* Counters kept by the table. */
typedef struct lt_stats {
    uint64_t grants;
    uint64_t releases[LT_R_COUNT_];
    uint64_t timeouts;
    uint64_t cancels;
    uint64_t drained_waiters;
    uint64_t exited_waiters; /* removed because their process exited */
    uint64_t overdue;
    uint64_t busy_refusals;
    uint64_t holders;          /* current */
    uint64_t waiters;          /* current */
    uint64_t uvms;             /* current entries */
    uint64_t owners;           /* current */
    uint64_t persist_failures; /* exclusive grants held back: persist failed */
} lt_stats;

/* Create a table; NULL on out of memory, or when a floor is >= 2^63 (a
 * corrupt state file: fences must never wrap). cfg is copied. */
lt_table *lt_new(const lt_config *cfg);
/* Free everything (no events are emitted); sets *t = NULL. */
void lt_free(lt_table **t);
const lt_config *lt_config_get(const lt_table *t);
const lt_stats *lt_stats_get(const lt_table *t);
/* Last fence / lease id handed out (for persistence). */
uint64_t lt_last_fence(const lt_table *t);
uint64_t lt_last_lease_id(const lt_table *t);

/* Find an owner by pid and start time, or NULL. */
lt_owner *lt_owner_find(lt_table *t, uint32_t pid, uint64_t start_time);
/* Create an owner; NULL on out of memory or if (pid, start_time) is
 * already registered. */
lt_owner *lt_owner_new(lt_table *t, const lt_ident *id);
/* True when the owner has no lease, waiter or anchored lease. */
bool lt_owner_idle(const lt_owner *o);
/* Free an idle owner. Returns UVMLEASE_EINVAL if not idle. */
int lt_owner_free(lt_table *t, lt_owner *o);
/*
 * The owner's process is gone: its waiters are removed (no FAILED events),
 * its leases are released with `reason` (LT_R_HOLDER_EXIT or LT_R_KILLED)
 * unless a live watched child still anchors them, and leases it anchored as
 * a child are released if their owner is gone too. Next waiters are granted.
 * The owner is freed. Its waiters are counted in stats.exited_waiters.
 */
void lt_owner_exit(lt_table *t, lt_owner *o, lt_reason reason, uint64_t now);

typedef struct lt_acquire_args {
    const char *uvm; /* validated UVM id */
    bool confidential;
    const char *label; /* validated, may be "" */
    uint64_t rid;
    int64_t timeout_ms; /* -1 forever, 0 try, >0 */
    void *user;         /* stored in the waiter (and the lease) */
} lt_acquire_args;

typedef struct lt_acquire_result {
    lt_lease *lease;        /* granted (now, or earlier for a re-send) */
    lt_waiter *waiter;      /* queued (now, or earlier for a re-send) */
    uint32_t position;      /* queued: 1 = next in this UVM's queue */
    bool resent;            /* (owner, rid) was already known */
    const lt_lease *holder; /* EBUSY: a current holder, or NULL (quarantine, cap) */
} lt_acquire_result;

/*
 * Acquire: grant at once, queue, or refuse. Returns 0 (res->lease or
 * res->waiter set), EBUSY (try on a held UVM), EDRAINING, ECLASS,
 * EBADVALUE (timeout_ms < -1) or ENOMEM. A re-send of a known (owner, rid)
 * returns the existing lease or waiter with res->resent and changes nothing
 * (a->user is ignored: the caller updates the existing user data so replies
 * follow the new route); the same rid naming another UVM or class is
 * EDUPLICATE. rid must be unique
 * per owner among its live acquires. A grant inside this call emits
 * GRANTED (waiter NULL) before it returns; res may be NULL.
 */
int lt_acquire(lt_table *t, lt_owner *o, const lt_acquire_args *a, uint64_t now,
               lt_acquire_result *res);

typedef struct lt_restore_args {
    const char *uvm;
    bool confidential;
    const char *label;
    uint64_t rid;
    uint64_t lease_id; /* as granted by an earlier broker instance */
    uint64_t fence;
} lt_restore_args;

/*
 * Put back a lease an earlier broker instance granted (its holder is still
 * alive). Keeps the lease id and fence, and raises the counters above them;
 * emits no event. 0, EINVAL, EBADUVM, EBADTEXT, EDUPLICATE (the id exists),
 * ECLASS, EBUSY (the UVM is exclusive and already held) or ENOMEM.
 */
int lt_restore(lt_table *t, lt_owner *o, const lt_restore_args *a, uint64_t now);

/*
 * Start a quarantine on a UVM as an abnormal release would (when
 * quarantine_ms > 0 and the class is exclusive; otherwise nothing): used
 * at restart for a journalled holder that died while no broker ran.
 * Creates the entry if missing. 0, EINVAL, EBADUVM or ENOMEM.
 */
int lt_quarantine(lt_table *t, const char *uvm, bool confidential, uint64_t now);

/* Cancel the owner's queued acquire `rid`. 0 (FAILED event, ECANCELLED) or
 * ENOTWAITING. */
int lt_cancel(lt_table *t, lt_owner *o, uint64_t rid, uint64_t now);

/* Release a lease the owner holds. 0, ENOLEASE, ENOTOWNER, or EREVOKED (it
 * was revoked/killed earlier). */
int lt_release(lt_table *t, lt_owner *o, uint64_t lease_id, uint64_t now);
/* As lt_release, with the reason recorded: LT_R_RELEASED or
 * LT_R_UNDELIVERABLE (anything else is EINVAL: forced releases have their
 * own calls). */
int lt_release_as(lt_table *t, lt_owner *o, uint64_t lease_id, lt_reason reason, uint64_t now);

/* Record a phase for the owner's lease. 0, ENOLEASE, ENOTOWNER, EREVOKED, or
 * ENOMEM (the history could not grow; nothing changed). */
int lt_phase(lt_table *t, lt_owner *o, uint64_t lease_id, const char *phase, uint64_t now);

/* Make `child` (a direct child process, checked by the caller) a second
 * anchor of the owner's lease: the lease then survives the owner's exit
 * until the child exits too. 0, ENOLEASE, ENOTOWNER, EREVOKED, EBADVALUE
 * (already has a child). */
int lt_attach_child(lt_table *t, lt_owner *o, uint64_t lease_id, lt_owner *child);

/* Lookups. */
lt_uvm *lt_uvm_find(lt_table *t, const char *uvm);
lt_lease *lt_lease_find(lt_table *t, uint64_t lease_id);
/* The owner's queued waiter with this rid, or NULL. O(1). */
lt_waiter *lt_waiter_find(lt_table *t, lt_owner *o, uint64_t rid);
/* The owner's lease granted by acquire `rid`, or NULL. O(1). */
lt_lease *lt_lease_by_rid(lt_table *t, lt_owner *o, uint64_t rid);
/* Whether the owner has a lease or waiter from acquire `rid`. O(1). */
bool lt_rid_known(lt_table *t, lt_owner *o, uint64_t rid);

/* Drain: no new grants; current waiters fail with EDRAINING, later
 * acquires too; holders finish. Creates the entry if missing (it stays
 * until undrained). 0 (also if already drained) or ENOMEM. Undrain: 0 (also
 * if not drained) or EUNKNOWNUVM; a drained UVM has no waiters, so nothing
 * is granted; frees the entry when idle. */
int lt_drain(lt_table *t, const char *uvm, uint64_t now);
int lt_undrain(lt_table *t, const char *uvm, uint64_t now);

/* Revoke: release the UVM's lease(s) held by `pid` (0 = all holders) with
 * LT_R_REVOKED and grant the next waiters. The owners remember the ids, so
 * their later calls get EREVOKED. 0 or EUNKNOWNUVM / ENOLEASE. */
int lt_revoke(lt_table *t, const char *uvm, uint32_t pid, uint64_t now);

/* Expire waiters whose deadline passed (FAILED, ETIMEDOUT), end
 * quarantines (granting waiters), flag overdue leases (OVERDUE). Returns
 * the next deadline (monotonic ms) or LT_NEVER. */
uint64_t lt_tick(lt_table *t, uint64_t now);

/*
 * Suspend exclusive grants (safe inside on_event: it only sets a flag):
 * waiters stay queued, tries on a free UVM get EJOURNAL, and a waiter whose
 * deadline passes while it heads a free UVM fails with EJOURNAL instead of
 * ETIMEDOUT. Shared grants go on. lt_resume() (never from a callback)
 * grants what became grantable, in FIFO order.
 */
void lt_suspend(lt_table *t);
void lt_resume(lt_table *t, uint64_t now);
bool lt_suspended(const lt_table *t);

/* Walk a UVM's holders (grant order) and waiters (FIFO), and an owner's
 * leases and waiters, without touching the table's lists. next of the
 * last is NULL. The table must not change during a walk. */
lt_lease *lt_uvm_holders(const lt_uvm *u);
lt_lease *lt_uvm_holder_next(const lt_uvm *u, const lt_lease *l);
lt_waiter *lt_uvm_waiters(const lt_uvm *u);
lt_waiter *lt_uvm_waiter_next(const lt_uvm *u, const lt_waiter *w);
lt_lease *lt_owner_leases(const lt_owner *o);
lt_lease *lt_owner_lease_next(const lt_owner *o, const lt_lease *l);
lt_waiter *lt_owner_waiters(const lt_owner *o);
lt_waiter *lt_owner_waiter_next(const lt_owner *o, const lt_waiter *w);

/* Iterate UVM entries in creation order. */
lt_uvm *lt_uvm_first(lt_table *t);
lt_uvm *lt_uvm_next(lt_table *t, lt_uvm *u);

#endif
