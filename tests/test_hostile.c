// ctest-timeout: 120
/*
 * test_hostile.c — hostile bytes: every one rejected with its documented
 * code, and proof that decoding them never has more than 1 MiB allocated.
 *
 * The proof is a malloc interposer linked into this executable: it wraps
 * glibc's allocator, tracks the bytes currently allocated and, while armed,
 * the peak and the largest single request. It also shows the opposite:
 * handing the same bytes straight to msgpack-c makes it ask for gigabytes.
 * RSS would prove nothing (an untouched 8 GB block is not resident), nor
 * would mallinfo2() (current, not peak, and 0 once msgpack-c has freed).
 *
 * Under AddressSanitizer the interposer cannot coexist with ASan's own
 * allocator, and its shadow memory and quarantine make address-space and
 * peak figures meaningless: those tests are skipped there; the decoding
 * tests still run.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <malloc.h>
#include <msgpack.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ul_proto.h"
#include "ul_text.h"

TestSuite(hostile, .timeout = 60);

#define MIB ((size_t)1 << 20)

/* ------------------------------------------------------ the interposer */

#ifndef UL_SANITIZED

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

/* Each block carries its size and its distance from glibc's block start,
 * just below the pointer handed out; 16 bytes keep malloc's alignment. */
typedef struct blk_hdr {
    size_t size;
    size_t offset;
} blk_hdr;
#define HDR_SIZE 16

static _Atomic size_t s_cur;     /* bytes allocated now */
static _Atomic size_t s_peak;    /* highest s_cur while armed */
static _Atomic size_t s_largest; /* largest single request while armed */
static _Atomic int s_armed;

static void peak_update(_Atomic size_t *peak, size_t v)
{
    size_t p = atomic_load(peak);
    while (v > p && !atomic_compare_exchange_weak(peak, &p, v))
        ;
}

static void on_request(size_t n)
{
    if (atomic_load(&s_armed))
        peak_update(&s_largest, n);
}

static void on_alloc(size_t n)
{
    size_t cur = atomic_fetch_add(&s_cur, n) + n;
    if (atomic_load(&s_armed))
        peak_update(&s_peak, cur);
}

static void *finish(char *base, size_t offset, size_t n)
{
    if (!base)
        return NULL;
    blk_hdr *h = (blk_hdr *)(void *)(base + offset - HDR_SIZE);
    h->size = n;
    h->offset = offset;
    on_alloc(n);
    return base + offset;
}

static blk_hdr *hdr_of(void *p)
{
    return (blk_hdr *)(void *)((char *)p - HDR_SIZE);
}

