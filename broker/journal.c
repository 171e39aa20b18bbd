/*
 * journal.c — the lease journal (see journal.h).
 */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ul_text.h"
#include "uvmlease_errors.h"

#define S_HDR_MAGIC 0x484a4c55u /* "ULJH" */
#define S_REC_MAGIC 0x524a4c55u /* "ULJR" */
#define S_VERSION   1u
#define S_HDR_SLOTS 2u
#define S_HDR_LEN   64u
#define S_REC_HEAD  80u
#define S_MAX_SLOTS (1048576u + 1u)     /* --max-leases at most, and the spare */
#define S_VAL_MAX   (UINT64_C(1) << 63) /* fences and ids stay below 2^63 */
#define S_PID_MAX   4194304u            /* PID_MAX_LIMIT */
#define S_CHUNK     64u                 /* slots read per pread at load */

struct ul_journal {
    int fd;
    char path[4096];
    uint32_t slots;
    uint64_t seq;
    unsigned hdr_cur; /* header slot holding the newest header */
    uint64_t fence_hw, lease_hw;
    ul_journal_write_fn write;
    void *wctx;
    bool healthy;
    uint64_t failures;
    int last_errno;
    uint32_t *free_stack; /* free slots, lowest on top */
    uint32_t n_free;
    uint32_t *pending; /* slots whose clear failed: not free yet */
    uint32_t n_pending;
    uint64_t *map_key; /* lease id -> slot, open addressing, 0 = empty */
    uint32_t *map_val;
    uint32_t map_mask;
};

/* ---- CRC-32C ------------------------------------------------------------ */

static uint32_t s_crc_table[256];

static void s_crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        s_crc_table[i] = c;
    }
}

