/*
 * ul_codec.c — requests and broker messages to and from msgpack.
 *
 * Decoding always runs ul_mp_check() on the raw bytes first, so msgpack-c
 * only ever unpacks a message whose every count is backed by bytes that are
 * present; then the object tree is mapped onto the structs field by field.
 *
 * Flat maps are described by field tables shared by the decoder and the
 * encoder, so both apply the same rules and the encoder writes keys in one
 * fixed order (the canonical form that the golden vectors in PROTOCOL.md
 * pin down byte for byte).
 */
#include <limits.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "ul_proto.h"
#include "ul_text.h"

/* A map that is a protocol object has at most this many keys; it keeps the
 * pairwise duplicate-key search cheap. No object defines more than 20. */
#define UL_MAX_OBJECT_KEYS 64

/* Longest finite wait: 2^53 - 1 ms keeps deadline arithmetic far from
 * overflow and survives a trip through a JSON number. */
#define UL_MAX_TIMEOUT_MS ((int64_t)9007199254740991)

/* First zone chunk: a request's whole object tree fits in one. */
#define UL_ZONE_CHUNK 4096

/* ------------------------------------------------------------------ names */

static const char *const s_op_names[UL_OP_COUNT_] = {
    [UL_OP_HELLO] = "hello",
    [UL_OP_PING] = "ping",
    [UL_OP_ACQUIRE] = "acquire",
    [UL_OP_CANCEL] = "cancel",
    [UL_OP_RELEASE] = "release",
    [UL_OP_PHASE] = "phase",
    [UL_OP_WATCH_CHILD] = "watch-child",
    [UL_OP_LIST] = "list",
    [UL_OP_SHOW] = "show",
    [UL_OP_WATCH] = "watch",
    [UL_OP_UNWATCH] = "unwatch",
    [UL_OP_STATS] = "stats",
    [UL_OP_DRAIN] = "drain",
    [UL_OP_UNDRAIN] = "undrain",
    [UL_OP_FORCE_RELEASE] = "force-release",
};

static const char *const s_event_names[UL_EV_COUNT_] = {
    [UL_EV_GRANT] = "grant",   [UL_EV_RELEASE] = "release", [UL_EV_TIMEOUT] = "timeout",
    [UL_EV_CANCEL] = "cancel", [UL_EV_PHASE] = "phase",     [UL_EV_OVERDUE] = "overdue",
    [UL_EV_DRAIN] = "drain",   [UL_EV_UNDRAIN] = "undrain", [UL_EV_FORCE] = "force-release",
    [UL_EV_QUEUED] = "queued",
};

static const char *const s_kind_names[] = {
    [UL_MSG_REPLY] = "reply",
    [UL_MSG_GRANT] = "grant",
    [UL_MSG_ACQUIRE_FAILED] = "acquire-failed",
    [UL_MSG_REVOKED] = "revoked",
    [UL_MSG_EVENT] = "event",
};
#define UL_KIND_COUNT_ ((int)(sizeof s_kind_names / sizeof s_kind_names[0]))

static const char *const s_mode_names[] = {
    [UL_FORCE_REVOKE] = "revoke",
    [UL_FORCE_KILL] = "kill",
};
#define UL_MODE_COUNT_ ((int)(sizeof s_mode_names / sizeof s_mode_names[0]))