void *malloc(size_t n)
{
    on_request(n);
    if (n > SIZE_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    return finish(__libc_malloc(n + HDR_SIZE), HDR_SIZE, n);
}

__attribute__((noinline)) void free(void *p)
{
    if (!p)
        return;
    blk_hdr *h = hdr_of(p);
    atomic_fetch_sub(&s_cur, h->size);
    __libc_free((char *)p - h->offset);
}

void *calloc(size_t n, size_t m)
{
    if (m && n > SIZE_MAX / 2 / m) {
        on_request(SIZE_MAX);
        errno = ENOMEM;
        return NULL;
    }
    on_request(n * m);
    return finish(__libc_calloc(1, n * m + HDR_SIZE), HDR_SIZE, n * m);
}

void *memalign(size_t align, size_t n)
{
    if (align <= HDR_SIZE)
        return malloc(n);
    on_request(n);
    if (n > SIZE_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    /* The header sits in the padding just below the aligned pointer. */
    return finish(__libc_memalign(align, n + align), align, n);
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    blk_hdr *h = hdr_of(p);
    size_t old = h->size;
    if (h->offset != HDR_SIZE) {
        void *q = malloc(n);
        if (q) {
            memcpy(q, p, old < n ? old : n);
            free(p);
        }
        return q;
    }
    on_request(n);
    if (n > SIZE_MAX / 2) {
        errno = ENOMEM;
        return NULL;
    }
    char *base = __libc_realloc((char *)p - HDR_SIZE, n + HDR_SIZE);
    if (!base)
        return NULL;
    atomic_fetch_sub(&s_cur, old);
    return finish(base, HDR_SIZE, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align < sizeof(void *) || (align & (align - 1)))
        return EINVAL;
    void *p = memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    return memalign(align, n);
}

void *valloc(size_t n)
{
    return memalign((size_t)sysconf(_SC_PAGESIZE), n);
}

void *pvalloc(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return memalign(pg, (n + pg - 1) / pg * pg);
}

size_t malloc_usable_size(void *p)
{
    return p ? hdr_of(p)->size : 0;
}

/* Start measuring: the peak counts from what is allocated now. */
static size_t arm(void)
{
    size_t base = atomic_load(&s_cur);
    atomic_store(&s_peak, base);
    atomic_store(&s_largest, 0);
    atomic_store(&s_armed, 1);
    return base;
}

static void disarm(void)
{
    atomic_store(&s_armed, 0);
}

#endif /* UL_SANITIZED */

/* ----------------------------------------------------------- the corpus */

typedef struct hostile {
    char name[64];
    unsigned char *bytes;
    size_t len;
    int want_req; /* code from ul_request_decode */
    int want_rep; /* code from ul_reply_decode; -1: any error */
} hostile;

#define CORPUS_MAX 512
static hostile s_corpus[CORPUS_MAX];
static size_t s_ncorpus;

static void add(const char *name, const void *bytes, size_t len, int want_req, int want_rep)
{
    cr_assert_lt(s_ncorpus, (size_t)CORPUS_MAX);
    hostile *h = &s_corpus[s_ncorpus++];
    snprintf(h->name, sizeof h->name, "%s", name);
    h->bytes = malloc(len ? len : 1);
    cr_assert_not_null(h->bytes);
    if (len)
        memcpy(h->bytes, bytes, len);
    h->len = len;
    h->want_req = want_req;
    h->want_rep = want_rep;
}

/* A string literal and its length without the final NUL. */
#define L(lit) (lit), (sizeof(lit) - 1)

/* Structural: both decoders must answer the same. */
static void add_both(const char *name, const void *bytes, size_t len, int want)
{
    add(name, bytes, len, want, want);
}

static size_t encode_req(const ul_request *r, unsigned char *out, size_t outsz)
{
    ul_buf b = {0};
    cr_assert_eq(ul_request_encode(r, &b), 0);
    cr_assert_leq(b.len, outsz);
    memcpy(out, b.data, b.len);
    size_t n = b.len;
    ul_buf_free(&b);
    return n;
}

static void valid_acquire(ul_request *r)
{
    memset(r, 0, sizeof *r);
    r->op = UL_OP_ACQUIRE;
    r->rid = 41;
    strcpy(r->uvm, "adc8be22880f1a790847d93c92ff310df72197bea86398b8b575877ea3ffa0c0@vm");
    r->confidential = true;
    r->timeout_ms = 30000;
    strcpy(r->label, "ctr-1");
}

static void valid_force(ul_request *r)
{
    memset(r, 0, sizeof *r);
    r->op = UL_OP_FORCE_RELEASE;
    r->rid = 70000;
    strcpy(r->uvm, "uvm-7@vm");
    r->mode = UL_FORCE_KILL;
    r->pid = 4242;
    strcpy(r->reason, "hung in guest-create");
}

/* Pack {"v":1,"op":op,"rid":1, key:<raw value bytes>} by hand. */
static size_t with_field(const char *op, const char *key, const void *val, size_t vlen,
                         const char *key2, const void *val2, size_t vlen2, unsigned char *out)
{
    size_t n = 0;
    out[n++] = (unsigned char)(0x80 | (3 + (key ? 1 : 0) + (key2 ? 1 : 0)));
    memcpy(out + n, "\xa1v\x01\xa2op", 6);
    n += 6;
    out[n++] = (unsigned char)(0xa0 | strlen(op));
    memcpy(out + n, op, strlen(op));
    n += strlen(op);
    memcpy(out + n, "\xa3rid\x01", 5);
    n += 5;
    const char *keys[2] = {key, key2};
    const void *vals[2] = {val, val2};
    size_t vlens[2] = {vlen, vlen2};
    for (int i = 0; i < 2; i++) {
        if (!keys[i])
            continue;
        out[n++] = (unsigned char)(0xa0 | strlen(keys[i]));
        memcpy(out + n, keys[i], strlen(keys[i]));
        n += strlen(keys[i]);
        memcpy(out + n, vals[i], vlens[i]);
        n += vlens[i];
    }
    return n;
}

static void build_corpus(void)
{
    unsigned char buf[8192], tmp[8192];
    size_t n;
    s_ncorpus = 0;

    /* The bombs. */
    add_both("array32 16M (dd 00 ff ff ff)", L("\xdd\x00\xff\xff\xff"), UVMLEASE_ELIMIT);
    add_both("array32 268M (dd 0f ff ff ff)", L("\xdd\x0f\xff\xff\xff"), UVMLEASE_ELIMIT);
    add_both("array32 4G (dd ff ff ff ff)", L("\xdd\xff\xff\xff\xff"), UVMLEASE_ELIMIT);
    add_both("map32 16M entries", L("\xdf\x01\x00\x00\x00"), UVMLEASE_ELIMIT);
    add_both("map32 4G entries", L("\xdf\xff\xff\xff\xff"), UVMLEASE_ELIMIT);
    add_both("map16 65535 entries", L("\xde\xff\xff"), UVMLEASE_ELIMIT);
    add_both("str32 4 GiB", L("\xdb\xff\xff\xff\xff"), UVMLEASE_ELIMIT);
    add_both("bin32 4 GiB", L("\xc6\xff\xff\xff\xff"), UVMLEASE_ELIMIT);
    add_both("ext32 4 GiB", L("\xc9\xff\xff\xff\xff\x01"), UVMLEASE_ELIMIT);
    add_both("str32 4 GiB as a value", L("\x81\xa3uvm\xdb\xff\xff\xff\xff"), UVMLEASE_ELIMIT);
    for (int i = 0; i < 31; i++)
        memcpy(buf + 5 * i, "\xdd\x01\x00\x00\x00", 5);
    add_both("31 nested array32 of 16M", buf, 155, UVMLEASE_ELIMIT);
    for (int i = 0; i < 31; i++)
        memcpy(buf + 5 * i, "\xdd\x00\x00\x00\x01", 5);
    add_both("31 nested array32 of 1", buf, 155, UVMLEASE_ETOODEEP);
    memset(buf, 0x91, 200);
    buf[200] = 0x01;
    add_both("200 nested fixarrays", buf, 201, UVMLEASE_ETOODEEP);
    add("request map nested 3 deep", L("\x81\xa1x\x81\xa1y\x81\xa1z\x01"), UVMLEASE_ETOODEEP,
        UVMLEASE_EMISSING);
    add("request map of 33 entries", L("\xde\x00\x21"), UVMLEASE_ELIMIT, UVMLEASE_ETRUNCATED);
    add_both("fixarray 15 with 3 bytes", L("\x9f\x01\x02\x03"), UVMLEASE_ETRUNCATED);
    add_both("map 2 short", L("\x82\xa1v\x01\xa1x"), UVMLEASE_ETRUNCATED);
    add_both("str8 longer than the rest", L("\x81\xa1x\xd9\x20xyz"), UVMLEASE_ETRUNCATED);
    add_both("reserved 0xc1", L("\xc1"), UVMLEASE_EMALFORMED);
    add_both("0xc1 as a value", L("\x81\xa1x\xc1"), UVMLEASE_EMALFORMED);
    add_both("empty", L(""), UVMLEASE_ETRUNCATED);
    add_both("a lone map header", L("\x83"), UVMLEASE_ETRUNCATED);
    add_both("array32 header cut", L("\xdd\x00\x00"), UVMLEASE_ETRUNCATED);
    add_both("uint64 cut", L("\xcf\x00\x00\x00"), UVMLEASE_ETRUNCATED);
    add_both("float64 cut", L("\xcb\x00"), UVMLEASE_ETRUNCATED);
    add_both("fixext16 cut", L("\xd8\x01\x00"), UVMLEASE_ETRUNCATED);

    memset(buf, 0, 5000);
    add("4097 bytes", buf, UL_MAX_REQUEST + 1, UVMLEASE_ETOOLARGE, UVMLEASE_ETRAILING);

    /* Every prefix of valid requests is truncated; one byte more is
     * trailing. */
    ul_request r;
    valid_acquire(&r);
    n = encode_req(&r, buf, sizeof buf);
    for (size_t k = 0; k < n; k++) {
        char name[64];
        snprintf(name, sizeof name, "acquire prefix %zu/%zu", k, n);
        add_both(name, buf, k, UVMLEASE_ETRUNCATED);
    }
    add("acquire itself", buf, n, 0, UVMLEASE_EMISSING);
    buf[n] = 0x00;
    add_both("acquire + 1 byte", buf, n + 1, UVMLEASE_ETRAILING);
    memcpy(buf + n, buf, n);
    add_both("acquire twice", buf, 2 * n, UVMLEASE_ETRAILING);
    valid_force(&r);
    n = encode_req(&r, buf, sizeof buf);
    for (size_t k = 0; k < n; k++) {
        char name[64];
        snprintf(name, sizeof name, "force-release prefix %zu/%zu", k, n);
        add_both(name, buf, k, UVMLEASE_ETRUNCATED);
    }

    /* Wrong field types, unknown ops, missing fields. */
    n = with_field("release", "lease", "\xa1\x39", 2, NULL, NULL, 0, buf);
    add("lease as a string", buf, n, UVMLEASE_EBADTYPE, -1);
    n = with_field("release", "lease", "\xcb\x40\x22\x00\x00\x00\x00\x00\x00", 9, NULL, NULL, 0,
                   buf);
    add("lease as a float", buf, n, UVMLEASE_EBADTYPE, -1);
    n = with_field("show", "uvm", "\xc4\x04u@vm", 6, NULL, NULL, 0, buf);
    add("uvm as bin", buf, n, UVMLEASE_EBADTYPE, -1);
    n = with_field("show", "uvm", "\x91\xa4u@vm", 6, NULL, NULL, 0, buf);
    add("uvm as an array", buf, n, UVMLEASE_EBADTYPE, -1);
    n = with_field("acquire", "uvm", "\xa4u@vm", 5, "conf", "\x01", 1, buf);
    add("conf as an integer", buf, n, UVMLEASE_EBADTYPE, -1);
    n = with_field("show", "uvm", "\xc0", 1, NULL, NULL, 0, buf);
    add("uvm nil", buf, n, UVMLEASE_EBADTYPE, -1);
    n = with_field("show", "uvm", "\xd4\x01\x00", 3, NULL, NULL, 0, buf);
    add("uvm as ext", buf, n, UVMLEASE_EBADTYPE, -1);
    add("op as an integer", L("\x83\xa1v\x01\xa2op\x05\xa3rid\x01"), UVMLEASE_EBADTYPE, -1);
    add("rid as a string", L("\x83\xa1v\x01\xa2op\xa4ping\xa3rid\xa1\x31"), UVMLEASE_EBADTYPE, -1);
    n = with_field("teleport", NULL, NULL, 0, NULL, NULL, 0, buf);
    add("unknown op", buf, n, UVMLEASE_EUNKNOWNOP, -1);
    n = with_field("ACQUIRE", NULL, NULL, 0, NULL, NULL, 0, buf);
    add("op in capitals", buf, n, UVMLEASE_EUNKNOWNOP, -1);
    n = with_field("acquire", NULL, NULL, 0, NULL, NULL, 0, buf);
    add("acquire without fields", buf, n, UVMLEASE_EMISSING, -1);
    n = with_field("release", NULL, NULL, 0, NULL, NULL, 0, buf);
    add("release without lease", buf, n, UVMLEASE_EMISSING, -1);
    add("no op", L("\x82\xa1v\x01\xa3rid\x01"), UVMLEASE_EMISSING, -1);
    add("no rid", L("\x82\xa1v\x01\xa2op\xa4ping"), UVMLEASE_EMISSING, -1);
    add("no v", L("\x82\xa2op\xa4ping\xa3rid\x01"), UVMLEASE_EMISSING, -1);
    add("v 2", L("\x83\xa1v\x02\xa2op\xa4ping\xa3rid\x01"), UVMLEASE_EVERSION, UVMLEASE_EVERSION);
    add("duplicate rid", L("\x84\xa1v\x01\xa2op\xa4ping\xa3rid\x01\xa3rid\x02"),
        UVMLEASE_EMALFORMED, UVMLEASE_EMALFORMED);
    add("array at top", L("\x93\x01\x02\x03"), UVMLEASE_EBADTYPE, UVMLEASE_EBADTYPE);
    add("integer key", L("\x84\xa1v\x01\xa2op\xa4ping\xa3rid\x01\x01\x01"), UVMLEASE_EBADTYPE,
        UVMLEASE_EBADTYPE);

    /* Bad UVM IDs. */
    static const struct {
        const char *name;
        const char *id;
        size_t len;
    } ids[] = {
        {"uvm empty", "", 0},          {"uvm with a space", "a b", 3},
        {"uvm with a tab", "a\tb", 3}, {"uvm with NUL", "a\0b", 3},
        {"uvm with DEL", "a\x7f", 2},  {"uvm non-ASCII", "\xc3\xa9", 2},
        {"uvm with ESC", "\x1b", 1},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        tmp[0] = (unsigned char)(0xa0 | ids[i].len);
        memcpy(tmp + 1, ids[i].id, ids[i].len);
        n = with_field("show", "uvm", tmp, 1 + ids[i].len, NULL, NULL, 0, buf);
        add(ids[i].name, buf, n, UVMLEASE_EBADUVM, -1);
    }
    tmp[0] = 0xd9;
    tmp[1] = 0xff;
    memset(tmp + 2, 'a', 255);
    n = with_field("show", "uvm", tmp, 257, NULL, NULL, 0, buf);
    add("uvm 255 bytes", buf, n, 0, -1);
    tmp[0] = 0xda;
    tmp[1] = 0x01;
    tmp[2] = 0x01;
    memset(tmp + 3, 'a', 257);
    n = with_field("show", "uvm", tmp, 260, NULL, NULL, 0, buf);
    add("uvm 257 bytes", buf, n, UVMLEASE_EBADUVM, -1);
    tmp[0] = 0xda;
    tmp[1] = 0x04;
    tmp[2] = 0x01;
    memset(tmp + 3, 'a', 1025);
    n = with_field("show", "uvm", tmp, 1028, NULL, NULL, 0, buf);
    add("uvm 1025 bytes", buf, n, UVMLEASE_ELIMIT, UVMLEASE_ELIMIT);

    /* Bad text. */
    n = with_field("phase", "lease", "\x09", 1, "phase", "\xa3\x1b[m", 4, buf);
    add("phase with ESC", buf, n, UVMLEASE_EBADTEXT, -1);
    n = with_field("phase", "lease", "\x09", 1, "phase", "\xa2\xc0\xaf", 3, buf);
    add("phase overlong", buf, n, UVMLEASE_EBADTEXT, -1);
    n = with_field("phase", "lease", "\x09", 1, "phase", "\xa3\xed\xa0\x80", 4, buf);
    add("phase surrogate", buf, n, UVMLEASE_EBADTEXT, -1);

    /* Broker messages a hostile peer could send a client. */
    add_both("holders array of 4097", L("\x81\xa7holders\xdd\x00\x00\x10\x01"), UVMLEASE_ELIMIT);
    add("holders array of 4096", L("\x81\xa7holders\xdd\x00\x00\x10\x00"), UVMLEASE_ELIMIT,
        UVMLEASE_ETRUNCATED);
    add("reply: 7 levels", L("\x91\x91\x91\x91\x91\x91\x91\x01"), UVMLEASE_ETOODEEP,
        UVMLEASE_ETOODEEP);
}

static void free_corpus(void)
{
    for (size_t i = 0; i < s_ncorpus; i++)
        free(s_corpus[i].bytes);
    s_ncorpus = 0;
}

/* Decode everything both ways; count mismatches (reported when verbose). */
static int run_corpus(bool report)
{
    int bad = 0;
    for (size_t i = 0; i < s_ncorpus; i++) {
        const hostile *h = &s_corpus[i];
        ul_request req;
        int rc = ul_request_decode(h->bytes, h->len, &req);
        if (rc != h->want_req) {
            bad++;
            if (report)
                cr_log_error("%s: request decode gave %s, want %s", h->name, ul_status_name(rc),
                             ul_status_name(h->want_req));
        }
        ul_reply rep;
        rc = ul_reply_decode(h->bytes, h->len, &rep);
        bool ok = h->want_rep < 0 ? rc != 0 : rc == h->want_rep;
        if (!ok || rc == UVMLEASE_ENOMEM) {
            bad++;
            if (report)
                cr_log_error("%s: reply decode gave %s, want %s", h->name, ul_status_name(rc),
                             h->want_rep < 0 ? "an error" : ul_status_name(h->want_rep));
        }
        if (rc == 0)
            ul_reply_free(&rep);
    }
    return bad;
}

Test(hostile, corpus_rejected_with_documented_codes)
{
    build_corpus();
    cr_assert_gt(s_ncorpus, 100);
    cr_assert_eq(run_corpus(true), 0);
    free_corpus();
}

/* ------------------------------------------------------- ul_mp_check */

static const ul_mp_limits s_wide = {
    .max_size = 1 << 20, .max_depth = 8, .max_entries = 1000, .max_str = 1000};

Test(hostile, mp_check_every_format)
{
    static const struct {
        const char *b;
        size_t len;
    } ok[] = {
        {"\x00", 1},
        {"\x7f", 1},
        {"\xe0", 1},
        {"\xff", 1},
        {"\xc0", 1},
        {"\xc2", 1},
        {"\xc3", 1},
        {"\xca\x00\x00\x00\x00", 5},
        {"\xcb\x00\x00\x00\x00\x00\x00\x00\x00", 9},
        {"\xcc\x01", 2},
        {"\xcd\x01\x02", 3},
        {"\xce\x01\x02\x03\x04", 5},
        {"\xcf\x01\x02\x03\x04\x05\x06\x07\x08", 9},
        {"\xd0\x80", 2},
        {"\xd1\x80\x00", 3},
        {"\xd2\x80\x00\x00\x00", 5},
        {"\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 9},
        {"\xa0", 1},
        {"\xa3"
         "abc",
         4},
        {"\xbf"
         "0123456789012345678901234567890",
         32},
        {"\xd9\x02"
         "ab",
         4},
        {"\xda\x00\x02"
         "ab",
         5},
        {"\xdb\x00\x00\x00\x02"
         "ab",
         7},
        {"\xc4\x02\x00\x01", 4},
        {"\xc5\x00\x02\x00\x01", 5},
        {"\xc6\x00\x00\x00\x02\x00\x01", 7},
        {"\xd4\x01\x00", 3},
        {"\xd5\x01\x00\x00", 4},
        {"\xd6\x01\x00\x00\x00\x00", 6},
        {"\xd7\xff\x00\x00\x00\x00\x00\x00\x00\x00", 10},
        {"\xd8\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 18},
        {"\xc7\x02\x01\x00\x00", 5},
        {"\xc7\x00\x01", 3},
        {"\xc8\x00\x02\x01\x00\x00", 6},
        {"\xc9\x00\x00\x00\x02\x01\x00\x00", 8},
        {"\x90", 1},
        {"\x92\x01\x02", 3},
        {"\xdc\x00\x02\x01\x02", 5},
        {"\xdd\x00\x00\x00\x02\x01\x02", 7},
        {"\x80", 1},
        {"\x81\x01\x02", 3},
        {"\xde\x00\x01\x01\x02", 5},
        {"\xdf\x00\x00\x00\x01\x01\x02", 7},
        {"\x92\x91\x80\x81\xa1x\x90", 7},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        cr_expect_eq(ul_mp_check(ok[i].b, ok[i].len, &s_wide), 0, "case %zu", i);
        /* msgpack-c agrees it is one whole object. */
        msgpack_zone z;
        msgpack_zone_init(&z, 1024);
        msgpack_object o;
        size_t off = 0;
        cr_expect_eq(msgpack_unpack(ok[i].b, ok[i].len, &off, &z, &o), MSGPACK_UNPACK_SUCCESS,
                     "case %zu", i);
        cr_expect_eq(off, ok[i].len, "case %zu", i);
        msgpack_zone_destroy(&z);
        /* Every strict prefix is truncated, one more byte is trailing. */
        for (size_t k = 0; k < ok[i].len; k++)
            cr_expect_eq(ul_mp_check(ok[i].b, k, &s_wide), UVMLEASE_ETRUNCATED, "case %zu/%zu", i,
                         k);
        unsigned char more[64];
        memcpy(more, ok[i].b, ok[i].len);
        more[ok[i].len] = 0xc0;
        cr_expect_eq(ul_mp_check(more, ok[i].len + 1, &s_wide), UVMLEASE_ETRAILING, "case %zu", i);
    }
}

Test(hostile, mp_check_limits_and_order)
{
    ul_mp_limits lim = {.max_size = 64, .max_depth = 2, .max_entries = 3, .max_str = 4};
    unsigned char big[65] = {0};
    cr_expect_eq(ul_mp_check(big, 65, &lim), UVMLEASE_ETOOLARGE, "size first");
    cr_expect_eq(ul_mp_check("\x93\x01\x02\x03", 4, &lim), 0);
    cr_expect_eq(ul_mp_check("\x94\x01\x02\x03\x04", 5, &lim), UVMLEASE_ELIMIT);
    cr_expect_eq(ul_mp_check("\x83\x01\x01\x02\x02\x03\x03", 7, &lim), 0);
    cr_expect_eq(ul_mp_check("\x84", 1, &lim), UVMLEASE_ELIMIT, "limit before truncation");
    cr_expect_eq(ul_mp_check("\xa4"
                             "abcd",
                             5, &lim),
                 0);
    cr_expect_eq(ul_mp_check("\xa5"
                             "abcde",
                             6, &lim),
                 UVMLEASE_ELIMIT);
    cr_expect_eq(ul_mp_check("\xc4\x05", 2, &lim), UVMLEASE_ELIMIT, "bin");
    cr_expect_eq(ul_mp_check("\xc7\x05\x01", 3, &lim), UVMLEASE_ELIMIT, "ext");
    cr_expect_eq(ul_mp_check("\xd7\x01", 2, &lim), UVMLEASE_ELIMIT, "fixext8 above max_str");
    cr_expect_eq(ul_mp_check("\x91\x91\x01", 3, &lim), 0);
    cr_expect_eq(ul_mp_check("\x91\x91\x91\x01", 4, &lim), UVMLEASE_ETOODEEP);
    cr_expect_eq(ul_mp_check("\x91\x91\xdd", 3, &lim), UVMLEASE_ETOODEEP, "depth before count");
    cr_expect_eq(ul_mp_check("\x91\x91\xc1", 3, &lim), UVMLEASE_EMALFORMED);
    cr_expect_eq(ul_mp_check("\x92\x91\x01", 3, &lim), UVMLEASE_ETRUNCATED);
    /* Counts are checked against every pending element, not just their
     * own container: 3 + 3 elements cannot fit in 5 bytes. */
    cr_expect_eq(ul_mp_check("\x93\x93\x01\x02\x03", 5, &lim), UVMLEASE_ETRUNCATED);
    ul_mp_limits flat = {.max_size = 64, .max_depth = 0, .max_entries = 3, .max_str = 4};
    cr_expect_eq(ul_mp_check("\x05", 1, &flat), 0);
    cr_expect_eq(ul_mp_check("\x90", 1, &flat), UVMLEASE_ETOODEEP);
    cr_expect_eq(ul_mp_check(NULL, 0, &lim), UVMLEASE_ETRUNCATED);
    cr_expect_eq(ul_mp_check(NULL, 3, &lim), UVMLEASE_EINVAL);
    cr_expect_eq(ul_mp_check("\x01", 1, NULL), UVMLEASE_EINVAL);
    /* Depth is capped at msgpack-c's own stack of 32. */
    ul_mp_limits deep = {.max_size = 1 << 20, .max_depth = 1000, .max_entries = 10, .max_str = 10};
    unsigned char nest[40];
    memset(nest, 0x91, 33);
    nest[33] = 0x01;
    cr_expect_eq(ul_mp_check(nest, 33, &deep), UVMLEASE_ETOODEEP);
    cr_expect_eq(ul_mp_check(nest + 1, 33, &deep), 0, "32 levels");
}

Test(hostile, request_limits_are_the_documented_ones)
{
    cr_assert_eq(ul_limits_request.max_size, (size_t)UL_MAX_REQUEST);
    cr_assert_eq(ul_limits_request.max_depth, UL_MAX_DEPTH_REQUEST);
    cr_assert_eq(ul_limits_request.max_entries, UL_MAX_MAP_REQUEST);
    cr_assert_eq(ul_limits_request.max_str, 1024);
    cr_assert_eq(ul_limits_reply.max_size, (size_t)UL_MAX_REPLY);
    cr_assert_eq(ul_limits_reply.max_depth, UL_MAX_DEPTH_REPLY);
    cr_assert_eq(ul_limits_reply.max_entries, UL_MAX_CONTAINER);
    cr_assert_eq(ul_limits_reply.max_str, 1024);
}

/* --------------------------------------------------- allocation bounds */

#ifndef UL_SANITIZED

/* A forked child reports through a pipe; parent reads one struct. */
typedef struct child_report {
    size_t peak;
    size_t largest;
    int bad;
    int unpack_rc;
} child_report;

static child_report run_child(void (*fn)(child_report *))
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        child_report rep = {0};
        fn(&rep);
        ssize_t w = write(fds[1], &rep, sizeof rep);
        _exit(w == (ssize_t)sizeof rep ? 0 : 3);
    }
    close(fds[1]);
    child_report rep;
    ssize_t got = read(fds[0], &rep, sizeof rep);
    close(fds[0]);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed (status %d)", st);
    cr_assert_eq(got, (ssize_t)sizeof rep);
    return rep;
}

Test(hostile, interposer_sees_allocations)
{
    /* The interposer is really in the path (libmsgpackc's calls included). */
    /* Through a volatile pointer: a compiler may drop a malloc/free pair
     * whose memory is never used. */
    void *(*volatile alloc)(size_t) = malloc;
    size_t base = arm();
    void *p = alloc(3 * MIB);
    cr_assert_not_null(p);
    msgpack_zone *z = msgpack_zone_new(2 * MIB);
    cr_assert_not_null(z);
    size_t peak = atomic_load(&s_peak) - base;
    disarm();
    msgpack_zone_free(z);
    free(p);
    cr_assert_geq(peak, 5 * MIB, "peak %zu", peak);
    cr_assert_eq(atomic_load(&s_cur), base, "everything freed");
}

Test(hostile, corpus_peak_allocation_below_1mib)
{
    build_corpus();
    size_t base = arm();
    int bad = run_corpus(false);
    size_t peak = atomic_load(&s_peak) - base, largest = atomic_load(&s_largest);
    disarm();
    size_t left = atomic_load(&s_cur) - base;
    fprintf(stderr,
            "hostile corpus: %zu messages decoded twice, peak allocation %zu bytes, "
            "largest single request %zu bytes\n",
            s_ncorpus, peak, largest);
    free_corpus();
    cr_assert_eq(bad, 0, "a corpus entry got another code (see the codes test)");
    cr_assert_leq(peak, MIB, "peak %zu bytes above 1 MiB", peak);
    cr_assert_leq(largest, MIB);
    cr_assert_eq(left, 0, "%zu bytes leaked", left);
}

static void bypass_child(child_report *rep)
{
    /* The same 5 bytes and 155 bytes, handed to msgpack-c directly. */
    unsigned char nested[155];
    for (int i = 0; i < 31; i++)
        memcpy(nested + 5 * i, "\xdd\x01\x00\x00\x00", 5);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    arm();
    size_t off = 0;
    rep->unpack_rc = msgpack_unpack_next(&u, "\xdd\x0f\xff\xff\xff", 5, &off);
    off = 0;
    msgpack_unpack_next(&u, (const char *)nested, sizeof nested, &off);
    rep->peak = atomic_load(&s_peak);
    rep->largest = atomic_load(&s_largest);
    disarm();
    msgpack_unpacked_destroy(&u);
}

Test(hostile, bypass_is_caught)
{
    /* What the bound protects against: without ul_mp_check, msgpack-c asks
     * for gigabytes for a few bytes. If this stops failing, the interposer
     * no longer measures anything. */
    child_report rep = run_child(bypass_child);
    fprintf(stderr,
            "bypass: msgpack_unpack_next on dd 0f ff ff ff and 31 nested array32: "
            "largest single request %zu bytes, peak allocated %zu bytes (rc %d)\n",
            rep.largest, rep.peak, rep.unpack_rc);
    cr_assert_gt(rep.largest, 1024 * MIB, "largest request only %zu", rep.largest);
    cr_assert_gt(rep.largest, MIB);
}

static void rlimit_child(child_report *rep)
{
    struct rlimit rl = {256 * MIB, 256 * MIB};
    if (setrlimit(RLIMIT_AS, &rl) != 0) {
        rep->bad = -1;
        return;
    }
    rep->bad = run_corpus(false);
    /* And the bypass, for contrast: msgpack-c runs out of address space. */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    rep->unpack_rc = msgpack_unpack_next(&u, "\xdd\x0f\xff\xff\xff", 5, &off);
    msgpack_unpacked_destroy(&u);
}

Test(hostile, corpus_under_rlimit_as)
{
    build_corpus();
    child_report rep = run_child(rlimit_child);
    free_corpus();
    cr_assert_neq(rep.bad, -1, "setrlimit failed");
    cr_assert_eq(rep.bad, 0,
                 "%d corpus entries did not get their protocol error under "
                 "RLIMIT_AS=256MiB",
                 rep.bad);
    cr_assert_eq(rep.unpack_rc, MSGPACK_UNPACK_NOMEM_ERROR,
                 "msgpack-c alone should run out of memory, got %d", rep.unpack_rc);
}

#else /* UL_SANITIZED */

#define ASAN_SKIP                                                                                  \
    cr_skip_test("allocation peaks and RLIMIT_AS are meaningless under AddressSanitizer "          \
                 "(own allocator, shadow memory, quarantine): measured in the normal build")

Test(hostile, interposer_sees_allocations)
{
    ASAN_SKIP;
}
Test(hostile, corpus_peak_allocation_below_1mib)
{
    ASAN_SKIP;
}
Test(hostile, bypass_is_caught)
{
    ASAN_SKIP;
}
Test(hostile, corpus_under_rlimit_as)
{
    ASAN_SKIP;
}

#endif
