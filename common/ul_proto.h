/*
 * ul_proto.h — the uvmlease wire protocol as C structs, and its codec.
 *
 * The codec turns bytes into validated structs and back. It knows nothing
 * about ZeroMQ: one message is one byte buffer (one ZeroMQ body frame).
 * The normative description of the bytes is common/PROTOCOL.md; this header
 * and that document must agree.
 *
 * Every decoder treats its input as hostile: ul_mp_check() walks the raw
 * msgpack bytes and bounds depth, element counts, string lengths, total size
 * and trailing bytes *before* msgpack-c is allowed to see them (msgpack-c
 * allocates count x 24/48 bytes on reading a container header).
 */
#ifndef UL_PROTO_H
#define UL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "uvmlease_errors.h"

#define UL_PROTO_VERSION 1

/* Size limits, in bytes of one body frame. */
#define UL_MAX_REQUEST 4096      /* client -> broker */
#define UL_MAX_REPLY   (1 << 20) /* broker -> client */

/* Nesting limits (a top-level map is depth 1). */
#define UL_MAX_DEPTH_REQUEST 2
#define UL_MAX_DEPTH_REPLY   6

/* Per-container element limits. */
#define UL_MAX_MAP_REQUEST 32   /* entries in a request map */
#define UL_MAX_CONTAINER   4096 /* entries in any reply array or map */

/* Field limits (bytes, excluding the terminating NUL of the C struct). */
#define UL_MAX_UVM    256
#define UL_MAX_LABEL  256
#define UL_MAX_PHASE  64
#define UL_MAX_REASON 256
#define UL_MAX_COMM   16 /* Linux TASK_COMM_LEN - 1 is 15; 16 leaves room */
#define UL_MAX_CLIENT 64
#define UL_MAX_DETAIL 256
#define UL_MAX_NAME   64 /* counter / histogram names and label values */

#define UL_LIST_PAGE_MAX      256 /* UVMs per list reply */
#define UL_SHOW_WAITERS_MAX   1024
#define UL_PHASES_MAX         8 /* phase history kept per lease */
#define UL_HIST_BUCKETS       24
#define UL_STATS_COUNTERS_MAX 1024 /* counters per stats reply */
#define UL_STATS_HISTS_MAX    256  /* histograms per stats reply */

#define UL_TIMEOUT_FOREVER (-1)

/* Operations (wire names in parentheses). */
typedef enum ul_op {
    UL_OP_NONE = 0,
    UL_OP_HELLO,         /* "hello" */
    UL_OP_PING,          /* "ping" */
    UL_OP_ACQUIRE,       /* "acquire" */
    UL_OP_CANCEL,        /* "cancel" */
    UL_OP_RELEASE,       /* "release" */
    UL_OP_PHASE,         /* "phase" */
    UL_OP_WATCH_CHILD,   /* "watch-child" */
    UL_OP_LIST,          /* "list" */
    UL_OP_SHOW,          /* "show" */
    UL_OP_WATCH,         /* "watch" */
    UL_OP_UNWATCH,       /* "unwatch" */
    UL_OP_STATS,         /* "stats" */
    UL_OP_DRAIN,         /* "drain"   (admin) */
    UL_OP_UNDRAIN,       /* "undrain" (admin) */
    UL_OP_FORCE_RELEASE, /* "force-release" (admin) */
    UL_OP_COUNT_
} ul_op;

typedef enum ul_force_mode { UL_FORCE_REVOKE = 1, UL_FORCE_KILL = 2 } ul_force_mode;

/* Wire name of an op ("acquire"), or NULL. */
const char *ul_op_name(ul_op op);
/* Op from wire name, UL_OP_NONE if unknown. len excludes any NUL. */
ul_op ul_op_from_name(const char *name, size_t len);
/* Whether an op needs uid 0 or the admin group. */
bool ul_op_is_admin(ul_op op);

/*
 * A request, client -> broker. Fixed-size: decoding allocates nothing the
 * caller must free. Strings are NUL-terminated and already validated.
 * Which fields an op uses is listed in PROTOCOL.md; unused ones are zero.
 */
typedef struct ul_request {
    uint32_t version;               /* "v" */
    ul_op op;                       /* "op" */
    uint64_t rid;                   /* "rid", nonzero, unique per client process */
    char uvm[UL_MAX_UVM + 1];       /* acquire, show, drain, undrain, force-release */
    bool confidential;              /* acquire "conf" */
    int64_t timeout_ms;             /* acquire "timeout_ms": -1 forever, 0 try, >0 ms */
    char label[UL_MAX_LABEL + 1];   /* acquire "label" (may be empty) */
    uint64_t target_rid;            /* cancel "target" */
    uint64_t lease;                 /* release, phase, watch-child "lease" */
    char phase[UL_MAX_PHASE + 1];   /* phase "phase" */
    uint32_t pid;                   /* watch-child "pid"; force-release "pid" (0 = all) */
    ul_force_mode mode;             /* force-release "mode" */
    char reason[UL_MAX_REASON + 1]; /* force-release "reason" */
    char after[UL_MAX_UVM + 1];     /* list "after" (cursor, may be empty) */
    uint32_t limit;                 /* list "limit" (0 = UL_LIST_PAGE_MAX) */
    char client[UL_MAX_CLIENT + 1]; /* hello "client" (may be empty) */
} ul_request;

