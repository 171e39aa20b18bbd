// ctest-timeout: 120
/*
 * test_journal.c — the lease journal: what is written is read back exactly,
 * releases cancel grants in any order, a record cut short is rolled back,
 * the file never grows, the high-water marks survive, files that are not
 * the broker's own are refused, damage that could hide a live lease stops
 * start-up unless forced; and the broker fails closed when a journal write
 * fails, then resumes by itself.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "journal.h"
#include "testutil.h"
#include "uvmlease_broker.h"
#include "uvmlease_errors.h"

TestSuite(journal, .timeout = 60);

static void s_rec(ul_jrec *r, uint64_t id, const char *uvm, const char *label)
{
    memset(r, 0, sizeof *r);
    r->lease = id;
    r->fence = id + 1000;
    r->rid = id + 7;
    r->pid = 4000 + (uint32_t)id;
    r->uid = 1000;
    r->start_time = 123456 + id;
    r->confidential = id % 2 == 1;
    snprintf(r->uvm, sizeof r->uvm, "%s", uvm);
    snprintf(r->label, sizeof r->label, "%s", label);
}

static ul_journal *s_open(const char *path, uint32_t slots, bool force, ul_journal_load *ld,
                          int *rc)
{
    ul_journal *j = NULL;
    char err[512] = "";
    *rc = ul_journal_open(&j, path, slots, force, NULL, NULL, ld, err, sizeof err);
    if (*rc && getenv("UL_TEST_VERBOSE"))
        fprintf(stderr, "journal open: %s\n", err);
    return j;
}

static ul_journal *s_open_ok(const char *path, uint32_t slots, ul_journal_load *ld)
{
    int rc;
    ul_journal *j = s_open(path, slots, false, ld, &rc);
    cr_assert_eq(rc, 0, "open %s: %s", path, ul_status_name(rc));
    return j;
}

static const ul_jrec *s_find(const ul_journal_load *ld, uint64_t lease)
{
    for (size_t i = 0; i < ld->n; i++)
        if (ld->recs[i].lease == lease)
            return &ld->recs[i];
    return NULL;
}

static void s_path(char *dir, char *path, size_t n, const char *tag)
{
    ut_tmpdir(tag, dir, 256);
    snprintf(path, n, "%s/leases.journal", dir);
}

/* ---- injected write failures ------------------------------------------- */

typedef struct s_fault {
    atomic_int mode;        /* 0 pass, 1 fail (ENOSPC), 2 cut short after `cut` bytes */
    atomic_int only_clears; /* fail only slot clears (S_CLEAR_LEN-byte writes) */
    size_t cut;
    atomic_int writes;
} s_fault;

/* A slot clear writes zeros over a record's magic and CRC (journal.c). */
#define S_CLEAR_LEN 8

static ssize_t s_faulty(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
    s_fault *f = ctx;
    atomic_fetch_add(&f->writes, 1);
    int mode = atomic_load(&f->mode);
    if (mode == 0 || (atomic_load(&f->only_clears) && n != S_CLEAR_LEN))
        return pwrite(fd, buf, n, off);
    if (mode == 2 && f->cut < n) {
        ssize_t w = pwrite(fd, buf, f->cut, off);
        errno = ENOSPC;
        return w;
    }
    errno = ENOSPC;
    return -1;
}

/* A fresh journal of `slots` in a new directory, its writes through f
 * (NULL: plain pwrite). */
static ul_journal *s_fresh(const char *tag, char *dir, char *path, uint32_t slots, s_fault *f)
{
    s_path(dir, path, 320, tag);
    ul_journal *j = NULL;
    ul_journal_load ld;
    char err[512];
    int rc = ul_journal_open(&j, path, slots, false, f ? s_faulty : NULL, f, &ld, err, sizeof err);
    cr_assert_eq(rc, 0, "open %s: %s", path, err);
    cr_assert(ld.created);
    free(ld.recs);
    return j;
}