uint32_t ul_crc32c(uint32_t crc, const void *data, size_t n)
{
    if (s_crc_table[1] == 0)
        s_crc_init(); /* idempotent: a race writes the same values */
    const unsigned char *p = data;
    crc = ~crc;
    while (n--)
        crc = s_crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- little-endian fields ------------------------------------------------ */

static void s_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void s_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t s_get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t s_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static off_t s_slot_off(uint32_t slot)
{
    return (off_t)(S_HDR_SLOTS + slot) * UL_JOURNAL_SLOT;
}

/* ---- writes -------------------------------------------------------------- */

static int s_write(ul_journal *j, const void *buf, size_t n, off_t off)
{
    ssize_t w = j->write ? j->write(j->wctx, j->fd, buf, n, off) : pwrite(j->fd, buf, n, off);
    if (w == (ssize_t)n)
        return 0;
    /* A short write is cut short at the end of the slot's bytes: the CRC
     * no longer matches, so the load rolls it back. */
    j->last_errno = w < 0 ? errno : ENOSPC;
    j->failures++;
    j->healthy = false;
    errno = j->last_errno;
    return UVMLEASE_ESYSTEM;
}

static size_t s_hdr_encode(const ul_journal *j, uint64_t seq, uint64_t fhw, uint64_t lhw,
                           unsigned char *b)
{
    memset(b, 0, S_HDR_LEN);
    s_put32(b, S_HDR_MAGIC);
    s_put32(b + 8, S_VERSION);
    s_put32(b + 12, j->slots);
    s_put64(b + 16, seq);
    s_put64(b + 24, fhw);
    s_put64(b + 32, lhw);
    s_put32(b + 4, ul_crc32c(0, b + 8, S_HDR_LEN - 8));
    return S_HDR_LEN;
}

/* Write the high-water marks into the older header slot. */
static int s_hdr_write(ul_journal *j, uint64_t fhw, uint64_t lhw)
{
    unsigned char b[S_HDR_LEN];
    uint64_t seq = ++j->seq;
    unsigned slot = j->hdr_cur ^ 1u;
    int rc = s_write(j, b, s_hdr_encode(j, seq, fhw, lhw, b), (off_t)slot * UL_JOURNAL_SLOT);
    if (rc)
        return rc;
    j->hdr_cur = slot;
    j->fence_hw = fhw;
    j->lease_hw = lhw;
    return 0;
}

static size_t s_rec_encode(const ul_jrec *r, uint64_t seq, unsigned char *b)
{
    size_t ul = strlen(r->uvm), ll = strlen(r->label);
    memset(b, 0, S_REC_HEAD);
    s_put32(b, S_REC_MAGIC);
    s_put64(b + 8, seq);
    s_put64(b + 16, r->lease);
    s_put64(b + 24, r->fence);
    s_put64(b + 32, r->rid);
    s_put64(b + 40, r->start_time);
    s_put64(b + 48, r->child_pid ? r->child_start : 0);
    s_put32(b + 56, r->pid);
    s_put32(b + 60, r->uid);
    s_put32(b + 64, r->child_pid);
    b[68] = r->confidential ? 1 : 0;
    b[70] = (unsigned char)ul;
    b[71] = (unsigned char)(ul >> 8);
    b[72] = (unsigned char)ll;
    b[73] = (unsigned char)(ll >> 8);
    memcpy(b + S_REC_HEAD, r->uvm, ul);
    memcpy(b + S_REC_HEAD + ul, r->label, ll);
    size_t len = S_REC_HEAD + ul + ll;
    s_put32(b + 4, ul_crc32c(0, b + 8, len - 8));
    return len;
}

/* ---- lease -> slot map ----------------------------------------------------- */

static uint32_t s_hash(const ul_journal *j, uint64_t k)
{
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    return (uint32_t)k & j->map_mask;
}

static uint32_t *s_map_find(ul_journal *j, uint64_t lease)
{
    if (lease == 0)
        return NULL; /* 0 marks an empty bucket */
    for (uint32_t i = s_hash(j, lease);; i = (i + 1) & j->map_mask) {
        if (j->map_key[i] == lease)
            return &j->map_val[i];
        if (j->map_key[i] == 0)
            return NULL;
    }
}

static void s_map_put(ul_journal *j, uint64_t lease, uint32_t slot)
{
    uint32_t i = s_hash(j, lease);
    while (j->map_key[i] != 0 && j->map_key[i] != lease)
        i = (i + 1) & j->map_mask;
    j->map_key[i] = lease;
    j->map_val[i] = slot;
}

/* Remove with backward shift: no tombstones, so lookups stay short after
 * any number of cycles. */
static void s_map_del(ul_journal *j, uint64_t lease)
{
    uint32_t i = s_hash(j, lease);
    while (j->map_key[i] != lease) {
        if (j->map_key[i] == 0)
            return;
        i = (i + 1) & j->map_mask;
    }
    for (uint32_t k = (i + 1) & j->map_mask; j->map_key[k] != 0; k = (k + 1) & j->map_mask) {
        uint32_t home = s_hash(j, j->map_key[k]);
        /* Move k into the hole at i unless its home lies in (i, k]. */
        bool stays = i <= k ? (home > i && home <= k) : (home > i || home <= k);
        if (!stays) {
            j->map_key[i] = j->map_key[k];
            j->map_val[i] = j->map_val[k];
            i = k;
        }
    }
    j->map_key[i] = 0;
}

/* ---- run time --------------------------------------------------------------- */

static int s_cover(ul_journal *j, const ul_jrec *r)
{
    if (r->fence <= j->fence_hw && r->lease <= j->lease_hw)
        return 0;
    uint64_t f = r->fence > j->fence_hw ? r->fence + UL_JOURNAL_HW_STEP : j->fence_hw;
    uint64_t l = r->lease > j->lease_hw ? r->lease + UL_JOURNAL_HW_STEP : j->lease_hw;
    return s_hdr_write(j, f, l);
}

static int s_put_record(ul_journal *j, const ul_jrec *r, uint32_t *slot_out)
{
    if (j->n_free == 0)
        return UVMLEASE_ERESOURCE;
    if (strlen(r->uvm) > UL_MAX_UVM || strlen(r->label) > UL_MAX_LABEL)
        return UVMLEASE_EBADVALUE;
    int rc = s_cover(j, r);
    if (rc)
        return rc;
    unsigned char b[UL_JOURNAL_SLOT];
    uint32_t slot = j->free_stack[j->n_free - 1];
    rc = s_write(j, b, s_rec_encode(r, ++j->seq, b), s_slot_off(slot));
    j->n_free--;
    if (rc) {
        /* What reached the slot may complete a stale body into a record
         * that reads whole: it is cleared (retried) before the slot is
         * used again, like a failed release. */
        j->pending[j->n_pending++] = slot;
        return rc;
    }
    *slot_out = slot;
    return 0;
}

/* Clear the magic and the CRC: a later record's write into this slot that
 * stops after its magic then reads as torn, never as this record. */
static int s_clear(ul_journal *j, uint32_t slot)
{
    static const unsigned char zero[8];
    if (s_write(j, zero, sizeof zero, s_slot_off(slot)) != 0) {
        j->pending[j->n_pending++] = slot;
        return UVMLEASE_ESYSTEM;
    }
    j->free_stack[j->n_free++] = slot;
    return 0;
}

int ul_journal_grant(ul_journal *j, const ul_jrec *r)
{
    if (!j || !r || r->lease == 0 || s_map_find(j, r->lease))
        return UVMLEASE_EINVAL;
    uint32_t slot;
    int rc = s_put_record(j, r, &slot);
    if (rc == 0)
        s_map_put(j, r->lease, slot);
    return rc;
}

int ul_journal_child(ul_journal *j, const ul_jrec *r)
{
    uint32_t *cur = j && r ? s_map_find(j, r->lease) : NULL;
    if (!cur)
        return UVMLEASE_ENOLEASE;
    uint32_t old = *cur, slot;
    int rc = s_put_record(j, r, &slot);
    if (rc)
        return rc;
    *cur = slot;
    /* The new copy has the higher sequence, so a failed clear of the old
     * one loses nothing now; but until it is cleared a later release would
     * leave the old copy behind: the journal is unhealthy until
     * ul_journal_retry, and the caller must hold grants back meanwhile. */
    s_clear(j, old);
    return 0;
}

int ul_journal_release(ul_journal *j, uint64_t lease)
{
    uint32_t *cur = j ? s_map_find(j, lease) : NULL;
    if (!cur)
        return 0;
    uint32_t slot = *cur;
    s_map_del(j, lease);
    return s_clear(j, slot);
}

int ul_journal_retry(ul_journal *j)
{
    while (j->n_pending > 0) {
        uint32_t slot = j->pending[--j->n_pending];
        if (s_clear(j, slot) != 0)
            return UVMLEASE_ESYSTEM;
    }
    if (s_hdr_write(j, j->fence_hw, j->lease_hw) != 0)
        return UVMLEASE_ESYSTEM;
    j->healthy = true;
    return 0;
}

bool ul_journal_healthy(const ul_journal *j)
{
    return j && j->healthy;
}

const char *ul_journal_path(const ul_journal *j)
{
    return j ? j->path : "";
}

uint32_t ul_journal_slots(const ul_journal *j)
{
    return j ? j->slots : 0;
}

uint32_t ul_journal_used(const ul_journal *j)
{
    return j ? j->slots - j->n_free : 0;
}

uint64_t ul_journal_write_failures(const ul_journal *j)
{
    return j ? j->failures : 0;
}

int ul_journal_last_errno(const ul_journal *j)
{
    return j ? j->last_errno : 0;
}

void ul_journal_close(ul_journal **jp)
{
    if (!jp || !*jp)
        return;
    ul_journal *j = *jp;
    if (j->fd >= 0)
        close(j->fd);
    free(j->free_stack);
    free(j->pending);
    free(j->map_key);
    free(j->map_val);
    free(j);
    *jp = NULL;
}

/* ---- load --------------------------------------------------------------------- */

#define S_ERR(...)                                                                                 \
    do {                                                                                           \
        if (errsz > 0)                                                                             \
            snprintf(err, errsz, __VA_ARGS__);                                                     \
    } while (0)

/* A slot as found at load. */
typedef struct s_found {
    uint32_t slot;
    uint64_t seq;
    ul_jrec rec;
} s_found;

typedef enum { S_FREE, S_LIVE, S_TORN, S_BAD } s_state;

typedef struct s_scan {
    s_found *live;
    size_t n_live;
    uint32_t *clear; /* slots to clear: torn, superseded, forced-out */
    size_t n_clear;
    uint64_t max_seq;
    bool hdr_ok;
    uint64_t hdr_seq, fence_hw, lease_hw;
    unsigned hdr_cur;
    uint32_t file_slots;
    bool size_ok;
} s_scan;

/* Values as strict as on the wire (PROTOCOL.md limits). */
static bool s_rec_valid(const unsigned char *b, const ul_jrec *r, uint64_t seq)
{
    for (int i = 74; i < (int)S_REC_HEAD; i++)
        if (b[i] != 0)
            return false;
    return seq != 0 && r->lease != 0 && r->lease < S_VAL_MAX && r->fence != 0 &&
           r->fence < S_VAL_MAX && r->rid != 0 && r->pid != 0 && r->pid <= S_PID_MAX &&
           r->uid != UINT32_MAX && r->start_time != 0 && b[68] <= 1 && b[69] == 0 &&
           (r->child_pid == 0 ? r->child_start == 0
                              : r->child_pid <= S_PID_MAX && r->child_start != 0) &&
           ul_uvm_id_check(r->uvm, strlen(r->uvm)) == 0 &&
           ul_text_check(r->label, strlen(r->label), UL_MAX_LABEL) == 0;
}

/* A magic cut short: the first bytes of a record's magic over a cleared
 * one (a grant's write), or the first bytes of a clear over a record's (a
 * release's). Either write was never acknowledged. */
static bool s_magic_torn(const unsigned char *b)
{
    unsigned char m[4];
    s_put32(m, S_REC_MAGIC);
    for (int k = 1; k < 4; k++) {
        bool head = true, tail = true;
        for (int i = 0; i < 4; i++) {
            head &= i < k ? b[i] == m[i] : b[i] == 0;
            tail &= i < k ? b[i] == 0 : b[i] == m[i];
        }
        if (head || tail)
            return true;
    }
    return false;
}

static s_state s_rec_decode(const unsigned char *b, ul_jrec *r, uint64_t *seq)
{
    uint32_t magic = s_get32(b);
    if (magic == 0)
        return S_FREE;
    if (magic != S_REC_MAGIC)
        return s_magic_torn(b) ? S_TORN : S_BAD;
    size_t ul = (size_t)b[70] | (size_t)b[71] << 8, ll = (size_t)b[72] | (size_t)b[73] << 8;
    /* Our magic with lengths or a CRC that do not add up: a record whose
     * write was cut short. */
    if (ul == 0 || ul > UL_MAX_UVM || ll > UL_MAX_LABEL)
        return S_TORN;
    size_t len = S_REC_HEAD + ul + ll;
    if (s_get32(b + 4) != ul_crc32c(0, b + 8, len - 8))
        return S_TORN;
    memset(r, 0, sizeof *r);
    *seq = s_get64(b + 8);
    r->lease = s_get64(b + 16);
    r->fence = s_get64(b + 24);
    r->rid = s_get64(b + 32);
    r->start_time = s_get64(b + 40);
    r->child_start = s_get64(b + 48);
    r->pid = s_get32(b + 56);
    r->uid = s_get32(b + 60);
    r->child_pid = s_get32(b + 64);
    r->confidential = b[68] == 1;
    memcpy(r->uvm, b + S_REC_HEAD, ul);
    r->uvm[ul] = '\0';
    memcpy(r->label, b + S_REC_HEAD + ul, ll);
    r->label[ll] = '\0';
    if (memchr(r->uvm, 0, ul) || memchr(r->label, 0, ll))
        return S_BAD;
    return s_rec_valid(b, r, *seq) ? S_LIVE : S_BAD;
}

static void s_read_headers(int fd, s_scan *sc)
{
    for (unsigned h = 0; h < S_HDR_SLOTS; h++) {
        unsigned char b[S_HDR_LEN];
        if (pread(fd, b, sizeof b, (off_t)h * UL_JOURNAL_SLOT) != (ssize_t)sizeof b)
            continue;
        if (s_get32(b) != S_HDR_MAGIC || s_get32(b + 4) != ul_crc32c(0, b + 8, S_HDR_LEN - 8) ||
            s_get32(b + 8) != S_VERSION || (sc->size_ok && s_get32(b + 12) != sc->file_slots))
            continue;
        uint64_t seq = s_get64(b + 16), f = s_get64(b + 24), l = s_get64(b + 32);
        if (f >= S_VAL_MAX || l >= S_VAL_MAX)
            continue;
        if (!sc->hdr_ok || seq > sc->hdr_seq) {
            sc->hdr_ok = true;
            sc->hdr_seq = seq;
            sc->fence_hw = f;
            sc->lease_hw = l;
            sc->hdr_cur = h;
        }
    }
}

static int s_push_live(s_scan *sc, uint32_t slot, uint64_t seq, const ul_jrec *r)
{
    if (sc->n_live % 64 == 0) {
        s_found *n = realloc(sc->live, (sc->n_live + 64) * sizeof *n);
        if (!n)
            return UVMLEASE_ENOMEM;
        sc->live = n;
    }
    sc->live[sc->n_live++] = (s_found){.slot = slot, .seq = seq, .rec = *r};
    return 0;
}

static int s_read_records(int fd, s_scan *sc, ul_journal_load *ld)
{
    unsigned char *buf = malloc((size_t)S_CHUNK * UL_JOURNAL_SLOT);
    sc->clear = calloc(sc->file_slots ? sc->file_slots : 1, sizeof *sc->clear);
    if (!buf || !sc->clear) {
        free(buf);
        return UVMLEASE_ENOMEM;
    }
    int rc = 0;
    for (uint32_t base = 0; base < sc->file_slots && !rc; base += S_CHUNK) {
        uint32_t n = sc->file_slots - base < S_CHUNK ? sc->file_slots - base : S_CHUNK;
        ssize_t got = pread(fd, buf, (size_t)n * UL_JOURNAL_SLOT, s_slot_off(base));
        if (got != (ssize_t)n * UL_JOURNAL_SLOT) {
            rc = UVMLEASE_ESYSTEM;
            break;
        }
        for (uint32_t i = 0; i < n && !rc; i++) {
            ul_jrec r;
            uint64_t seq = 0;
            switch (s_rec_decode(buf + (size_t)i * UL_JOURNAL_SLOT, &r, &seq)) {
            case S_FREE:
                break;
            case S_TORN:
                ld->torn++;
                sc->clear[sc->n_clear++] = base + i;
                break;
            case S_BAD:
                ld->invalid++;
                sc->clear[sc->n_clear++] = base + i;
                break;
            case S_LIVE:
                if (seq > sc->max_seq)
                    sc->max_seq = seq;
                rc = s_push_live(sc, base + i, seq, &r);
                break;
            }
        }
    }
    free(buf);
    return rc;
}

static int s_cmp_found(const void *a, const void *b)
{
    const s_found *x = a, *y = b;
    if (x->rec.lease != y->rec.lease)
        return x->rec.lease < y->rec.lease ? -1 : 1;
    return x->seq > y->seq ? -1 : x->seq < y->seq; /* newest first */
}

/* Keep the newest copy of each lease; records above the header's marks
 * cannot be ours (the mark is written before the record) and are invalid. */
static void s_settle(s_scan *sc, ul_journal_load *ld)
{
    if (sc->n_live > 1)
        qsort(sc->live, sc->n_live, sizeof *sc->live, s_cmp_found);
    size_t k = 0;
    for (size_t i = 0; i < sc->n_live; i++) {
        const s_found *f = &sc->live[i];
        bool dup = k > 0 && sc->live[k - 1].rec.lease == f->rec.lease;
        bool above = sc->hdr_ok && (f->rec.fence > sc->fence_hw || f->rec.lease > sc->lease_hw);
        if (dup || above) {
            if (dup)
                ld->superseded++;
            else
                ld->invalid++;
            sc->clear[sc->n_clear++] = f->slot;
            continue;
        }
        sc->live[k++] = *f;
    }
    sc->n_live = k;
    if (!sc->hdr_ok) {
        for (size_t i = 0; i < k; i++) {
            if (sc->live[i].rec.fence > sc->fence_hw)
                sc->fence_hw = sc->live[i].rec.fence;
            if (sc->live[i].rec.lease > sc->lease_hw)
                sc->lease_hw = sc->live[i].rec.lease;
        }
    }
}

static int s_check_file(int fd, const char *path, char *err, size_t errsz)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        S_ERR("cannot stat %s: %s", path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    const char *why = !S_ISREG(st.st_mode)      ? "not a regular file"
                      : st.st_uid != geteuid()  ? "not owned by the broker's user"
                      : (st.st_mode & 022) != 0 ? "writable by group or others"
                      : st.st_nlink != 1        ? "more than one link"
                                                : NULL;
    if (why) {
        S_ERR("refusing the lease journal %s: %s (uid %u, mode %04o, %lu links); the broker "
              "trusts only the file it created",
              path, why, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
              (unsigned long)st.st_nlink);
        errno = EPERM;
        return UVMLEASE_ESYSTEM;
    }
    return 0;
}

/* Create path exclusively with every slot's space reserved. */
static int s_create_file(const char *path, uint32_t slots, char *err, size_t errsz)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        S_ERR("cannot create the lease journal %s: %s", path, strerror(errno));
        return -1;
    }
    off_t size = s_slot_off(slots);
    int e = fchmod(fd, 0600) < 0 ? errno : posix_fallocate(fd, 0, size);
    if (e != 0) {
        S_ERR("cannot reserve %lld bytes for the lease journal %s (%u leases): %s", (long long)size,
              path, slots, strerror(e));
        close(fd);
        unlink(path);
        errno = e;
        return -1;
    }
    return fd;
}