/* One current lease holder, as shown to callers and admins. */
typedef struct ul_phase_rec {
    char phase[UL_MAX_PHASE + 1];
    uint64_t at_ms; /* wall clock, Unix ms */
} ul_phase_rec;

typedef struct ul_holder {
    uint64_t lease;
    uint64_t fence;
    uint32_t pid;
    uint32_t uid;
    uint32_t child_pid; /* watched child (uvmleasectl run), 0 if none */
    char comm[UL_MAX_COMM + 1];
    char label[UL_MAX_LABEL + 1];
    char phase[UL_MAX_PHASE + 1]; /* current phase, may be empty */
    uint64_t held_ms;
    uint64_t phase_ms;
    bool overdue;
    uint32_t n_phases; /* show only: history, oldest first */
    ul_phase_rec phases[UL_PHASES_MAX];
} ul_holder;

typedef struct ul_waiter_info {
    uint32_t pid;
    uint32_t uid;
    char comm[UL_MAX_COMM + 1];
    char label[UL_MAX_LABEL + 1];
    uint64_t waited_ms;
    int64_t timeout_ms; /* -1 forever */
} ul_waiter_info;

typedef struct ul_uvm_info {
    char uvm[UL_MAX_UVM + 1];
    bool confidential;
    bool draining;
    uint64_t quarantine_ms_left;
    uint32_t waiter_count;
    uint32_t n_holders;
    ul_holder *holders;
    uint32_t n_waiters; /* show only, grant order */
    ul_waiter_info *waiters;
    bool has_last_release; /* show only */
    char last_reason[UL_MAX_NAME + 1];
    uint32_t last_pid;
    uint64_t last_at_ms; /* wall clock, Unix ms */
} ul_uvm_info;

typedef struct ul_counter {
    char name[UL_MAX_NAME + 1]; /* e.g. "releases_total" */
    char lkey[UL_MAX_NAME + 1]; /* optional label key, e.g. "reason" */
    char lval[UL_MAX_NAME + 1]; /* optional label value, e.g. "holder-exit" */
    uint64_t value;
} ul_counter;

typedef struct ul_histogram {
    char name[UL_MAX_NAME + 1]; /* e.g. "wait_seconds" */
    char lkey[UL_MAX_NAME + 1];
    char lval[UL_MAX_NAME + 1];
    uint32_t n_buckets;
    uint64_t le_us[UL_HIST_BUCKETS];  /* upper bounds, microseconds, ascending */
    uint64_t counts[UL_HIST_BUCKETS]; /* per bucket, not cumulative */
    uint64_t sum_us;
    uint64_t count; /* includes observations above the last bound */
} ul_histogram;

/* Kinds of broker -> client message. */
typedef enum ul_msg_kind {
    UL_MSG_REPLY = 1,      /* answer to a request: "rid", "op", "err" */
    UL_MSG_GRANT,          /* "grant": a queued acquire was granted */
    UL_MSG_ACQUIRE_FAILED, /* "acquire-failed": a queued acquire ended without a grant */
    UL_MSG_REVOKED,        /* "revoked": an admin took a lease away */
    UL_MSG_EVENT,          /* "event": a watch event */
} ul_msg_kind;

typedef enum ul_event_type {
    UL_EV_GRANT = 1,
    UL_EV_RELEASE,
    UL_EV_TIMEOUT,
    UL_EV_CANCEL,
    UL_EV_PHASE,
    UL_EV_OVERDUE,
    UL_EV_DRAIN,
    UL_EV_UNDRAIN,
    UL_EV_FORCE,
    UL_EV_QUEUED,
    UL_EV_COUNT_
} ul_event_type;

const char *ul_event_name(ul_event_type t);

typedef struct ul_event {
    ul_event_type type;
    uint64_t at_ms; /* wall clock, Unix ms */
    char uvm[UL_MAX_UVM + 1];
    uint32_t pid;
    char label[UL_MAX_LABEL + 1];
    char phase[UL_MAX_PHASE + 1];
    char reason[UL_MAX_REASON + 1]; /* release / force reason */
    uint64_t lease;
    uint64_t fence;
    uint64_t duration_ms; /* wait (grant/timeout) or hold (release) */
} ul_event;