Test(journal, round_trip_exact)
{
    char dir[256], path[320];
    s_path(dir, path, sizeof path, "jrt");
    ul_journal_load ld;
    ul_journal *j = s_open_ok(path, 32, &ld);
    cr_assert(ld.created);
    free(ld.recs);
    ul_jrec a, b, c;
    s_rec(&a, 1, "aaaa@vm",
          "ctr one \"quoted\" \xc3\xbc"
          "n\xc3\xaf"
          "code");
    s_rec(&b, 2, "bbbb@vm", "");
    char longlabel[UL_MAX_LABEL + 1];
    memset(longlabel, 'x', UL_MAX_LABEL);
    longlabel[UL_MAX_LABEL] = '\0';
    char longuvm[UL_MAX_UVM + 1];
    memset(longuvm, 'u', UL_MAX_UVM);
    longuvm[UL_MAX_UVM] = '\0';
    s_rec(&c, 3, longuvm, longlabel);
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    cr_assert_eq(ul_journal_grant(j, &b), 0);
    cr_assert_eq(ul_journal_grant(j, &c), 0);
    a.child_pid = 777;
    a.child_start = 888;
    cr_assert_eq(ul_journal_child(j, &a), 0);
    cr_assert_eq(ul_journal_release(j, 2), 0);
    cr_assert_eq(ul_journal_used(j), 2);
    ul_journal_close(&j);

    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0600, "the journal is the broker's alone");
    cr_assert_eq(sb.st_size, (off_t)(2 + 32) * UL_JOURNAL_SLOT, "size fixed at creation");

    j = s_open_ok(path, 32, &ld);
    cr_assert_eq(ld.n, 2);
    cr_assert_eq(ld.torn + ld.invalid + ld.superseded, 0);
    const ul_jrec *ra = s_find(&ld, 1), *rc3 = s_find(&ld, 3);
    cr_assert(ra && rc3 && !s_find(&ld, 2));
    cr_assert_eq(memcmp(ra, &a, sizeof a), 0, "every field of a comes back");
    cr_assert_eq(memcmp(rc3, &c, sizeof c), 0, "longest id and label come back");
    cr_assert_geq(ld.fence_hw, 1003);
    cr_assert_geq(ld.lease_hw, 3);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, releases_in_any_order)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jord", dir, path, 8, NULL);
    ul_jrec r;
    for (uint64_t id = 1; id <= 3; id++) {
        s_rec(&r, id, "ord@vm", "x");
        cr_assert_eq(ul_journal_grant(j, &r), 0);
    }
    cr_assert_eq(ul_journal_release(j, 3), 0);
    cr_assert_eq(ul_journal_release(j, 1), 0);
    ul_journal_close(&j);
    j = s_open_ok(path, 8, &ld);
    cr_assert_eq(ld.n, 1);
    cr_assert_eq(ld.recs[0].lease, 2, "grants 1, 2, 3, releases 3 then 1: only 2 is held");
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, torn_record_rolled_back)
{
    char dir[256], path[320];
    s_fault f = {.cut = 40};
    ul_journal_load ld;
    ul_journal *j = s_fresh("jtorn", dir, path, 8, &f);
    ul_jrec a, b;
    s_rec(&a, 1, "kept@vm", "a");
    s_rec(&b, 2, "torn@vm", "b");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    atomic_store(&f.mode, 2);
    cr_assert_eq(ul_journal_grant(j, &b), UVMLEASE_ESYSTEM, "a short write is a failure");
    cr_assert_not(ul_journal_healthy(j));
    ul_journal_close(&j); /* as if the broker died here */

    j = s_open_ok(path, 8, &ld);
    cr_assert_eq(ld.torn, 1, "the fragment is recognised");
    cr_assert_eq(ld.n, 1);
    cr_assert_eq(ld.recs[0].lease, 1);
    free(ld.recs);
    ul_journal_close(&j);
    j = s_open_ok(path, 8, &ld);
    cr_assert_eq(ld.torn, 0, "and cleared: the next record does not land on it");
    cr_assert_eq(ld.n, 1);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, failed_release_is_retried)
{
    char dir[256], path[320];
    s_fault f = {0};
    ul_journal_load ld;
    ul_journal *j = s_fresh("jrel", dir, path, 8, &f);
    ul_jrec a;
    s_rec(&a, 1, "rel@vm", "a");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    atomic_store(&f.mode, 1);
    cr_assert_eq(ul_journal_release(j, 1), UVMLEASE_ESYSTEM);
    cr_assert_neq(ul_journal_retry(j), 0, "still failing");
    cr_assert_not(ul_journal_healthy(j));
    atomic_store(&f.mode, 0);
    cr_assert_eq(ul_journal_retry(j), 0);
    cr_assert(ul_journal_healthy(j));
    ul_journal_close(&j);
    j = s_open_ok(path, 8, &ld);
    cr_assert_eq(ld.n, 0, "the retried release reached the file");
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, child_copy_wins_over_old_record)
{
    char dir[256], path[320];
    s_fault f = {0};
    ul_journal_load ld;
    ul_journal *j = s_fresh("jcow", dir, path, 8, &f);
    ul_jrec a;
    s_rec(&a, 5, "cow@vm", "a");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    a.child_pid = 999;
    a.child_start = 4242;
    /* The new copy is written, clearing the old one fails: both are on
     * disk, as after a crash between the two writes. */
    atomic_store(&f.only_clears, 1);
    atomic_store(&f.mode, 1);
    cr_assert_eq(ul_journal_child(j, &a), 0);
    ul_journal_close(&j);
    j = s_open_ok(path, 8, &ld);
    cr_assert_eq(ld.n, 1);
    cr_assert_eq(ld.superseded, 1);
    cr_assert_eq(ld.recs[0].child_pid, 999, "the newer copy (with the child) wins");
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, bounded_under_many_cycles)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jcyc", dir, path, 64, NULL);
    ul_jrec r;
    uint64_t id = 0;
    for (int i = 0; i < 50; i++) {
        s_rec(&r, ++id, "held@vm", "held");
        cr_assert_eq(ul_journal_grant(j, &r), 0);
    }
    for (int i = 0; i < 100000; i++) {
        s_rec(&r, ++id, "cycle@vm", "c");
        cr_assert_eq(ul_journal_grant(j, &r), 0);
        cr_assert_eq(ul_journal_release(j, id), 0);
    }
    cr_assert_eq(ul_journal_used(j), 50);
    ul_journal_close(&j);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_size, (off_t)(2 + 64) * UL_JOURNAL_SLOT, "never grows");
    j = s_open_ok(path, 64, &ld);
    cr_assert_eq(ld.n, 50, "exactly the held leases come back");
    for (uint64_t k = 1; k <= 50; k++)
        cr_assert(s_find(&ld, k));
    cr_assert_geq(ld.fence_hw, id + 1000, "the marks cover every fence ever written");
    cr_assert_geq(ld.lease_hw, id);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, marks_survive_with_nothing_held)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jhw", dir, path, 4, NULL);
    ul_jrec r;
    s_rec(&r, 7000000, "hw@vm", "");
    r.fence = UINT64_C(1) << 62;
    cr_assert_eq(ul_journal_grant(j, &r), 0);
    cr_assert_eq(ul_journal_release(j, r.lease), 0);
    ul_journal_close(&j);
    j = s_open_ok(path, 4, &ld);
    cr_assert_eq(ld.n, 0);
    cr_assert_geq(ld.fence_hw, UINT64_C(1) << 62, "a released fence still bounds the next");
    cr_assert_geq(ld.lease_hw, 7000000);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