static int s_alloc(ul_journal *j)
{
    uint32_t cap = 2;
    while (cap < 2 * j->slots)
        cap <<= 1;
    j->map_mask = cap - 1;
    j->map_key = calloc(cap, sizeof *j->map_key);
    j->map_val = calloc(cap, sizeof *j->map_val);
    j->free_stack = calloc(j->slots, sizeof *j->free_stack);
    j->pending = calloc(j->slots, sizeof *j->pending);
    return j->map_key && j->map_val && j->free_stack && j->pending ? 0 : UVMLEASE_ENOMEM;
}

/* Index the live records at their slots; every other slot is free. */
static int s_index(ul_journal *j, const s_scan *sc, const uint32_t *slot_of)
{
    bool *used = calloc(j->slots, sizeof *used);
    if (!used)
        return UVMLEASE_ENOMEM;
    for (size_t i = 0; i < sc->n_live; i++) {
        s_map_put(j, sc->live[i].rec.lease, slot_of[i]);
        used[slot_of[i]] = true;
    }
    j->n_free = 0;
    for (uint32_t s = j->slots; s-- > 0;)
        if (!used[s])
            j->free_stack[j->n_free++] = s;
    free(used);
    return 0;
}

/* Write the live records into a fresh file of j->slots slots and put it in
 * place: a changed slot count, or a damaged file the operator forced. */