/* Index of the name equal to (s, len) in names[1..count-1], 0 if none. */
static int name_index(const char *const *names, int count, const char *s, size_t len)
{
    for (int i = 1; i < count; i++)
        if (names[i] && strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return i;
    return 0;
}

const char *ul_op_name(ul_op op)
{
    if ((int)op <= (int)UL_OP_NONE || (int)op >= (int)UL_OP_COUNT_)
        return NULL;
    return s_op_names[op];
}

ul_op ul_op_from_name(const char *name, size_t len)
{
    if (!name)
        return UL_OP_NONE;
    return (ul_op)name_index(s_op_names, UL_OP_COUNT_, name, len);
}

bool ul_op_is_admin(ul_op op)
{
    return op == UL_OP_DRAIN || op == UL_OP_UNDRAIN || op == UL_OP_FORCE_RELEASE;
}

const char *ul_event_name(ul_event_type t)
{
    if ((int)t <= 0 || (int)t >= (int)UL_EV_COUNT_)
        return NULL;
    return s_event_names[t];
}

/* ----------------------------------------------------------- field tables */

enum field_kind {
    FK_U64,     /* uint64_t */
    FK_U64NZ,   /* uint64_t, nonzero */
    FK_U32,     /* uint32_t */
    FK_U32NZ,   /* uint32_t, nonzero */
    FK_PID,     /* uint32_t, 1..INT32_MAX */
    FK_PID0,    /* uint32_t, 0..INT32_MAX (0: none / all) */
    FK_TIMEOUT, /* int64_t, -1..UL_MAX_TIMEOUT_MS */
    FK_BOOL,    /* bool */
    FK_UVM,     /* char[], a UVM ID */
    FK_UVM0,    /* char[], a UVM ID or empty */
    FK_TEXT,    /* char[], free text, may be empty */
    FK_TEXT1,   /* char[], free text, not empty */
    FK_NAME,    /* char[], identifier [A-Za-z_][A-Za-z0-9_]* */
    FK_MODE,    /* ul_force_mode by name */
    FK_CLASS,   /* bool confidential: "confidential" | "standard" */
    FK_EVTYPE,  /* ul_event_type by name */
    FK_OP,      /* ul_op by name */
};

#define F_OPT   1u /* may be absent when decoding (then zero) */
#define F_OMIT0 2u /* the encoder leaves it out when zero or empty */

typedef struct field {
    const char *key;
    uint8_t kind;
    uint8_t flags;
    uint16_t cap; /* strings: longest value in bytes (the array holds cap + 1) */
    size_t off;
} field;

#define MEMBER_SIZE(type, m) sizeof(((type *)0)->m)
#define MEMBER_CAP(type, m)  ((uint16_t)(MEMBER_SIZE(type, m) - 1))

/* Whether a struct member of sz bytes can hold a field of kind k: the
 * codec copies fixed sizes in and out, so a member whose type changes must
 * stop the build rather than be overrun. */
#define KIND_FITS(k, sz)                                                                            \
    (((k) == FK_U64 || (k) == FK_U64NZ || (k) == FK_TIMEOUT)                 ? (sz) == 8            \
     : ((k) == FK_U32 || (k) == FK_U32NZ || (k) == FK_PID || (k) == FK_PID0) ? (sz) == 4            \
     : ((k) == FK_BOOL || (k) == FK_CLASS)                                   ? (sz) == sizeof(bool) \
     : ((k) == FK_MODE || (k) == FK_EVTYPE || (k) == FK_OP)                  ? (sz) == sizeof(int)  \
                                                                             : (sz) > 1)
/* offsetof, plus a compile-time KIND_FITS check (a negative array size). */
#define CHECKED_OFFSET(type, kind, m)                                                              \
    (offsetof(type, m) + 0 * sizeof(char[KIND_FITS(kind, MEMBER_SIZE(type, m)) ? 1 : -1]))
#define FIELD(type, key, kind, flags, m)                                                           \
    {                                                                                              \
        key, kind, flags, MEMBER_CAP(type, m), CHECKED_OFFSET(type, kind, m)                       \
    }
#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

#define RQ(key, kind, flags, m) FIELD(ul_request, key, kind, flags, m)
static const field f_req_hello[] = {RQ("client", FK_TEXT, F_OPT, client)};
static const field f_req_acquire[] = {
    RQ("uvm", FK_UVM, 0, uvm),
    RQ("conf", FK_BOOL, 0, confidential),
    RQ("timeout_ms", FK_TIMEOUT, 0, timeout_ms),
    RQ("label", FK_TEXT, F_OPT, label),
};
static const field f_req_cancel[] = {RQ("target", FK_U64NZ, 0, target_rid)};
static const field f_req_release[] = {RQ("lease", FK_U64NZ, 0, lease)};
static const field f_req_phase[] = {
    RQ("lease", FK_U64NZ, 0, lease),
    RQ("phase", FK_TEXT, 0, phase),
};
static const field f_req_watch_child[] = {
    RQ("lease", FK_U64NZ, 0, lease),
    RQ("pid", FK_PID, 0, pid),
};
static const field f_req_list[] = {
    RQ("after", FK_UVM0, F_OPT, after),
    RQ("limit", FK_U32, F_OPT, limit),
};
static const field f_req_uvm[] = {RQ("uvm", FK_UVM, 0, uvm)};
static const field f_req_drain[] = {
    RQ("uvm", FK_UVM, 0, uvm),
    RQ("reason", FK_TEXT, F_OPT, reason),
};
static const field f_req_force[] = {
    RQ("uvm", FK_UVM, 0, uvm),
    RQ("mode", FK_MODE, 0, mode),
    RQ("pid", FK_PID0, F_OPT, pid),
    RQ("reason", FK_TEXT1, 0, reason),
};

struct field_set {
    const field *f;
    size_t n;
};
/* clang-format off */
#define FSET(a) {(a), NFIELDS(a)}
/* clang-format on */

/* clang-format off */
static const struct field_set s_req_fields[UL_OP_COUNT_] = {
    [UL_OP_HELLO] = FSET(f_req_hello),
    [UL_OP_ACQUIRE] = FSET(f_req_acquire),
    [UL_OP_CANCEL] = FSET(f_req_cancel),
    [UL_OP_RELEASE] = FSET(f_req_release),
    [UL_OP_PHASE] = FSET(f_req_phase),
    [UL_OP_WATCH_CHILD] = FSET(f_req_watch_child),
    [UL_OP_LIST] = FSET(f_req_list),
    [UL_OP_SHOW] = FSET(f_req_uvm),
    [UL_OP_DRAIN] = FSET(f_req_drain),
    [UL_OP_UNDRAIN] = FSET(f_req_drain),
    [UL_OP_FORCE_RELEASE] = FSET(f_req_force),
    /* ping, watch, unwatch, stats: no fields */
};
/* clang-format on */

#define RP(key, kind, flags, m) FIELD(ul_reply, key, kind, flags, m)
static const field f_rep_head[] = {RP("bi", FK_U64NZ, 0, instance)};
static const field f_rep_reply[] = {
    RP("rid", FK_U64, 0, rid),
    RP("op", FK_OP, F_OPT | F_OMIT0, op),
    RP("err", FK_U32, 0, err),
    RP("detail", FK_TEXT, F_OPT | F_OMIT0, detail),
};
static const field f_rep_hello[] = {
    RP("pid", FK_PID, 0, broker_pid),
    RP("server", FK_TEXT, 0, server),
    RP("journal", FK_NAME, F_OPT | F_OMIT0, journal),
};
static const field f_rep_queued[] = {RP("queued", FK_BOOL, 0, queued)};
static const field f_rep_position[] = {RP("position", FK_U32NZ, 0, position)};
static const field f_rep_granted[] = {
    RP("lease", FK_U64NZ, 0, lease),
    RP("fence", FK_U64NZ, 0, fence),
    RP("uvm", FK_UVM, 0, uvm),
};
static const field f_rep_more[] = {
    RP("more", FK_BOOL, 0, more),
    RP("journal", FK_NAME, F_OPT | F_OMIT0, journal),
};
/* cancel: the lease released because the acquire had been granted already */
static const field f_rep_cancel[] = {RP("lease", FK_U64NZ, F_OPT | F_OMIT0, lease)};
static const field f_rep_grant[] = {
    RP("rid", FK_U64NZ, 0, rid),
    RP("lease", FK_U64NZ, 0, lease),
    RP("fence", FK_U64NZ, 0, fence),
    RP("uvm", FK_UVM, 0, uvm),
};
static const field f_rep_failed[] = {
    RP("rid", FK_U64NZ, 0, rid),
    RP("err", FK_U32NZ, 0, err),
    RP("detail", FK_TEXT, F_OPT | F_OMIT0, detail),
};
static const field f_rep_revoked[] = {
    RP("lease", FK_U64NZ, 0, lease),
    RP("uvm", FK_UVM, 0, uvm),
    RP("reason", FK_TEXT, 0, reason),
};

#define HO(key, kind, flags, m) FIELD(ul_holder, key, kind, flags, m)
static const field f_holder[] = {
    HO("pid", FK_PID, 0, pid),
    HO("uid", FK_U32, 0, uid),
    HO("comm", FK_TEXT, 0, comm),
    HO("label", FK_TEXT, 0, label),
    HO("lease", FK_U64, 0, lease),
    HO("fence", FK_U64, 0, fence),
    HO("held_ms", FK_U64, 0, held_ms),
    HO("phase", FK_TEXT, 0, phase),
    HO("phase_ms", FK_U64, 0, phase_ms),
    HO("overdue", FK_BOOL, 0, overdue),
    HO("child_pid", FK_PID0, F_OPT | F_OMIT0, child_pid),
};

#define PR(key, kind, flags, m) FIELD(ul_phase_rec, key, kind, flags, m)
static const field f_phase_rec[] = {
    PR("phase", FK_TEXT1, 0, phase),
    PR("at", FK_U64, 0, at_ms),
};

#define WA(key, kind, flags, m) FIELD(ul_waiter_info, key, kind, flags, m)
static const field f_waiter[] = {
    WA("pid", FK_PID, 0, pid),
    WA("uid", FK_U32, 0, uid),
    WA("comm", FK_TEXT, 0, comm),
    WA("label", FK_TEXT, 0, label),
    WA("waited_ms", FK_U64, 0, waited_ms),
    WA("timeout_ms", FK_TIMEOUT, 0, timeout_ms),
};

#define UI(key, kind, flags, m) FIELD(ul_uvm_info, key, kind, flags, m)
static const field f_uvm_info[] = {
    UI("uvm", FK_UVM, 0, uvm),
    UI("class", FK_CLASS, 0, confidential),
    UI("waiter_count", FK_U32, 0, waiter_count),
    UI("draining", FK_BOOL, 0, draining),
    UI("quarantine_ms_left", FK_U64, 0, quarantine_ms_left),
};
static const field f_last_release[] = {
    UI("reason", FK_TEXT1, 0, last_reason),
    UI("pid", FK_PID0, 0, last_pid),
    UI("at", FK_U64, 0, last_at_ms),
};

#define CO(key, kind, flags, m) FIELD(ul_counter, key, kind, flags, m)
static const field f_counter[] = {
    CO("name", FK_NAME, 0, name),
    CO("lkey", FK_NAME, F_OPT | F_OMIT0, lkey),
    CO("lval", FK_TEXT, F_OPT | F_OMIT0, lval),
    CO("value", FK_U64, 0, value),
};

#define HI(key, kind, flags, m) FIELD(ul_histogram, key, kind, flags, m)
static const field f_hist_head[] = {
    HI("name", FK_NAME, 0, name),
    HI("lkey", FK_NAME, F_OPT | F_OMIT0, lkey),
    HI("lval", FK_TEXT, F_OPT | F_OMIT0, lval),
};
static const field f_hist_tail[] = {
    HI("sum_us", FK_U64, 0, sum_us),
    HI("count", FK_U64, 0, count),
};

#define EV(key, kind, flags, m) FIELD(ul_event, key, kind, flags, m)
static const field f_event[] = {
    EV("type", FK_EVTYPE, 0, type),
    EV("at", FK_U64, 0, at_ms),
    EV("uvm", FK_UVM, 0, uvm),
    EV("pid", FK_PID0, F_OPT | F_OMIT0, pid),
    EV("label", FK_TEXT, F_OPT | F_OMIT0, label),
    EV("phase", FK_TEXT, F_OPT | F_OMIT0, phase),
    EV("reason", FK_TEXT, F_OPT | F_OMIT0, reason),
    EV("lease", FK_U64, F_OPT | F_OMIT0, lease),
    EV("fence", FK_U64, F_OPT | F_OMIT0, fence),
    EV("duration_ms", FK_U64, F_OPT | F_OMIT0, duration_ms),
};

/* ------------------------------------------------------- value validation */

static int name_check(const char *s, size_t len, size_t cap)
{
    if (len == 0 || len > cap)
        return UVMLEASE_EBADTEXT;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return UVMLEASE_EBADTEXT;
    }
    return 0;
}