Test(journal, resized_when_capacity_changes)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jrsz", dir, path, 16, NULL);
    ul_jrec r;
    for (uint64_t id = 1; id <= 3; id++) {
        s_rec(&r, id, "rs@vm", "x");
        cr_assert_eq(ul_journal_grant(j, &r), 0);
    }
    ul_journal_close(&j);
    j = s_open_ok(path, 64, &ld);
    cr_assert(ld.resized);
    cr_assert_eq(ld.n, 3);
    free(ld.recs);
    ul_journal_close(&j);
    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_size, (off_t)(2 + 64) * UL_JOURNAL_SLOT);
    int rc;
    j = s_open(path, 2, false, &ld, &rc);
    cr_assert_eq(rc, UVMLEASE_EBADVALUE, "3 held leases do not fit in 2 slots: refused");
    cr_assert_null(j);
    ut_rmrf(dir);
}

Test(journal, full_is_resource)
{
    char dir[256], path[320];
    ul_journal *j = s_fresh("jfull", dir, path, 2, NULL);
    ul_jrec r;
    s_rec(&r, 1, "f@vm", "");
    cr_assert_eq(ul_journal_grant(j, &r), 0);
    s_rec(&r, 2, "f@vm", "");
    cr_assert_eq(ul_journal_grant(j, &r), 0);
    s_rec(&r, 3, "f@vm", "");
    cr_assert_eq(ul_journal_grant(j, &r), UVMLEASE_ERESOURCE);
    cr_assert(ul_journal_healthy(j), "a full table is not a failing disk");
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* ---- files that are not the broker's -------------------------------------- */

static void s_expect_refused(const char *path, const char *why)
{
    ul_journal_load ld;
    int rc;
    ul_journal *j = s_open(path, 8, false, &ld, &rc);
    cr_assert_neq(rc, 0, "%s must be refused", why);
    cr_assert_null(j);
    j = s_open(path, 8, true, &ld, &rc);
    cr_assert_neq(rc, 0, "%s is refused even when forced: it is not the broker's file", why);
}

Test(journal, foreign_files_refused)
{
    char dir[256], path[320], other[340];
    s_path(dir, path, sizeof path, "jforeign");
    snprintf(other, sizeof other, "%s/elsewhere", dir);
    ul_journal_load ld;
    ul_journal *j = s_open_ok(other, 8, &ld);
    free(ld.recs);
    ul_journal_close(&j);

    cr_assert_eq(symlink(other, path), 0);
    s_expect_refused(path, "a symlink");
    unlink(path);

    cr_assert_eq(link(other, path), 0);
    s_expect_refused(path, "a hard link");
    unlink(path);

    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(chmod(path, 0620), 0);
    s_expect_refused(path, "a group-writable file");
    cr_assert_eq(chmod(path, 0600), 0);
    if (geteuid() == 0) {
        cr_assert_eq(chown(path, 65534, 65534), 0);
        s_expect_refused(path, "a file of another user");
    }
    ut_rmrf(dir);
}

Test(journal, invalid_record_stops_start_unless_forced)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jinv", dir, path, 8, NULL);
    ul_jrec good, bad;
    s_rec(&good, 1, "good@vm", "");
    s_rec(&bad, 2, "bad@vm", "");
    bad.pid = 0; /* whole and checksummed, but not a value the broker writes */
    cr_assert_eq(ul_journal_grant(j, &good), 0);
    cr_assert_eq(ul_journal_grant(j, &bad), 0);
    ul_journal_close(&j);
    int rc;
    j = s_open(path, 8, false, &ld, &rc);
    cr_assert_eq(rc, UVMLEASE_EBADVALUE, "a record it cannot trust could hide a live lease");
    j = s_open(path, 8, true, &ld, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(ld.invalid, 1);
    cr_assert_eq(ld.n, 1);
    cr_assert_eq(ld.recs[0].lease, 1);
    free(ld.recs);
    ul_journal_close(&j);
    j = s_open_ok(path, 8, &ld); /* the forced start repaired the file */
    cr_assert_eq(ld.n, 1);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* The offset of the first slot holding a record (magic "ULJR"), -1 if none. */
static off_t s_first_record(const char *path)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    unsigned char m[4];
    off_t found = -1;
    for (off_t off = 2 * UL_JOURNAL_SLOT; pread(fd, m, 4, off) == 4; off += UL_JOURNAL_SLOT)
        if (memcmp(m, "ULJR", 4) == 0) {
            found = off;
            break;
        }
    close(fd);
    return found;
}

static void s_patch(const char *path, off_t off, const void *b, size_t n)
{
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, b, n, off), (ssize_t)n);
    close(fd);
}