static int s_rebuild(ul_journal *j, s_scan *sc, char *err, size_t errsz)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.new", j->path);
    unlink(tmp); /* a crashed rebuild's: the directory is the broker's alone */
    int fd = s_create_file(tmp, j->slots, err, errsz);
    if (fd < 0)
        return UVMLEASE_ESYSTEM;
    uint32_t *slot_of = calloc(sc->n_live ? sc->n_live : 1, sizeof *slot_of);
    int old = j->fd;
    j->fd = fd;
    int rc = slot_of ? 0 : UVMLEASE_ENOMEM;
    for (size_t i = 0; i < sc->n_live && !rc; i++) {
        unsigned char b[UL_JOURNAL_SLOT];
        slot_of[i] = (uint32_t)i;
        rc = s_write(j, b, s_rec_encode(&sc->live[i].rec, ++j->seq, b), s_slot_off((uint32_t)i));
    }
    if (!rc)
        rc = s_hdr_write(j, j->fence_hw, j->lease_hw);
    if (!rc && rename(tmp, j->path) < 0)
        rc = UVMLEASE_ESYSTEM;
    if (rc) {
        S_ERR("cannot rewrite the lease journal %s: %s", j->path, strerror(errno));
        close(fd);
        unlink(tmp);
        j->fd = old;
        free(slot_of);
        return rc;
    }
    close(old);
    rc = s_index(j, sc, slot_of);
    free(slot_of);
    return rc;
}

