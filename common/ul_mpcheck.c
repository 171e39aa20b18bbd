/*
 * ul_mpcheck.c — bounds-check raw msgpack bytes before msgpack-c sees them.
 *
 * msgpack-c reserves count x 24 (array) or count x 48 (map) bytes the
 * moment it reads a container header, trusting the count. This walker reads
 * only headers, allocates nothing, never recurses on peer data, and refuses
 * any count that the remaining bytes could not possibly hold, so that what
 * msgpack-c later allocates is bounded by the message size.
 */
#include "ul_proto.h"

#include <stddef.h>
#include <stdint.h>

/*
 * msgpack-c's own unpacker keeps a fixed stack of 32 open containers
 * (MSGPACK_EMBED_STACK_SIZE); deeper input would fail there anyway, so no
 * limit may exceed it.
 */
#define UL_MP_STACK 32

/* Longest str/bin/ext payload. Above every text field's limit, so that an
 * over-long field is reported by its field rule (bad-uvm-id, bad-text)
 * rather than as a structural error, yet small enough to bound waste. */
#define UL_MP_MAX_STR 1024

const ul_mp_limits ul_limits_request = {
    .max_size = UL_MAX_REQUEST,
    .max_depth = UL_MAX_DEPTH_REQUEST,
    .max_entries = UL_MAX_MAP_REQUEST,
    .max_str = UL_MP_MAX_STR,
};

const ul_mp_limits ul_limits_reply = {
    .max_size = UL_MAX_REPLY,
    .max_depth = UL_MAX_DEPTH_REPLY,
    .max_entries = UL_MAX_CONTAINER,
    .max_str = UL_MP_MAX_STR,
};