/* Bytes that are neither a record, nor a record's write cut short, nor a
 * clear: damage, which stops the start unless forced. */
Test(journal, garbage_in_a_slot_stops_start_unless_forced)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jgarb", dir, path, 8, NULL);
    ul_jrec a;
    s_rec(&a, 1, "garbage@vm", "");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    ul_journal_close(&j);
    off_t off = s_first_record(path);
    cr_assert_geq(off, 0);
    s_patch(path, off, "GARBAGE!", 8);
    int rc;
    j = s_open(path, 8, false, &ld, &rc);
    cr_assert_eq(rc, UVMLEASE_EBADVALUE, "damage was taken for a torn write");
    cr_assert_null(j);
    j = s_open(path, 8, true, &ld, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(ld.invalid, 1);
    cr_assert_eq(ld.torn, 0);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* A whole, checksummed record above the header's marks cannot be the
 * broker's (the marks are written before any record under them). */
Test(journal, record_above_the_marks_stops_start_unless_forced)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jabove", dir, path, 8, NULL);
    ul_jrec a;
    s_rec(&a, 1, "above@vm", "x");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    ul_journal_close(&j);
    off_t off = s_first_record(path);
    cr_assert_geq(off, 0);
    unsigned char b[UL_JOURNAL_SLOT];
    int fd = open(path, O_RDONLY);
    cr_assert_eq(pread(fd, b, sizeof b, off), (ssize_t)sizeof b);
    close(fd);
    memset(b + 16, 0x7f, 8); /* the lease id: far above any mark */
    size_t len = 80 + ((size_t)b[70] | (size_t)b[71] << 8) + ((size_t)b[72] | (size_t)b[73] << 8);
    uint32_t crc = ul_crc32c(0, b + 8, len - 8);
    for (int i = 0; i < 4; i++) /* little-endian, as the magic shows */
        b[4 + i] = (unsigned char)(crc >> (8 * i));
    s_patch(path, off, b, len);
    int rc;
    j = s_open(path, 8, false, &ld, &rc);
    cr_assert_eq(rc, UVMLEASE_EBADVALUE, "a record above the marks was trusted");
    j = s_open(path, 8, true, &ld, &rc);
    cr_assert_eq(rc, 0);
    cr_assert_eq(ld.invalid, 1);
    cr_assert_eq(ld.n, 0);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* A file shorter than its header says (cut by hand, or a copy cut
 * short) could have lost live records: the start stops. */
Test(journal, a_truncated_file_stops_start)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jtrunc", dir, path, 8, NULL);
    ul_jrec a;
    s_rec(&a, 1, "trunc@vm", "");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    ul_journal_close(&j);
    cr_assert_eq(truncate(path, (off_t)(2 + 5) * UL_JOURNAL_SLOT + 100), 0); /* mid-slot */
    int rc;
    j = s_open(path, 8, false, &ld, &rc);
    cr_assert_eq(rc, UVMLEASE_EBADVALUE, "a file cut short was taken as it is");
    cr_assert_null(j);
    ut_rmrf(dir);
}