/* Use the file in place: clear what was rolled back, then write a fresh
 * header, which also proves the journal can be written. */
static int s_adopt(ul_journal *j, s_scan *sc, char *err, size_t errsz)
{
    uint32_t *slot_of = calloc(sc->n_live ? sc->n_live : 1, sizeof *slot_of);
    if (!slot_of)
        return UVMLEASE_ENOMEM;
    for (size_t i = 0; i < sc->n_live; i++)
        slot_of[i] = sc->live[i].slot;
    int rc = s_index(j, sc, slot_of);
    free(slot_of);
    static const unsigned char zero[4];
    for (size_t i = 0; i < sc->n_clear && !rc; i++)
        rc = s_write(j, zero, sizeof zero, s_slot_off(sc->clear[i]));
    if (!rc)
        rc = s_hdr_write(j, j->fence_hw, j->lease_hw);
    if (rc)
        S_ERR("cannot write the lease journal %s: %s", j->path, strerror(errno));
    return rc;
}

static int s_scan_file(ul_journal *j, s_scan *sc, ul_journal_load *ld, bool force, char *err,
                       size_t errsz)
{
    struct stat st;
    if (fstat(j->fd, &st) < 0)
        return UVMLEASE_ESYSTEM;
    off_t min = s_slot_off(0);
    off_t body = st.st_size >= min ? st.st_size - min : 0;
    off_t whole = body / UL_JOURNAL_SLOT;
    sc->size_ok = st.st_size >= min && body % UL_JOURNAL_SLOT == 0 && whole <= S_MAX_SLOTS;
    /* A file of the wrong size is read as far as it has whole slots. */
    sc->file_slots = (uint32_t)(whole <= S_MAX_SLOTS ? whole : S_MAX_SLOTS);
    s_read_headers(j->fd, sc);
    int rc = s_read_records(j->fd, sc, ld);
    if (rc) {
        S_ERR("cannot read the lease journal %s: %s", j->path, strerror(errno));
        return rc;
    }
    s_settle(sc, ld);
    ld->header_lost = !sc->hdr_ok;
    bool damaged = ld->invalid > 0 || !sc->size_ok || (!sc->hdr_ok && sc->n_live > 0);
    if (damaged && !force) {
        S_ERR("the lease journal %s is damaged (%s%zu unreadable or invalid records, %zu live "
              "leases): it may hide a live lease, so the broker will not start; check the "
              "holders, then start once with --force-journal",
              j->path,
              !sc->size_ok  ? "wrong size, "
              : !sc->hdr_ok ? "no valid header, "
                            : "",
              ld->invalid, sc->n_live);
        errno = EUCLEAN;
        return UVMLEASE_EBADVALUE;
    }
    if (sc->n_live > j->slots) {
        S_ERR("the lease journal %s holds %zu leases, more than the %u this broker allows", j->path,
              sc->n_live, j->slots);
        errno = ENOSPC;
        return UVMLEASE_EBADVALUE;
    }
    j->fence_hw = sc->fence_hw;
    j->lease_hw = sc->lease_hw;
    j->seq = sc->max_seq > sc->hdr_seq ? sc->max_seq : sc->hdr_seq;
    j->hdr_cur = sc->hdr_cur;
    if (damaged || sc->file_slots != j->slots) {
        ld->resized = sc->file_slots != j->slots;
        return s_rebuild(j, sc, err, errsz);
    }
    return s_adopt(j, sc, err, errsz);
}