/* Big-endian unsigned of n (1, 2, 4 or 8) bytes. */
static uint64_t be_read(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/*
 * Whether `need` more bytes for the current element fit in what is left
 * after reserving one byte for each pending element.
 */
static int fits(size_t len, size_t off, uint64_t pending, uint64_t need)
{
    size_t avail = len - off;
    return avail >= pending && need <= avail - pending;
}

/* What one header byte announces. */
enum elem_class {
    EC_FIXED,     /* scalar with `fixed` payload bytes after the header byte */
    EC_STR,       /* str/bin: `lenbytes`-byte length, then payload */
    EC_EXT,       /* ext8/16/32: `lenbytes`-byte length, a type byte, payload */
    EC_FIXEXT,    /* fixext: a type byte and `fixed` payload bytes */
    EC_ARRAY,     /* `lenbytes`-byte count (0: count in the header byte) */
    EC_MAP,       /* same, count of key/value pairs */
    EC_MALFORMED, /* 0xc1, never used by msgpack */
};

struct elem_info {
    enum elem_class cls;
    unsigned fixed;    /* EC_FIXED / EC_FIXEXT payload bytes */
    unsigned lenbytes; /* bytes of the length / count field */
    uint32_t inline_n; /* fixstr length, fixarray / fixmap count */
};

/* Header bytes 0xc0-0xdf, in order. */
static const struct elem_info s_c0_df[32] = {
    {EC_FIXED, 0, 0, 0},     /* c0 nil */
    {EC_MALFORMED, 0, 0, 0}, /* c1 never used */
    {EC_FIXED, 0, 0, 0},     /* c2 false */
    {EC_FIXED, 0, 0, 0},     /* c3 true */
    {EC_STR, 0, 1, 0},       /* c4 bin8 */
    {EC_STR, 0, 2, 0},       /* c5 bin16 */
    {EC_STR, 0, 4, 0},       /* c6 bin32 */
    {EC_EXT, 0, 1, 0},       /* c7 ext8 */
    {EC_EXT, 0, 2, 0},       /* c8 ext16 */
    {EC_EXT, 0, 4, 0},       /* c9 ext32 */
    {EC_FIXED, 4, 0, 0},     /* ca float32 */
    {EC_FIXED, 8, 0, 0},     /* cb float64 */
    {EC_FIXED, 1, 0, 0},     /* cc uint8 */
    {EC_FIXED, 2, 0, 0},     /* cd uint16 */
    {EC_FIXED, 4, 0, 0},     /* ce uint32 */
    {EC_FIXED, 8, 0, 0},     /* cf uint64 */
    {EC_FIXED, 1, 0, 0},     /* d0 int8 */
    {EC_FIXED, 2, 0, 0},     /* d1 int16 */
    {EC_FIXED, 4, 0, 0},     /* d2 int32 */
    {EC_FIXED, 8, 0, 0},     /* d3 int64 */
    {EC_FIXEXT, 1, 0, 0},    /* d4 fixext1 */
    {EC_FIXEXT, 2, 0, 0},    /* d5 fixext2 */
    {EC_FIXEXT, 4, 0, 0},    /* d6 fixext4 */
    {EC_FIXEXT, 8, 0, 0},    /* d7 fixext8 */
    {EC_FIXEXT, 16, 0, 0},   /* d8 fixext16 */
    {EC_STR, 0, 1, 0},       /* d9 str8 */
    {EC_STR, 0, 2, 0},       /* da str16 */
    {EC_STR, 0, 4, 0},       /* db str32 */
    {EC_ARRAY, 0, 2, 0},     /* dc array16 */
    {EC_ARRAY, 0, 4, 0},     /* dd array32 */
    {EC_MAP, 0, 2, 0},       /* de map16 */
    {EC_MAP, 0, 4, 0},       /* df map32 */
};

static struct elem_info classify(uint8_t b)
{
    struct elem_info e = {EC_FIXED, 0, 0, 0};
    if (b <= 0x7f || b >= 0xe0)
        return e; /* positive / negative fixint */
    if (b >= 0xc0)
        return s_c0_df[b - 0xc0];
    /* fixmap 0x80-0x8f, fixarray 0x90-0x9f, fixstr 0xa0-0xbf */
    e.cls = b <= 0x8f ? EC_MAP : b <= 0x9f ? EC_ARRAY : EC_STR;
    e.inline_n = b <= 0x9f ? b & 0x0fu : b & 0x1fu;
    return e;
}

/* Where the walk over the bytes stands. */
struct walk {
    size_t len, off;
    /* Elements announced but not yet read, over all open containers plus
     * the top-level object. Each needs at least one byte, so pending may
     * never exceed the bytes left: this bounds every count by the bytes
     * that are really there, not just by the per-container limit. */
    uint64_t pending;
    /* Elements still to read in each open container (a map counts keys and
     * values separately). */
    uint64_t left[UL_MP_STACK];
    unsigned depth;
};

/* Check what follows one header with count or length n (the payload, or
 * the elements a container announces) and step past it. 0 or a status. */
static int s_payload(struct walk *w, const struct elem_info *e, uint64_t n, const ul_mp_limits *lim)
{
    switch (e->cls) {
    case EC_ARRAY:
    case EC_MAP: {
        if (n > lim->max_entries)
            return UVMLEASE_ELIMIT;
        uint64_t elems = e->cls == EC_MAP ? 2 * n : n;
        if (!fits(w->len, w->off, w->pending, elems))
            return UVMLEASE_ETRUNCATED;
        if (elems > 0) {
            w->left[w->depth++] = elems;
            w->pending += elems;
        }
        return 0;
    }
    case EC_STR:
    case EC_EXT: {
        if (n > lim->max_str)
            return UVMLEASE_ELIMIT;
        uint64_t need = n + (e->cls == EC_EXT ? 1 : 0);
        if (!fits(w->len, w->off, w->pending, need))
            return UVMLEASE_ETRUNCATED;
        w->off += (size_t)need;
        return 0;
    }
    case EC_FIXEXT:
        if (e->fixed > lim->max_str)
            return UVMLEASE_ELIMIT;
        if (!fits(w->len, w->off, w->pending, 1 + (uint64_t)e->fixed))
            return UVMLEASE_ETRUNCATED;
        w->off += 1 + e->fixed;
        return 0;
    default: /* EC_FIXED */
        if (!fits(w->len, w->off, w->pending, e->fixed))
            return UVMLEASE_ETRUNCATED;
        w->off += e->fixed;
        return 0;
    }
}

int ul_mp_check(const void *buf, size_t len, const ul_mp_limits *lim)
{
    if (!lim || (!buf && len > 0))
        return UVMLEASE_EINVAL;
    if (len > lim->max_size)
        return UVMLEASE_ETOOLARGE;

    const uint8_t *p = buf;
    unsigned max_depth = lim->max_depth < UL_MP_STACK ? lim->max_depth : UL_MP_STACK;
    struct walk w = {.len = len, .pending = 1};
    for (;;) {
        if (w.off >= len)
            return UVMLEASE_ETRUNCATED;
        uint8_t b = p[w.off++];
        w.pending--;
        if (w.depth > 0)
            w.left[w.depth - 1]--;

        struct elem_info e = classify(b);
        if (e.cls == EC_MALFORMED)
            return UVMLEASE_EMALFORMED;
        /* Depth is known from the header byte alone. */
        if ((e.cls == EC_ARRAY || e.cls == EC_MAP) && w.depth + 1 > max_depth)
            return UVMLEASE_ETOODEEP;

        uint64_t n = e.inline_n;
        if (e.lenbytes > 0) {
            if (len - w.off < e.lenbytes)
                return UVMLEASE_ETRUNCATED;
            n = be_read(p + w.off, e.lenbytes);
            w.off += e.lenbytes;
        }
        int rc = s_payload(&w, &e, n, lim);
        if (rc)
            return rc;

        while (w.depth > 0 && w.left[w.depth - 1] == 0)
            w.depth--;
        if (w.depth == 0 && w.pending == 0)
            break;
    }
    return w.off == len ? 0 : UVMLEASE_ETRAILING;
}