Test(journal, lost_header_with_records_stops_start_unless_forced)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jhdr", dir, path, 8, NULL);
    ul_jrec r;
    s_rec(&r, 9, "hdr@vm", "");
    cr_assert_eq(ul_journal_grant(j, &r), 0);
    ul_journal_close(&j);
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, "XXXX", 4, 4), 4);
    cr_assert_eq(pwrite(fd, "XXXX", 4, UL_JOURNAL_SLOT + 4), 4);
    close(fd);
    int rc;
    j = s_open(path, 8, false, &ld, &rc);
    cr_assert_eq(rc, UVMLEASE_EBADVALUE, "without marks the next fence is unknown");
    j = s_open(path, 8, true, &ld, &rc);
    cr_assert_eq(rc, 0);
    cr_assert(ld.header_lost);
    cr_assert_eq(ld.n, 1);
    cr_assert_geq(ld.fence_hw, r.fence, "forced: the marks come from the records");
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* ---- the broker fails closed --------------------------------------------- */

static int s_ping_journal(void *sock, char *out, size_t n)
{
    ul_request q;
    ut_req(&q, UL_OP_PING);
    ul_reply rep;
    int rc = ut_call(sock, &q, &rep, 5000);
    if (rc == 0)
        snprintf(out, n, "%.*s", (int)(n - 1), rep.journal);
    ul_reply_free(&rep);
    return rc;
}

typedef struct s_grant_ctx {
    void *sock;
    atomic_int queued;
} s_grant_ctx;

static void s_on_queued(void *ctx)
{
    atomic_store(&((s_grant_ctx *)ctx)->queued, 1);
}

Test(journal, broker_fails_closed_and_resumes)
{
    s_fault f = {0};
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.max_leases = 64;
    cfg.journal_write = s_faulty;
    cfg.journal_write_ctx = &f;
    char dir[256];
    uvmlease_broker *b = ut_broker_start(&cfg, dir);
    const char *ep = uvmlease_broker_endpoint(b);
    void *holder = ut_dealer(ep);
    void *other = ut_dealer(ep);
    ul_reply rep;
    char health[UL_MAX_NAME + 1];

    cr_assert_eq(ut_acquire(holder, "fc@vm", true, "h", 0, &rep, NULL, NULL, 5000), 0);
    uint64_t lease = rep.lease, fence = rep.fence;
    ul_reply_free(&rep);
    cr_assert_eq(s_ping_journal(other, health, sizeof health), 0);
    cr_assert_str_eq(health, "ok");

    atomic_store(&f.mode, 1); /* the disk is gone */
    cr_assert_eq(ut_release(holder, lease), 0, "the holder's release itself succeeds");
    cr_assert_eq(s_ping_journal(other, health, sizeof health), 0);
    cr_assert_str_eq(health, "failing", "admins see it in ping");
    cr_assert_eq(ut_acquire(other, "fc@vm", true, "o", 0, &rep, NULL, NULL, 5000),
                 UVMLEASE_EJOURNAL, "the release is not on disk: nobody else may enter");
    ul_reply_free(&rep);
    cr_assert_eq(ut_acquire(other, "fresh@vm", true, "o", 0, &rep, NULL, NULL, 5000),
                 UVMLEASE_EJOURNAL, "no grant without its record");
    ul_reply_free(&rep);
    cr_assert_eq(ut_acquire(other, "fc@vm", true, "o", 200, &rep, NULL, NULL, 5000),
                 UVMLEASE_EJOURNAL, "a deadline passing says why");
    ul_reply_free(&rep);
    cr_assert_eq(ut_acquire(other, "std@vm", false, "s", 0, &rep, NULL, NULL, 5000), 0,
                 "shared leases go on");
    ul_reply_free(&rep);

    /* A waiter queued while failing is granted once writes work again,
     * without anyone doing anything. */
    s_grant_ctx gc = {.sock = other};
    atomic_store(&f.mode, 0);
    int rc = ut_acquire(other, "fc@vm", true, "w", 10000, &rep, s_on_queued, &gc, 10000);
    cr_assert_eq(rc, 0, "granted after recovery: %s", ul_status_name(rc));
    cr_assert_gt(rep.fence, fence);
    ul_reply_free(&rep);
    cr_assert_eq(s_ping_journal(other, health, sizeof health), 0);
    cr_assert_str_eq(health, "ok");
    ut_dealer_close(holder);
    ut_dealer_close(other);
    ut_broker_stop(&b, dir);
}