static int s_export(const s_scan *sc, ul_journal_load *ld)
{
    ld->recs = calloc(sc->n_live ? sc->n_live : 1, sizeof *ld->recs);
    if (!ld->recs)
        return UVMLEASE_ENOMEM;
    for (size_t i = 0; i < sc->n_live; i++)
        ld->recs[i] = sc->live[i].rec;
    ld->n = sc->n_live;
    return 0;
}

int ul_journal_open(ul_journal **out, const char *path, uint32_t slots, bool force,
                    ul_journal_write_fn write, void *wctx, ul_journal_load *ld, char *err,
                    size_t errsz)
{
    *out = NULL;
    memset(ld, 0, sizeof *ld);
    if (slots == 0 || slots > S_MAX_SLOTS || strlen(path) >= sizeof((ul_journal *)0)->path) {
        S_ERR("invalid lease journal parameters");
        errno = EINVAL;
        return UVMLEASE_ESYSTEM;
    }
    ul_journal *j = calloc(1, sizeof *j);
    if (!j)
        return UVMLEASE_ENOMEM;
    j->fd = -1;
    j->slots = slots;
    j->write = write;
    j->wctx = wctx;
    j->healthy = true;
    memcpy(j->path, path, strlen(path) + 1);
    s_scan sc;
    memset(&sc, 0, sizeof sc);
    int rc = s_alloc(j);
    if (!rc) {
        j->fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (j->fd < 0 && errno == ENOENT) {
            ld->created = true;
            j->fd = s_create_file(path, slots, err, errsz);
            rc = j->fd < 0 ? UVMLEASE_ESYSTEM : s_adopt(j, &sc, err, errsz);
        } else if (j->fd < 0) {
            S_ERR("cannot open the lease journal %s: %s", path,
                  errno == ELOOP ? "it is a symbolic link" : strerror(errno));
            rc = UVMLEASE_ESYSTEM;
        } else {
            rc = s_check_file(j->fd, path, err, errsz);
            if (!rc)
                rc = s_scan_file(j, &sc, ld, force, err, errsz);
        }
    }
    if (!rc)
        rc = s_export(&sc, ld);
    ld->fence_hw = j->fence_hw;
    ld->lease_hw = j->lease_hw;
    free(sc.live);
    free(sc.clear);
    if (rc) {
        int e = errno;
        ul_journal_close(&j);
        errno = e;
        return rc;
    }
    *out = j;
    return 0;
}