static bool is_string_kind(int kind)
{
    return kind == FK_UVM || kind == FK_UVM0 || kind == FK_TEXT || kind == FK_TEXT1 ||
           kind == FK_NAME;
}

/* The rule of a string field, for the decoder and the encoder alike. */
static int string_check(const field *f, const char *s, size_t len)
{
    switch (f->kind) {
    case FK_UVM:
        return ul_uvm_id_check(s, len);
    case FK_UVM0:
        return len == 0 ? 0 : ul_uvm_id_check(s, len);
    case FK_TEXT:
        return ul_text_check(s, len, f->cap);
    case FK_TEXT1:
        return len == 0 ? UVMLEASE_EBADTEXT : ul_text_check(s, len, f->cap);
    default: /* FK_NAME */
        return name_check(s, len, f->cap);
    }
}

/* The range of an unsigned field. */
static int uint_check(const field *f, uint64_t u)
{
    switch (f->kind) {
    case FK_U64NZ:
        return u ? 0 : UVMLEASE_EBADVALUE;
    case FK_U32:
        return u <= UINT32_MAX ? 0 : UVMLEASE_EBADVALUE;
    case FK_U32NZ:
        return u && u <= UINT32_MAX ? 0 : UVMLEASE_EBADVALUE;
    case FK_PID:
        return u && u <= INT32_MAX ? 0 : UVMLEASE_EBADVALUE;
    case FK_PID0:
        return u <= INT32_MAX ? 0 : UVMLEASE_EBADVALUE;
    default:
        return 0;
    }
}

static bool is_uint_kind(int kind)
{
    return kind == FK_U64 || kind == FK_U64NZ || kind == FK_U32 || kind == FK_U32NZ ||
           kind == FK_PID || kind == FK_PID0;
}

static bool is_u64_storage(int kind)
{
    return kind == FK_U64 || kind == FK_U64NZ;
}

static int timeout_check(int64_t v)
{
    return v >= -1 && v <= UL_MAX_TIMEOUT_MS ? 0 : UVMLEASE_EBADVALUE;
}

/* ---------------------------------------------------------------- decoder */

/* Value of key in map, or NULL. */
static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    size_t klen = strlen(key);
    const msgpack_object_kv *kv = map->via.map.ptr;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &kv[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            memcmp(k->via.str.ptr, key, klen) == 0)
            return &kv[i].val;
    }
    return NULL;
}

/*
 * A protocol object: a map with at most max_keys string keys, no key
 * twice (a peer must not be able to say two things at once).
 */
static int object_check(const msgpack_object *o, uint32_t max_keys)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return UVMLEASE_EBADTYPE;
    uint32_t n = o->via.map.size;
    if (n > max_keys)
        return UVMLEASE_ELIMIT;
    const msgpack_object_kv *kv = o->via.map.ptr;
    for (uint32_t i = 0; i < n; i++) {
        if (kv[i].key.type != MSGPACK_OBJECT_STR)
            return UVMLEASE_EBADTYPE;
        const msgpack_object_str *ki = &kv[i].key.via.str;
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object_str *kj = &kv[j].key.via.str;
            /* msgpack-c gives an empty string a NULL pointer. */
            if (kj->size == ki->size && (ki->size == 0 || memcmp(kj->ptr, ki->ptr, ki->size) == 0))
                return UVMLEASE_EMALFORMED;
        }
    }
    return 0;
}

/*
 * Every map in the message, the top-level one first and then in the order
 * the maps begin in the bytes, is an object: at most max_keys keys, all
 * strings, none twice. Maps the receiver does not read (under unknown keys,
 * inside arrays) included: one rule for the whole message, so a peer cannot
 * hide in a field it expects to be ignored what a known field would refuse.
 * Recursion is bounded by the nesting limit ul_mp_check() enforced.
 */
static int maps_check(const msgpack_object *o, uint32_t max_keys)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            int rc = maps_check(&o->via.array.ptr[i], max_keys);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return 0;
    int rc = object_check(o, max_keys);
    for (uint32_t i = 0; !rc && i < o->via.map.size; i++)
        rc = maps_check(&o->via.map.ptr[i].val, max_keys);
    return rc;
}

/* Any msgpack integer as unsigned: negative is out of range, not a type
 * error, since encoders in other languages may use signed forms. */
static int get_uint(const msgpack_object *v, uint64_t *out)
{
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = v->via.u64;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return UVMLEASE_EBADVALUE;
    return UVMLEASE_EBADTYPE;
}

static int get_int(const msgpack_object *v, int64_t *out)
{
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 > INT64_MAX)
            return UVMLEASE_EBADVALUE;
        *out = (int64_t)v->via.u64;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return 0;
    }
    return UVMLEASE_EBADTYPE;
}