/* ---- a real small tmpfs ------------------------------------------------------- */

/* In a child with its own mount namespace: a broker whose runtime directory
 * is a tmpfs too small for its journal must refuse to start; one that fits
 * keeps granting after the tmpfs has been filled to the last byte. Exit 0
 * pass, 77 cannot mount here, other: failure step. */
static int s_tmpfs_child(const char *base)
{
    if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return 77;
    char mnt[300], rt[320];
    snprintf(mnt, sizeof mnt, "%s/mnt", base);
    snprintf(rt, sizeof rt, "%s/mnt/rt", base);
    if (mkdir(mnt, 0700) < 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=256k,mode=0700") < 0)
        return 77;
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = rt;
    cfg.max_leases = 1024; /* 1 MiB of journal: does not fit in 256 KiB */
    cfg.log_level = UL_LOG_ERROR + 1;
    uvmlease_broker *b = NULL;
    char err[512];
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err) == 0)
        return 2;
    if (!strstr(err, "cannot reserve"))
        return 3;
    cfg.max_leases = 64;
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err) != 0)
        return 4;
    char fill[340];
    snprintf(fill, sizeof fill, "%s/filler", mnt);
    int fd = open(fill, O_WRONLY | O_CREAT, 0600);
    static char block[4096];
    while (fd >= 0 && write(fd, block, sizeof block) > 0)
        ;
    if (fd < 0 || errno != ENOSPC)
        return 5;
    close(fd);
    void *s = ut_dealer(uvmlease_broker_endpoint(b));
    for (int i = 0; i < 200; i++) {
        ul_reply rep;
        char uvm[32];
        snprintf(uvm, sizeof uvm, "tmpfs-%d@vm", i % 7);
        if (ut_acquire(s, uvm, true, "t", 0, &rep, NULL, NULL, 5000) != 0)
            return 6;
        uint64_t lease = rep.lease;
        ul_reply_free(&rep);
        if (ut_release(s, lease) != 0)
            return 7;
    }
    /* A restart with a lease to restore, on the full tmpfs. */
    ul_reply rep;
    if (ut_acquire(s, "keep@vm", true, "k", 0, &rep, NULL, NULL, 5000) != 0)
        return 8;
    ul_reply_free(&rep);
    ut_dealer_close(s);
    uvmlease_broker_stop(&b);
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err) != 0)
        return 9;
    s = ut_dealer(uvmlease_broker_endpoint(b));
    int rc = ut_acquire(s, "keep@vm", true, "again", 0, &rep, NULL, NULL, 5000);
    bool held = rc == UVMLEASE_EBUSY && rep.has_holder && rep.holder.pid == (uint32_t)getpid();
    ul_reply_free(&rep);
    ut_dealer_close(s);
    uvmlease_broker_stop(&b);
    return held ? 0 : 10;
}

Test(journal, full_tmpfs_cannot_stop_grants)
{
    char dir[256];
    ut_tmpdir("jtmpfs", dir, sizeof dir);
    pid_t pid = ut_fork();
    if (pid == 0)
        _exit(s_tmpfs_child(dir));
    int code = ut_wait_code(pid, 30000);
    if (code == 77) {
        ut_rmrf(dir);
        cr_skip_test("cannot mount a tmpfs here (needs root and a mount namespace)");
    }
    cr_assert_eq(code, 0, "tmpfs step %d failed", code);
    ut_rmrf(dir);
}

/* A wall clock that stepped back (or one behind a marked fence) does not
 * take fences backwards: the journal's marks win. */
