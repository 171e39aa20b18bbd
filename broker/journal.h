/*
 * journal.h — the broker's lease journal: a restarted broker (even after
 * kill -9) keeps the leases whose holders still run.
 *
 * One file in the broker's private runtime directory, its size fixed when
 * it is created: two header slots (written alternately) and one 1 KiB slot
 * per lease the broker may hold at once. The space is reserved at creation
 * (posix_fallocate), so a file system that fills up later cannot stop a
 * grant; there is nothing to compact and the file never grows.
 *
 *   header: magic, version, slot count, sequence, the high-water marks of
 *           fences and lease ids (every value ever handed out is below
 *           them, so they survive a wall-clock step back), CRC-32C.
 *   record: magic, CRC-32C, sequence, lease, fence, rid, holder pid, uid
 *           and start time, watched child, class, UVM id, label.
 *
 * A grant writes a record into a free slot; a release clears the slot's
 * magic and CRC (8 bytes); attaching a child writes a new record into another slot
 * and then clears the old one (a higher sequence wins at load). So every
 * multi-byte write goes to a slot nothing live depends on, and a record cut
 * short (a CRC that does not match) is one whose effect was never
 * acknowledged: it is rolled back. A slot never crosses a page.
 *
 * Everything read back is range-checked as strictly as the same value on
 * the wire. A record that reads whole but is invalid, an unreadable header
 * with records present, or a file that is not the broker's own makes
 * ul_journal_open() refuse, unless `force` (operator's choice).
 */
#ifndef UL_JOURNAL_H
#define UL_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ul_proto.h"

#define UL_JOURNAL_SLOT    1024u
#define UL_JOURNAL_HW_STEP 65536u /* fences/lease ids reserved per header write */

/* One lease as journalled. */
typedef struct ul_jrec {
    uint64_t lease, fence, rid;
    uint32_t pid, uid;
    uint64_t start_time;
    bool confidential;
    char uvm[UL_MAX_UVM + 1];
    char label[UL_MAX_LABEL + 1];
    uint32_t child_pid; /* 0 if none */
    uint64_t child_start;
} ul_jrec;

/* Writes go through this (pwrite semantics); tests inject failures. */
typedef ssize_t (*ul_journal_write_fn)(void *ctx, int fd, const void *buf, size_t n, off_t off);

typedef struct ul_journal ul_journal;

/* What ul_journal_open() found. */
typedef struct ul_journal_load {
    ul_jrec *recs; /* live records (caller frees with free()) */
    size_t n;
    uint64_t fence_hw; /* every fence handed out so far is <= this */
    uint64_t lease_hw; /* every lease id handed out so far is <= this */
    size_t torn;       /* records cut short: rolled back */
    size_t invalid;    /* unreadable or out-of-range records (refused unless force) */
    size_t superseded; /* older copies of a lease (child attach): cleared */
    bool created;      /* no journal existed */
    bool resized;      /* rewritten with another slot count */
    bool header_lost;  /* no valid header (refused unless force or empty) */
} ul_journal_load;

/*
 * Open (or create, mode 0600) the journal at path with `slots` lease slots
 * (1..1048576) and read it. The file must be a regular file owned by the
 * broker's uid, not writable by group or others, with one link, reached
 * without a symlink; anything else is refused and named, never repaired.
 * Returns 0 (with *out and *ld filled), UVMLEASE_ESYSTEM (errno set) or
 * UVMLEASE_EBADVALUE (damaged content); err gets a one-line reason. write
 * may be NULL (pwrite).
 */
int ul_journal_open(ul_journal **out, const char *path, uint32_t slots, bool force,
                    ul_journal_write_fn write, void *wctx, ul_journal_load *ld, char *err,
                    size_t errsz);
void ul_journal_close(ul_journal **j);

/*
 * Record a grant. 0 once the record is completely written (and the
 * high-water marks cover its fence and id); UVMLEASE_ERESOURCE when every
 * slot is in use; UVMLEASE_ESYSTEM when a write failed (nothing is
 * recorded, the journal is unhealthy until ul_journal_retry succeeds).
 */
int ul_journal_grant(ul_journal *j, const ul_jrec *r);
/* Rewrite a journalled lease with its watched child (r->lease names it).
 * 0 once the new copy is written — if clearing the old copy failed, the
 * journal is unhealthy until ul_journal_retry (check it: a release before
 * then would leave the old copy behind) — UVMLEASE_ENOLEASE (not
 * journalled), ERESOURCE or ESYSTEM. */
int ul_journal_child(ul_journal *j, const ul_jrec *r);
/* Record a release. 0 (also for a lease never journalled) or ESYSTEM: the
 * clear is retried by ul_journal_retry and the journal is unhealthy until
 * then. */
int ul_journal_release(ul_journal *j, uint64_t lease);
/* Retry pending clears and prove a header write works. 0 when healthy. */
int ul_journal_retry(ul_journal *j);

bool ul_journal_healthy(const ul_journal *j);
const char *ul_journal_path(const ul_journal *j);
uint32_t ul_journal_slots(const ul_journal *j);
uint32_t ul_journal_used(const ul_journal *j);
uint64_t ul_journal_write_failures(const ul_journal *j);
/* errno of the last failed write (0 if none). */
int ul_journal_last_errno(const ul_journal *j);

/* CRC-32C (Castagnoli) of n bytes, continuing from crc (0 to start). */
uint32_t ul_crc32c(uint32_t crc, const void *data, size_t n);

#endif