static int value_decode(const msgpack_object *v, const field *f, char *dst)
{
    if (is_uint_kind(f->kind)) {
        uint64_t u;
        int rc = get_uint(v, &u);
        if (!rc)
            rc = uint_check(f, u);
        if (rc)
            return rc;
        if (is_u64_storage(f->kind))
            memcpy(dst, &u, sizeof u);
        else {
            uint32_t u32 = (uint32_t)u;
            memcpy(dst, &u32, sizeof u32);
        }
        return 0;
    }
    if (f->kind == FK_TIMEOUT) {
        int64_t i;
        int rc = get_int(v, &i);
        if (!rc)
            rc = timeout_check(i);
        if (!rc)
            memcpy(dst, &i, sizeof i);
        return rc;
    }
    if (f->kind == FK_BOOL) {
        if (v->type != MSGPACK_OBJECT_BOOLEAN)
            return UVMLEASE_EBADTYPE;
        bool b = v->via.boolean;
        memcpy(dst, &b, sizeof b);
        return 0;
    }
    if (v->type != MSGPACK_OBJECT_STR)
        return UVMLEASE_EBADTYPE;
    const char *s = v->via.str.ptr;
    size_t len = v->via.str.size;
    if (is_string_kind(f->kind)) {
        int rc = string_check(f, s, len);
        if (rc)
            return rc;
        if (len > f->cap) /* string_check bounds every kind; keep the copy safe regardless */
            return UVMLEASE_EBADVALUE;
        if (len > 0) /* an empty msgpack-c string may have a NULL pointer */
            memcpy(dst, s, len);
        dst[len] = '\0';
        return 0;
    }
    switch (f->kind) {
    case FK_MODE: {
        ul_force_mode m = (ul_force_mode)name_index(s_mode_names, UL_MODE_COUNT_, s, len);
        if (!m)
            return UVMLEASE_EBADVALUE;
        memcpy(dst, &m, sizeof m);
        return 0;
    }
    case FK_CLASS: {
        bool conf;
        if (len == 12 && memcmp(s, "confidential", 12) == 0)
            conf = true;
        else if (len == 8 && memcmp(s, "standard", 8) == 0)
            conf = false;
        else
            return UVMLEASE_EBADVALUE;
        memcpy(dst, &conf, sizeof conf);
        return 0;
    }
    case FK_EVTYPE: {
        ul_event_type t = (ul_event_type)name_index(s_event_names, UL_EV_COUNT_, s, len);
        if (!t)
            return UVMLEASE_EBADVALUE;
        memcpy(dst, &t, sizeof t);
        return 0;
    }
    default: { /* FK_OP */
        ul_op op = ul_op_from_name(s, len);
        if (op == UL_OP_NONE)
            return UVMLEASE_EUNKNOWNOP;
        memcpy(dst, &op, sizeof op);
        return 0;
    }
    }
}

/* Decode fields in table order; the first failing field decides. */
static int fields_decode(const msgpack_object *map, const field *fs, size_t n, void *base)
{
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *v = map_get(map, fs[i].key);
        if (!v) {
            if (fs[i].flags & F_OPT)
                continue;
            return UVMLEASE_EMISSING;
        }
        int rc = value_decode(v, &fs[i], (char *)base + fs[i].off);
        if (rc)
            return rc;
    }
    return 0;
}

/* "v": present, an integer, and ours. */
static int version_decode(const msgpack_object *map)
{
    const msgpack_object *v = map_get(map, "v");
    if (!v)
        return UVMLEASE_EMISSING;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return UVMLEASE_EVERSION;
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return UVMLEASE_EBADTYPE;
    return v->via.u64 == UL_PROTO_VERSION ? 0 : UVMLEASE_EVERSION;
}

/*
 * Unpack bytes that passed ul_mp_check(). msgpack-c now allocates at most
 * a few dozen bytes per byte of input.
 */
static int unpack_checked(const void *buf, size_t len, msgpack_zone *zone, msgpack_object *root)
{
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack(buf, len, &off, zone, root);
    if (ur == MSGPACK_UNPACK_SUCCESS && off == len)
        return 0;
    return ur == MSGPACK_UNPACK_NOMEM_ERROR ? UVMLEASE_ENOMEM : UVMLEASE_EMALFORMED;
}

static int request_from_obj(const msgpack_object *root, ul_request *out)
{
    /* PROTOCOL.md section 3, step 5: a message that is not a well-formed
     * object names nothing (with a repeated key, which rid would it be?). */
    if (root->type != MSGPACK_OBJECT_MAP)
        return UVMLEASE_EBADTYPE;
    int rc = maps_check(root, UL_MAX_MAP_REQUEST);
    if (rc)
        return rc;

    /* Step 6: read rid and op before any check, so that every refusal
     * from here on names the request: rid when it is a uint other than 0,
     * op when it names an op of this version. */
    const msgpack_object *rid = map_get(root, "rid");
    if (rid && rid->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        out->rid = rid->via.u64;
    const msgpack_object *op = map_get(root, "op");
    if (op && op->type == MSGPACK_OBJECT_STR)
        out->op = ul_op_from_name(op->via.str.ptr, op->via.str.size);

    rc = version_decode(root);
    if (rc)
        return rc;
    out->version = UL_PROTO_VERSION;

    if (!rid)
        return UVMLEASE_EMISSING;
    uint64_t r;
    rc = get_uint(rid, &r);
    if (rc)
        return rc;
    if (r == 0)
        return UVMLEASE_EBADVALUE;

    if (!op)
        return UVMLEASE_EMISSING;
    if (op->type != MSGPACK_OBJECT_STR)
        return UVMLEASE_EBADTYPE;
    if (out->op == UL_OP_NONE)
        return UVMLEASE_EUNKNOWNOP;

    const struct field_set *fs = &s_req_fields[out->op];
    return fields_decode(root, fs->f, fs->n, out);
}

/* The one decode path: bound the bytes (ul_mp_check) before msgpack-c
 * sees them, unpack into a zone, hand the object to from_obj. */
static int decode_with(const void *buf, size_t len, const ul_mp_limits *lim,
                       int (*from_obj)(const msgpack_object *root, void *out), void *out)
{
    int rc = ul_mp_check(buf, len, lim);
    if (rc)
        return rc;
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, UL_ZONE_CHUNK))
        return UVMLEASE_ENOMEM;
    msgpack_object root;
    rc = unpack_checked(buf, len, &zone, &root);
    if (!rc)
        rc = from_obj(&root, out);
    msgpack_zone_destroy(&zone);
    return rc;
}

static int request_from_obj_cb(const msgpack_object *root, void *out)
{
    return request_from_obj(root, out);
}

int ul_request_decode(const void *buf, size_t len, ul_request *out)
{
    if (!out)
        return UVMLEASE_EINVAL;
    memset(out, 0, sizeof *out);
    int rc = decode_with(buf, len, &ul_limits_request, request_from_obj_cb, out);

    if (rc) {
        uint64_t rid = out->rid;
        ul_op op = out->op;
        memset(out, 0, sizeof *out);
        out->rid = rid;
        out->op = op;
    }
    return rc;
}