Test(journal, broker_fences_above_marks_not_clock)
{
    char dir[256], rt[300], path[340];
    ut_tmpdir("jclock", dir, sizeof dir);
    snprintf(rt, sizeof rt, "%s/rt", dir);
    cr_assert_eq(mkdir(rt, 0750), 0);
    snprintf(path, sizeof path, "%s/leases.journal", rt);
    ul_journal_load ld;
    ul_journal *j = s_open_ok(path, 64, &ld);
    free(ld.recs);
    ul_jrec r;
    s_rec(&r, UINT64_C(1) << 61, "clock@vm", "");
    r.fence = UINT64_C(1) << 62; /* far above the wall clock in microseconds */
    cr_assert_eq(ul_journal_grant(j, &r), 0);
    cr_assert_eq(ul_journal_release(j, r.lease), 0);
    ul_journal_close(&j);

    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = rt;
    cfg.max_leases = 64;
    cfg.log_level = UL_LOG_ERROR + 1;
    uvmlease_broker *b = NULL;
    char err[512];
    cr_assert_eq(uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err), 0, "%s", err);
    void *s = ut_dealer(uvmlease_broker_endpoint(b));
    ul_reply rep;
    cr_assert_eq(ut_acquire(s, "clock@vm", true, "", 0, &rep, NULL, NULL, 5000), 0);
    cr_assert_gt(rep.fence, UINT64_C(1) << 62);
    cr_assert_gt(rep.lease, UINT64_C(1) << 61);
    ul_reply_free(&rep);
    ut_dealer_close(s);
    uvmlease_broker_stop(&b);
    ut_rmrf(dir);
}

/* A write that fails after the bytes of the header: the slot's stale body
 * could complete it into a record that reads whole, so the slot is cleared
 * (retried) before it is used again. */
