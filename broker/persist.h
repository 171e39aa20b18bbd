/*
 * persist.h — the broker's side of the lease journal: open and restore at
 * start, record grants (as the lease table's persist hook), releases and
 * watched children, and keep the journal's health: while it cannot be
 * written, exclusive grants are suspended, and they resume by themselves
 * once a write works again.
 */
#ifndef UL_PERSIST_H
#define UL_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "journal.h"
#include "lease_table.h"

typedef struct uvmlease_broker uvmlease_broker;
struct bproc;

/* Open the journal in the runtime directory (before the table exists).
 * 0 or a status with err set. *ld is the caller's to free (ld->recs). */
int ul_persist_open(uvmlease_broker *b, ul_journal_load *ld, char *err, size_t errsz);
/* Put back the journalled leases whose holders still run; clear the rest
 * (an abnormal release: quarantine). 0 with *restored, or EBADVALUE with
 * err when a lease of a live holder cannot be put back, or a holder's
 * liveness cannot be told — unless the operator forced the start, when
 * such a lease is treated as released. */
int ul_persist_restore(uvmlease_broker *b, const ul_journal_load *ld, size_t *restored, char *err,
                       size_t errsz);

/* lt_config.persist: write the grant's record. */
int ul_persist_grant(void *ctx, const lt_lease *l);
/* A lease ended: clear its record (on failure: suspend, retry later). */
void ul_persist_release(uvmlease_broker *b, uint64_t lease);
/* A watched child was attached: rewrite the record. 0 or EJOURNAL. */
int ul_persist_child(uvmlease_broker *b, uint64_t lease, const struct bproc *child);

/* Retry a failing journal; resumes grants when it works. Not from a table
 * callback. Returns the next time it wants to run (LT_NEVER if healthy). */
uint64_t ul_persist_tick(uvmlease_broker *b, uint64_t now);
bool ul_persist_healthy(const uvmlease_broker *b);

void ul_persist_close(uvmlease_broker *b);

#endif