/* An array field: absent (NULL, when optional), or at most max entries. */
static int array_get(const msgpack_object *map, const char *key, bool required, uint32_t max,
                     const msgpack_object_array **out)
{
    *out = NULL;
    const msgpack_object *v = map_get(map, key);
    if (!v)
        return required ? UVMLEASE_EMISSING : 0;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return UVMLEASE_EBADTYPE;
    if (v->via.array.size > max)
        return UVMLEASE_ELIMIT;
    *out = &v->via.array;
    return 0;
}

static int holder_decode(const msgpack_object *o, ul_holder *h)
{
    int rc = object_check(o, UL_MAX_OBJECT_KEYS);
    if (!rc)
        rc = fields_decode(o, f_holder, NFIELDS(f_holder), h);
    if (rc)
        return rc;
    const msgpack_object_array *a;
    rc = array_get(o, "phases", false, UL_PHASES_MAX, &a);
    if (rc || !a)
        return rc;
    for (uint32_t i = 0; i < a->size; i++) {
        rc = object_check(&a->ptr[i], UL_MAX_OBJECT_KEYS);
        if (!rc)
            rc = fields_decode(&a->ptr[i], f_phase_rec, NFIELDS(f_phase_rec), &h->phases[i]);
        if (rc)
            return rc;
    }
    h->n_phases = a->size;
    return 0;
}

static int waiter_decode(const msgpack_object *o, ul_waiter_info *w)
{
    int rc = object_check(o, UL_MAX_OBJECT_KEYS);
    return rc ? rc : fields_decode(o, f_waiter, NFIELDS(f_waiter), w);
}

/* Allocations are recorded in *u as they are made, so that ul_reply_free()
 * releases them whatever fails later. */
static int uvm_info_decode(const msgpack_object *o, ul_uvm_info *u)
{
    int rc = object_check(o, UL_MAX_OBJECT_KEYS);
    if (!rc)
        rc = fields_decode(o, f_uvm_info, NFIELDS(f_uvm_info), u);
    if (rc)
        return rc;

    const msgpack_object_array *a;
    rc = array_get(o, "holders", true, UL_MAX_CONTAINER, &a);
    if (rc)
        return rc;
    if (a->size > 0) {
        u->holders = calloc(a->size, sizeof *u->holders);
        if (!u->holders)
            return UVMLEASE_ENOMEM;
        u->n_holders = a->size;
        for (uint32_t i = 0; i < a->size; i++)
            if ((rc = holder_decode(&a->ptr[i], &u->holders[i])) != 0)
                return rc;
    }

    rc = array_get(o, "waiters", false, UL_SHOW_WAITERS_MAX, &a);
    if (rc)
        return rc;
    if (a && a->size > 0) {
        u->waiters = calloc(a->size, sizeof *u->waiters);
        if (!u->waiters)
            return UVMLEASE_ENOMEM;
        u->n_waiters = a->size;
        for (uint32_t i = 0; i < a->size; i++)
            if ((rc = waiter_decode(&a->ptr[i], &u->waiters[i])) != 0)
                return rc;
    }

    const msgpack_object *lr = map_get(o, "last_release");
    if (lr) {
        rc = object_check(lr, UL_MAX_OBJECT_KEYS);
        if (!rc)
            rc = fields_decode(lr, f_last_release, NFIELDS(f_last_release), u);
        if (rc)
            return rc;
        u->has_last_release = true;
    }
    return 0;
}

static int label_pair_check(const char *lkey, const char *lval)
{
    /* A label value without a key could not be shown or exported. */
    return lkey[0] == '\0' && lval[0] != '\0' ? UVMLEASE_EBADVALUE : 0;
}

static int counter_decode(const msgpack_object *o, ul_counter *c)
{
    int rc = object_check(o, UL_MAX_OBJECT_KEYS);
    if (!rc)
        rc = fields_decode(o, f_counter, NFIELDS(f_counter), c);
    return rc ? rc : label_pair_check(c->lkey, c->lval);
}

/* Buckets: ascending bounds, and no more observations in them than in
 * total. */
static int hist_check(const ul_histogram *h)
{
    if (h->n_buckets > UL_HIST_BUCKETS)
        return UVMLEASE_ELIMIT;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < h->n_buckets; i++) {
        if (i > 0 && h->le_us[i] <= h->le_us[i - 1])
            return UVMLEASE_EBADVALUE;
        if (h->counts[i] > h->count - sum) /* sum <= count holds here */
            return UVMLEASE_EBADVALUE;
        sum += h->counts[i];
    }
    return label_pair_check(h->lkey, h->lval);
}