Test(journal, failed_write_never_leaves_a_record)
{
    char dir[256], path[320];
    s_fault f = {.cut = 80};
    ul_journal_load ld;
    ul_journal *j = s_fresh("jphantom", dir, path, 4, &f);
    ul_jrec a, b;
    s_rec(&a, 1, "same@vm", "same");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    cr_assert_eq(ul_journal_release(j, 1), 0);
    s_rec(&b, 2, "same@vm", "same"); /* same id and label: same tail */
    atomic_store(&f.mode, 2);
    cr_assert_eq(ul_journal_grant(j, &b), UVMLEASE_ESYSTEM);
    atomic_store(&f.mode, 0);
    cr_assert_eq(ul_journal_retry(j), 0);
    ul_journal_close(&j);
    j = s_open_ok(path, 4, &ld);
    cr_assert_eq(ld.n, 0, "the failed grant left no lease behind");
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* A magic cut short (a grant's first bytes over a cleared slot) is a torn
 * record, rolled back, not damage that stops the start. */
Test(journal, magic_cut_short_is_torn)
{
    char dir[256], path[320];
    s_fault f = {.cut = 2};
    ul_journal_load ld;
    ul_journal *j = s_fresh("jmagic", dir, path, 1, &f);
    ul_jrec a;
    s_rec(&a, 1, "cut@vm", "");
    cr_assert_eq(ul_journal_grant(j, &a), 0); /* the marks now cover lease 2 */
    cr_assert_eq(ul_journal_release(j, 1), 0);
    s_rec(&a, 2, "cut@vm", "");
    atomic_store(&f.mode, 2);
    cr_assert_eq(ul_journal_grant(j, &a), UVMLEASE_ESYSTEM);
    ul_journal_close(&j);
    int rc;
    j = s_open(path, 1, false, &ld, &rc);
    cr_assert_eq(rc, 0, "a torn magic must not stop the start");
    cr_assert_eq(ld.torn, 1);
    cr_assert_eq(ld.invalid, 0);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* A release clears more than the magic: a grant into the same slot cut
 * short right after its magic must not bring the released record back. */
Test(journal, released_record_not_revived_by_a_cut_grant)
{
    char dir[256], path[320];
    s_fault f = {.cut = 4};
    ul_journal_load ld;
    ul_journal *j = s_fresh("jrevive", dir, path, 1, &f);
    ul_jrec a;
    s_rec(&a, 1, "released@vm", "gone");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    cr_assert_eq(ul_journal_release(j, 1), 0);
    s_rec(&a, 2, "next@vm", "cut");
    atomic_store(&f.mode, 2);
    cr_assert_eq(ul_journal_grant(j, &a), UVMLEASE_ESYSTEM);
    ul_journal_close(&j); /* the broker dies before the retry */
    j = s_open_ok(path, 1, &ld);
    cr_assert_eq(ld.n, 0, "a released lease came back (lease %llu)",
                 ld.n ? (unsigned long long)ld.recs[0].lease : 0ull);
    cr_assert_eq(ld.torn, 1);
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* Lease 0 names no lease: releasing it clears nothing (0 marks an empty
 * bucket of the journal's lease map). */
Test(journal, release_of_lease_zero_clears_nothing)
{
    char dir[256], path[320];
    ul_journal_load ld;
    ul_journal *j = s_fresh("jzero", dir, path, 4, NULL);
    ul_jrec a;
    s_rec(&a, 1, "kept@vm", "a");
    cr_assert_eq(ul_journal_grant(j, &a), 0);
    cr_assert_eq(ul_journal_release(j, 0), 0);
    ul_journal_close(&j);
    j = s_open_ok(path, 4, &ld);
    cr_assert_eq(ld.n, 1, "a live record was cleared by a release of lease 0");
    free(ld.recs);
    ul_journal_close(&j);
    ut_rmrf(dir);
}

/* A shared lease whose record cannot be written is granted unrecorded,
 * but the journal is failing all the same: exclusive grants wait until
 * the retry has cleared the slot the write may have cut short. */
Test(journal, failed_shared_write_is_retried)
{
    s_fault f = {0};
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.max_leases = 16;
    cfg.journal_write = s_faulty;
    cfg.journal_write_ctx = &f;
    char dir[256];
    uvmlease_broker *b = ut_broker_start(&cfg, dir);
    void *s = ut_dealer(uvmlease_broker_endpoint(b));
    ul_reply rep;
    atomic_store(&f.mode, 1);
    cr_assert_eq(ut_acquire(s, "shared@vm", false, "std", 0, &rep, NULL, NULL, 5000), 0,
                 "a shared lease is granted unrecorded");
    uint64_t lease = rep.lease;
    ul_reply_free(&rep);
    char health[UL_MAX_NAME + 1];
    cr_assert_eq(s_ping_journal(s, health, sizeof health), 0);
    cr_assert_str_eq(health, "failing");
    atomic_store(&f.mode, 0);
    cr_assert_eq(ut_acquire(s, "conf@vm", true, "c", 10000, &rep, NULL, NULL, 10000), 0,
                 "granted once the retry went through");
    ul_reply_free(&rep);
    cr_assert_eq(s_ping_journal(s, health, sizeof health), 0);
    cr_assert_str_eq(health, "ok");
    cr_assert_eq(ut_release(s, lease), 0);
    ut_dealer_close(s);
    ut_broker_stop(&b, dir);
}

/* watch-child writes a new copy of the record, then clears the old one.
 * When only that clear fails, a release would leave the old copy behind:
 * the broker must hold grants back until the clear is retried. */
Test(journal, failed_clear_after_child_copy_holds_grants)
{
    s_fault f = {0};
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.max_leases = 16;
    cfg.journal_write = s_faulty;
    cfg.journal_write_ctx = &f;
    char dir[256];
    int go[2];
    cr_assert_eq(pipe(go), 0);
    pid_t child = ut_fork();
    if (child == 0) {
        char c;
        close(go[1]);
        _exit(read(go[0], &c, 1) < 0);
    }
    close(go[0]);
    uvmlease_broker *b = ut_broker_start(&cfg, dir);
    void *s = ut_dealer(uvmlease_broker_endpoint(b));
    ul_reply rep;
    cr_assert_eq(ut_acquire(s, "cx@vm", true, "run", 0, &rep, NULL, NULL, 5000), 0);
    uint64_t lease = rep.lease;
    ul_reply_free(&rep);
    atomic_store(&f.only_clears, 1); /* the copy is written, the clear fails */
    atomic_store(&f.mode, 1);
    ul_request q;
    ut_req(&q, UL_OP_WATCH_CHILD);
    q.lease = lease;
    q.pid = (uint32_t)child;
    cr_assert_eq(ut_call(s, &q, &rep, 5000), 0);
    ul_reply_free(&rep);
    char health[UL_MAX_NAME + 1];
    cr_assert_eq(s_ping_journal(s, health, sizeof health), 0);
    cr_assert_str_eq(health, "failing", "the old copy is still on disk");
    cr_assert_eq(ut_release(s, lease), 0);
    cr_assert_eq(ut_acquire(s, "cx@vm", true, "next", 0, &rep, NULL, NULL, 5000), UVMLEASE_EJOURNAL,
                 "granted again while a copy of the old lease is on disk");
    ul_reply_free(&rep);
    atomic_store(&f.mode, 0);
    cr_assert_eq(ut_acquire(s, "cx@vm", true, "next", 10000, &rep, NULL, NULL, 10000), 0,
                 "granted once the clear was retried");
    ul_reply_free(&rep);
    close(go[1]);
    ut_wait_code(child, 5000);
    ut_dealer_close(s);
    ut_broker_stop(&b, dir);
}