/*
 * A broker -> client message. Decoding may allocate the arrays below;
 * release them with ul_reply_free(). Which fields are set depends on kind
 * and, for replies, op (see PROTOCOL.md).
 */
typedef struct ul_reply {
    ul_msg_kind kind;
    uint32_t version;  /* "v" */
    uint64_t instance; /* "bi": broker instance id, in every message */
    uint64_t rid;      /* REPLY: the request's rid; GRANT/ACQUIRE_FAILED: the acquire's */
    ul_op op;          /* REPLY: the op answered (UL_OP_NONE if the request was unreadable) */
    uint32_t err;      /* REPLY / ACQUIRE_FAILED: uvmlease_status, 0 = ok */
    char detail[UL_MAX_DETAIL + 1]; /* optional human text for an error */

    bool has_holder; /* refusals (busy, timeout): who is in the way */
    ul_holder holder;

    /* acquire reply, grant, revoked */
    bool queued;       /* acquire reply: waiting; a GRANT or ACQUIRE_FAILED follows */
    uint32_t position; /* queued: 1 = next */
    uint64_t lease;
    uint64_t fence;
    char uvm[UL_MAX_UVM + 1];
    char reason[UL_MAX_REASON + 1]; /* revoked */

    /* hello / ping */
    uint32_t broker_pid;
    char server[UL_MAX_CLIENT + 1];
    /* hello / ping / list: "ok", or "failing" while the broker cannot
     * record leases (exclusive grants suspended); "" if not sent */
    char journal[UL_MAX_NAME + 1];

    /* list (n entries), show (one entry) */
    uint32_t n_uvms;
    ul_uvm_info *uvms;
    bool more; /* list: another page follows; ask with after = last uvm */

    /* stats */
    uint32_t n_counters;
    ul_counter *counters;
    uint32_t n_hists;
    ul_histogram *hists;

    /* event */
    ul_event event;
} ul_reply;

/* A growable output buffer. Reuse one across messages (len = 0) to avoid
 * allocating per message. */
typedef struct ul_buf {
    char *data;
    size_t len;
    size_t cap;
} ul_buf;

void ul_buf_free(ul_buf *b);

/* Limits for ul_mp_check(). */
typedef struct ul_mp_limits {
    size_t max_size;      /* whole message, bytes */
    unsigned max_depth;   /* containers nested; top-level container is 1 */
    uint32_t max_entries; /* per array or map */
    uint32_t max_str;     /* per str / bin / ext payload */
} ul_mp_limits;

extern const ul_mp_limits ul_limits_request;
extern const ul_mp_limits ul_limits_reply;

/*
 * Validate that buf holds exactly one msgpack object within lim, without
 * allocating. Checks, in this order: total size (ETOOLARGE), then for each
 * element: reserved byte 0xc1 (EMALFORMED), nesting (ETOODEEP), container
 * count or str/bin/ext length above limits (ELIMIT), declared length or
 * count exceeding the bytes left (ETRUNCATED: each element still announced
 * by any open container needs at least one byte), and finally bytes after
 * the object (ETRAILING). An empty buffer is ETRUNCATED. max_depth is
 * capped at 32, msgpack-c's own nesting limit. Returns 0, a status, or
 * UVMLEASE_EINVAL for a NULL lim or a NULL buf with len > 0.
 */
int ul_mp_check(const void *buf, size_t len, const ul_mp_limits *lim);

/*
 * Decode and validate a request. Returns 0 or a uvmlease_status; never
 * allocates more than the message size bounds allow. On error, out->rid and
 * out->op are set when they could be read (so the error reply can name the
 * request) and are 0 / UL_OP_NONE otherwise.
 */
int ul_request_decode(const void *buf, size_t len, ul_request *out);

/* Encode a request into out (appended at out->len) in the canonical form
 * of PROTOCOL.md. Validates the same rules as the decoder; returns 0 or a
 * uvmlease_status, and on error leaves out->len as it was. The version
 * written is always UL_PROTO_VERSION (req->version is not read). */
int ul_request_encode(const ul_request *req, ul_buf *out);

/* Decode a broker message. On success the caller owns *out and must call
 * ul_reply_free(). On error nothing is left allocated. */
int ul_reply_decode(const void *buf, size_t len, ul_reply *out);

/* Encode a broker message (appended at out->len), like ul_request_encode.
 * ETOOLARGE when it would exceed UL_MAX_REPLY (send a shorter list page). */
int ul_reply_encode(const ul_reply *rep, ul_buf *out);

/* Free the arrays of a decoded reply and zero it. Safe on a zeroed reply. */
void ul_reply_free(ul_reply *rep);

/* Name ("busy") and message of a status code; "unknown" for others. */
const char *ul_status_name(int code);
const char *ul_status_message(int code);
/* Code from wire name; -1 if unknown. */
int ul_status_from_name(const char *name);

#endif