static int u64_array_decode(const msgpack_object_array *a, uint64_t *dst)
{
    for (uint32_t i = 0; i < a->size; i++) {
        int rc = get_uint(&a->ptr[i], &dst[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static int hist_decode(const msgpack_object *o, ul_histogram *h)
{
    int rc = object_check(o, UL_MAX_OBJECT_KEYS);
    if (!rc)
        rc = fields_decode(o, f_hist_head, NFIELDS(f_hist_head), h);
    if (rc)
        return rc;
    const msgpack_object_array *le, *counts;
    if ((rc = array_get(o, "le_us", true, UL_HIST_BUCKETS, &le)) != 0 ||
        (rc = array_get(o, "counts", true, UL_HIST_BUCKETS, &counts)) != 0)
        return rc;
    if (le->size != counts->size)
        return UVMLEASE_EBADVALUE;
    if ((rc = u64_array_decode(le, h->le_us)) != 0 ||
        (rc = u64_array_decode(counts, h->counts)) != 0)
        return rc;
    h->n_buckets = le->size;
    rc = fields_decode(o, f_hist_tail, NFIELDS(f_hist_tail), h);
    return rc ? rc : hist_check(h);
}

static int holder_field_decode(const msgpack_object *root, ul_reply *r)
{
    const msgpack_object *h = map_get(root, "holder");
    if (!h)
        return 0;
    int rc = holder_decode(h, &r->holder);
    if (!rc)
        r->has_holder = true;
    return rc;
}

static int reply_payload_decode(const msgpack_object *root, ul_reply *r)
{
    int rc = 0;
    const msgpack_object_array *a;
    switch (r->op) {
    case UL_OP_HELLO:
    case UL_OP_PING:
        return fields_decode(root, f_rep_hello, NFIELDS(f_rep_hello), r);
    case UL_OP_ACQUIRE:
        rc = fields_decode(root, f_rep_queued, NFIELDS(f_rep_queued), r);
        if (rc)
            return rc;
        if (r->queued)
            return fields_decode(root, f_rep_position, NFIELDS(f_rep_position), r);
        return fields_decode(root, f_rep_granted, NFIELDS(f_rep_granted), r);
    case UL_OP_CANCEL:
        return fields_decode(root, f_rep_cancel, NFIELDS(f_rep_cancel), r);
    case UL_OP_LIST:
        rc = array_get(root, "uvms", true, UL_LIST_PAGE_MAX, &a);
        if (rc)
            return rc;
        if (a->size > 0) {
            r->uvms = calloc(a->size, sizeof *r->uvms);
            if (!r->uvms)
                return UVMLEASE_ENOMEM;
            r->n_uvms = a->size;
            for (uint32_t i = 0; i < a->size; i++)
                if ((rc = uvm_info_decode(&a->ptr[i], &r->uvms[i])) != 0)
                    return rc;
        }
        return fields_decode(root, f_rep_more, NFIELDS(f_rep_more), r);
    case UL_OP_SHOW: {
        const msgpack_object *info = map_get(root, "info");
        if (!info)
            return UVMLEASE_EMISSING;
        r->uvms = calloc(1, sizeof *r->uvms);
        if (!r->uvms)
            return UVMLEASE_ENOMEM;
        r->n_uvms = 1;
        return uvm_info_decode(info, &r->uvms[0]);
    }
    case UL_OP_STATS:
        rc = array_get(root, "counters", true, UL_STATS_COUNTERS_MAX, &a);
        if (rc)
            return rc;
        if (a->size > 0) {
            r->counters = calloc(a->size, sizeof *r->counters);
            if (!r->counters)
                return UVMLEASE_ENOMEM;
            r->n_counters = a->size;
            for (uint32_t i = 0; i < a->size; i++)
                if ((rc = counter_decode(&a->ptr[i], &r->counters[i])) != 0)
                    return rc;
        }
        rc = array_get(root, "hists", true, UL_STATS_HISTS_MAX, &a);
        if (rc)
            return rc;
        if (a->size > 0) {
            r->hists = calloc(a->size, sizeof *r->hists);
            if (!r->hists)
                return UVMLEASE_ENOMEM;
            r->n_hists = a->size;
            for (uint32_t i = 0; i < a->size; i++)
                if ((rc = hist_decode(&a->ptr[i], &r->hists[i])) != 0)
                    return rc;
        }
        return 0;
    case UL_OP_NONE:
        /* A success must say what succeeded. */
        return UVMLEASE_EMISSING;
    default:
        return 0;
    }
}

static int reply_from_obj(const msgpack_object *root, ul_reply *r)
{
    int rc =
        root->type == MSGPACK_OBJECT_MAP ? maps_check(root, UL_MAX_OBJECT_KEYS) : UVMLEASE_EBADTYPE;
    if (!rc)
        rc = version_decode(root);
    if (!rc)
        rc = fields_decode(root, f_rep_head, NFIELDS(f_rep_head), r);
    if (rc)
        return rc;
    r->version = UL_PROTO_VERSION;

    const msgpack_object *k = map_get(root, "kind");
    if (!k)
        return UVMLEASE_EMISSING;
    if (k->type != MSGPACK_OBJECT_STR)
        return UVMLEASE_EBADTYPE;
    r->kind =
        (ul_msg_kind)name_index(s_kind_names, UL_KIND_COUNT_, k->via.str.ptr, k->via.str.size);

    switch (r->kind) {
    case UL_MSG_REPLY:
        rc = fields_decode(root, f_rep_reply, NFIELDS(f_rep_reply), r);
        if (!rc)
            rc = holder_field_decode(root, r);
        if (!rc && r->err == 0)
            rc = reply_payload_decode(root, r);
        return rc;
    case UL_MSG_GRANT:
        return fields_decode(root, f_rep_grant, NFIELDS(f_rep_grant), r);
    case UL_MSG_ACQUIRE_FAILED:
        rc = fields_decode(root, f_rep_failed, NFIELDS(f_rep_failed), r);
        return rc ? rc : holder_field_decode(root, r);
    case UL_MSG_REVOKED:
        return fields_decode(root, f_rep_revoked, NFIELDS(f_rep_revoked), r);
    case UL_MSG_EVENT: {
        const msgpack_object *ev = map_get(root, "event");
        if (!ev)
            return UVMLEASE_EMISSING;
        rc = object_check(ev, UL_MAX_OBJECT_KEYS);
        return rc ? rc : fields_decode(ev, f_event, NFIELDS(f_event), &r->event);
    }
    default:
        return UVMLEASE_EBADVALUE;
    }
}

static int reply_from_obj_cb(const msgpack_object *root, void *out)
{
    return reply_from_obj(root, out);
}

int ul_reply_decode(const void *buf, size_t len, ul_reply *out)
{
    if (!out)
        return UVMLEASE_EINVAL;
    memset(out, 0, sizeof *out);
    int rc = decode_with(buf, len, &ul_limits_reply, reply_from_obj_cb, out);
    if (rc)
        ul_reply_free(out);
    return rc;
}

void ul_reply_free(ul_reply *rep)
{
    if (!rep)
        return;
    if (rep->uvms) {
        for (uint32_t i = 0; i < rep->n_uvms; i++) {
            free(rep->uvms[i].holders);
            free(rep->uvms[i].waiters);
        }
    }
    free(rep->uvms);
    free(rep->counters);
    free(rep->hists);
    memset(rep, 0, sizeof *rep);
}

/* ---------------------------------------------------------------- encoder */

struct enc {
    msgpack_packer pk;
    ul_buf *buf;
    size_t start; /* out->len on entry, restored on failure */
    size_t max;   /* largest message allowed */
    int err;      /* why the writer refused, for the packer's bare -1 */
};

static int enc_write(void *data, const char *p, size_t n)
{
    struct enc *e = data;
    ul_buf *b = e->buf;
    if (n > e->max - (b->len - e->start)) {
        e->err = UVMLEASE_ETOOLARGE;
        return -1;
    }
    if (n > b->cap - b->len) {
        size_t need = b->len + n;
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            e->err = UVMLEASE_ENOMEM;
            return -1;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void enc_init(struct enc *e, ul_buf *out, size_t max)
{
    e->buf = out;
    e->start = out->len;
    e->max = max;
    e->err = 0;
    msgpack_packer_init(&e->pk, e, enc_write);
}

static int enc_rc(struct enc *e, int packrc)
{
    if (packrc == 0)
        return 0;
    return e->err ? e->err : UVMLEASE_ENOMEM;
}

static int put_map(struct enc *e, uint32_t n)
{
    return enc_rc(e, msgpack_pack_map(&e->pk, n));
}
static int put_array(struct enc *e, uint32_t n)
{
    return enc_rc(e, msgpack_pack_array(&e->pk, n));
}
static int put_u64(struct enc *e, uint64_t v)
{
    return enc_rc(e, msgpack_pack_uint64(&e->pk, v));
}
static int put_i64(struct enc *e, int64_t v)
{
    return enc_rc(e, msgpack_pack_int64(&e->pk, v));
}
static int put_bool(struct enc *e, bool v)
{
    return enc_rc(e, v ? msgpack_pack_true(&e->pk) : msgpack_pack_false(&e->pk));
}
static int put_strn(struct enc *e, const char *s, size_t n)
{
    return enc_rc(e, msgpack_pack_str_with_body(&e->pk, s, n));
}
static int put_str(struct enc *e, const char *s)
{
    return put_strn(e, s, strlen(s));
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

/* Whether an F_OMIT0 field holds its zero value. */
static bool field_is_zero(const field *f, const void *base)
{
    const char *p = (const char *)base + f->off;
    if (is_string_kind(f->kind))
        return p[0] == '\0';
    if (is_u64_storage(f->kind)) {
        uint64_t u;
        memcpy(&u, p, sizeof u);
        return u == 0;
    }
    if (is_uint_kind(f->kind)) {
        uint32_t u;
        memcpy(&u, p, sizeof u);
        return u == 0;
    }
    switch (f->kind) {
    case FK_OP: {
        ul_op op;
        memcpy(&op, p, sizeof op);
        return op == UL_OP_NONE;
    }
    case FK_BOOL: {
        bool b;
        memcpy(&b, p, sizeof b);
        return !b;
    }
    default:
        return false;
    }
}

static bool field_written(const field *f, const void *base)
{
    return !(f->flags & F_OMIT0) || !field_is_zero(f, base);
}

static uint32_t fields_count(const field *fs, size_t n, const void *base)
{
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += field_written(&fs[i], base);
    return c;
}

/* Validate one field of the struct and write key and value. */
static int field_encode(struct enc *e, const field *f, const void *base)
{
    const char *p = (const char *)base + f->off;
    if (is_string_kind(f->kind)) {
        size_t len = strnlen(p, (size_t)f->cap + 1);
        if (len > f->cap) /* not terminated within its array */
            return f->kind == FK_UVM || f->kind == FK_UVM0 ? UVMLEASE_EBADUVM : UVMLEASE_EBADTEXT;
        TRY(string_check(f, p, len));
        TRY(put_str(e, f->key));
        return put_strn(e, p, len);
    }
    if (is_uint_kind(f->kind)) {
        uint64_t u;
        if (is_u64_storage(f->kind)) {
            memcpy(&u, p, sizeof u);
        } else {
            uint32_t u32;
            memcpy(&u32, p, sizeof u32);
            u = u32;
        }
        TRY(uint_check(f, u));
        TRY(put_str(e, f->key));
        return put_u64(e, u);
    }
    switch (f->kind) {
    case FK_TIMEOUT: {
        int64_t i;
        memcpy(&i, p, sizeof i);
        TRY(timeout_check(i));
        TRY(put_str(e, f->key));
        return put_i64(e, i);
    }
    case FK_BOOL: {
        bool b;
        memcpy(&b, p, sizeof b);
        TRY(put_str(e, f->key));
        return put_bool(e, b);
    }
    case FK_CLASS: {
        bool conf;
        memcpy(&conf, p, sizeof conf);
        TRY(put_str(e, f->key));
        return put_str(e, conf ? "confidential" : "standard");
    }
    case FK_MODE: {
        ul_force_mode m;
        memcpy(&m, p, sizeof m);
        if ((int)m <= 0 || (int)m >= UL_MODE_COUNT_)
            return UVMLEASE_EBADVALUE;
        TRY(put_str(e, f->key));
        return put_str(e, s_mode_names[m]);
    }
    case FK_EVTYPE: {
        ul_event_type t;
        memcpy(&t, p, sizeof t);
        const char *name = ul_event_name(t);
        if (!name)
            return UVMLEASE_EBADVALUE;
        TRY(put_str(e, f->key));
        return put_str(e, name);
    }
    default: { /* FK_OP */
        ul_op op;
        memcpy(&op, p, sizeof op);
        const char *name = ul_op_name(op);
        if (!name)
            return UVMLEASE_EUNKNOWNOP;
        TRY(put_str(e, f->key));
        return put_str(e, name);
    }
    }
}

static int fields_encode(struct enc *e, const field *fs, size_t n, const void *base)
{
    for (size_t i = 0; i < n; i++)
        if (field_written(&fs[i], base))
            TRY(field_encode(e, &fs[i], base));
    return 0;
}

/* A whole flat object: header and fields. */
static int object_encode(struct enc *e, const field *fs, size_t n, const void *base)
{
    TRY(put_map(e, fields_count(fs, n, base)));
    return fields_encode(e, fs, n, base);
}

static int request_encode(struct enc *e, const ul_request *r)
{
    const char *opname = ul_op_name(r->op);
    if (!opname)
        return UVMLEASE_EUNKNOWNOP;
    if (r->rid == 0)
        return UVMLEASE_EBADVALUE;
    const struct field_set *fs = &s_req_fields[r->op];
    TRY(put_map(e, 3 + fields_count(fs->f, fs->n, r)));
    TRY(put_str(e, "v"));
    TRY(put_u64(e, UL_PROTO_VERSION));
    TRY(put_str(e, "op"));
    TRY(put_str(e, opname));
    TRY(put_str(e, "rid"));
    TRY(put_u64(e, r->rid));
    return fields_encode(e, fs->f, fs->n, r);
}

int ul_request_encode(const ul_request *req, ul_buf *out)
{
    if (!req || !out)
        return UVMLEASE_EINVAL;
    struct enc e;
    enc_init(&e, out, UL_MAX_REQUEST);
    int rc = request_encode(&e, req);
    if (rc)
        out->len = e.start;
    return rc;
}

static int holder_encode(struct enc *e, const ul_holder *h)
{
    if (h->n_phases > UL_PHASES_MAX)
        return UVMLEASE_ELIMIT;
    uint32_t n = fields_count(f_holder, NFIELDS(f_holder), h) + (h->n_phases > 0);
    TRY(put_map(e, n));
    TRY(fields_encode(e, f_holder, NFIELDS(f_holder), h));
    if (h->n_phases > 0) {
        TRY(put_str(e, "phases"));
        TRY(put_array(e, h->n_phases));
        for (uint32_t i = 0; i < h->n_phases; i++)
            TRY(object_encode(e, f_phase_rec, NFIELDS(f_phase_rec), &h->phases[i]));
    }
    return 0;
}

static int uvm_info_encode(struct enc *e, const ul_uvm_info *u, bool show)
{
    if (u->n_holders > UL_MAX_CONTAINER || u->n_waiters > UL_SHOW_WAITERS_MAX)
        return UVMLEASE_ELIMIT;
    if ((u->n_holders && !u->holders) || (u->n_waiters && !u->waiters))
        return UVMLEASE_EINVAL;
    bool waiters = show || u->n_waiters > 0;
    uint32_t n =
        fields_count(f_uvm_info, NFIELDS(f_uvm_info), u) + 1 + waiters + u->has_last_release;
    TRY(put_map(e, n));
    TRY(fields_encode(e, f_uvm_info, NFIELDS(f_uvm_info), u));
    TRY(put_str(e, "holders"));
    TRY(put_array(e, u->n_holders));
    for (uint32_t i = 0; i < u->n_holders; i++)
        TRY(holder_encode(e, &u->holders[i]));
    if (waiters) {
        TRY(put_str(e, "waiters"));
        TRY(put_array(e, u->n_waiters));
        for (uint32_t i = 0; i < u->n_waiters; i++)
            TRY(object_encode(e, f_waiter, NFIELDS(f_waiter), &u->waiters[i]));
    }
    if (u->has_last_release) {
        TRY(put_str(e, "last_release"));
        TRY(object_encode(e, f_last_release, NFIELDS(f_last_release), u));
    }
    return 0;
}

static int counter_encode(struct enc *e, const ul_counter *c)
{
    TRY(label_pair_check(c->lkey, c->lval));
    return object_encode(e, f_counter, NFIELDS(f_counter), c);
}

static int hist_encode(struct enc *e, const ul_histogram *h)
{
    TRY(hist_check(h));
    uint32_t n = fields_count(f_hist_head, NFIELDS(f_hist_head), h) + 2 +
                 fields_count(f_hist_tail, NFIELDS(f_hist_tail), h);
    TRY(put_map(e, n));
    TRY(fields_encode(e, f_hist_head, NFIELDS(f_hist_head), h));
    TRY(put_str(e, "le_us"));
    TRY(put_array(e, h->n_buckets));
    for (uint32_t i = 0; i < h->n_buckets; i++)
        TRY(put_u64(e, h->le_us[i]));
    TRY(put_str(e, "counts"));
    TRY(put_array(e, h->n_buckets));
    for (uint32_t i = 0; i < h->n_buckets; i++)
        TRY(put_u64(e, h->counts[i]));
    return fields_encode(e, f_hist_tail, NFIELDS(f_hist_tail), h);
}

/* Keys of the payload of a successful reply to r->op. */
static int payload_count(const ul_reply *r, uint32_t *n)
{
    switch (r->op) {
    case UL_OP_HELLO:
    case UL_OP_PING:
        *n = fields_count(f_rep_hello, NFIELDS(f_rep_hello), r);
        return 0;
    case UL_OP_ACQUIRE:
        *n = 1 + (r->queued ? NFIELDS(f_rep_position) : NFIELDS(f_rep_granted));
        return 0;
    case UL_OP_CANCEL:
        *n = fields_count(f_rep_cancel, NFIELDS(f_rep_cancel), r);
        return 0;
    case UL_OP_LIST:
        if (r->n_uvms > UL_LIST_PAGE_MAX)
            return UVMLEASE_ELIMIT;
        *n = 1 + fields_count(f_rep_more, NFIELDS(f_rep_more), r);
        return 0;
    case UL_OP_SHOW:
        if (r->n_uvms != 1)
            return UVMLEASE_EBADVALUE;
        *n = 1;
        return 0;
    case UL_OP_STATS:
        if (r->n_counters > UL_STATS_COUNTERS_MAX || r->n_hists > UL_STATS_HISTS_MAX)
            return UVMLEASE_ELIMIT;
        *n = 2;
        return 0;
    case UL_OP_NONE:
        return UVMLEASE_EMISSING;
    default:
        *n = 0;
        return 0;
    }
}

static int payload_encode(struct enc *e, const ul_reply *r)
{
    switch (r->op) {
    case UL_OP_HELLO:
    case UL_OP_PING:
        return fields_encode(e, f_rep_hello, NFIELDS(f_rep_hello), r);
    case UL_OP_ACQUIRE:
        TRY(fields_encode(e, f_rep_queued, NFIELDS(f_rep_queued), r));
        if (r->queued)
            return fields_encode(e, f_rep_position, NFIELDS(f_rep_position), r);
        return fields_encode(e, f_rep_granted, NFIELDS(f_rep_granted), r);
    case UL_OP_CANCEL:
        return fields_encode(e, f_rep_cancel, NFIELDS(f_rep_cancel), r);
    case UL_OP_LIST:
        if (r->n_uvms && !r->uvms)
            return UVMLEASE_EINVAL;
        TRY(put_str(e, "uvms"));
        TRY(put_array(e, r->n_uvms));
        for (uint32_t i = 0; i < r->n_uvms; i++)
            TRY(uvm_info_encode(e, &r->uvms[i], false));
        return fields_encode(e, f_rep_more, NFIELDS(f_rep_more), r);
    case UL_OP_SHOW:
        if (!r->uvms)
            return UVMLEASE_EINVAL;
        TRY(put_str(e, "info"));
        return uvm_info_encode(e, &r->uvms[0], true);
    case UL_OP_STATS:
        if ((r->n_counters && !r->counters) || (r->n_hists && !r->hists))
            return UVMLEASE_EINVAL;
        TRY(put_str(e, "counters"));
        TRY(put_array(e, r->n_counters));
        for (uint32_t i = 0; i < r->n_counters; i++)
            TRY(counter_encode(e, &r->counters[i]));
        TRY(put_str(e, "hists"));
        TRY(put_array(e, r->n_hists));
        for (uint32_t i = 0; i < r->n_hists; i++)
            TRY(hist_encode(e, &r->hists[i]));
        return 0;
    default:
        return 0;
    }
}

static int reply_encode(struct enc *e, const ul_reply *r)
{
    if ((int)r->kind <= 0 || (int)r->kind >= UL_KIND_COUNT_)
        return UVMLEASE_EBADVALUE;
    const field *kf = NULL;
    size_t kn = 0;
    uint32_t extra = 0; /* keys after the kind's own fields */
    switch (r->kind) {
    case UL_MSG_REPLY:
        kf = f_rep_reply;
        kn = NFIELDS(f_rep_reply);
        extra = r->has_holder;
        if (r->err == 0) {
            uint32_t pn;
            TRY(payload_count(r, &pn));
            extra += pn;
        }
        break;
    case UL_MSG_GRANT:
        kf = f_rep_grant;
        kn = NFIELDS(f_rep_grant);
        break;
    case UL_MSG_ACQUIRE_FAILED:
        kf = f_rep_failed;
        kn = NFIELDS(f_rep_failed);
        extra = r->has_holder;
        break;
    case UL_MSG_REVOKED:
        kf = f_rep_revoked;
        kn = NFIELDS(f_rep_revoked);
        break;
    default: /* UL_MSG_EVENT */
        extra = 1;
        break;
    }

    TRY(put_map(e, 2 + fields_count(f_rep_head, NFIELDS(f_rep_head), r) + fields_count(kf, kn, r) +
                       extra));
    TRY(put_str(e, "v"));
    TRY(put_u64(e, UL_PROTO_VERSION));
    TRY(fields_encode(e, f_rep_head, NFIELDS(f_rep_head), r));
    TRY(put_str(e, "kind"));
    TRY(put_str(e, s_kind_names[r->kind]));
    TRY(fields_encode(e, kf, kn, r));
    if (r->kind == UL_MSG_EVENT) {
        TRY(put_str(e, "event"));
        return object_encode(e, f_event, NFIELDS(f_event), &r->event);
    }
    if (r->has_holder && (r->kind == UL_MSG_REPLY || r->kind == UL_MSG_ACQUIRE_FAILED)) {
        TRY(put_str(e, "holder"));
        TRY(holder_encode(e, &r->holder));
    }
    if (r->kind == UL_MSG_REPLY && r->err == 0)
        return payload_encode(e, r);
    return 0;
}

int ul_reply_encode(const ul_reply *rep, ul_buf *out)
{
    if (!rep || !out)
        return UVMLEASE_EINVAL;
    struct enc e;
    enc_init(&e, out, UL_MAX_REPLY);
    int rc = reply_encode(&e, rep);
    if (rc)
        out->len = e.start;
    return rc;
}

void ul_buf_free(ul_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
