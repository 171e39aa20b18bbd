/*
 * state.h — the broker's lease journal, so that a restarted broker (even
 * after kill -9) keeps the leases whose holders still run.
 *
 * One text line per event, appended with one write(2) to a file beside the
 * socket (tmpfs under /run: it vanishes with the host, like the UVMs):
 *   G <lease> <fence> <pid> <start-time> <uid> <rid> <conf> <uvm> <label-hex|->
 *   C <lease> <child-pid> <child-start-time>
 *   R <lease>
 * At start the journal is read, the live leases are handed to a callback,
 * and the file is rewritten with only what was restored.
 */
#ifndef UL_STATE_H
#define UL_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ul_proto.h"

typedef struct ul_state_lease {
    uint64_t lease, fence, rid;
    uint32_t pid, uid;
    uint64_t start_time;
    bool confidential;
    char uvm[UL_MAX_UVM + 1];
    char label[UL_MAX_LABEL + 1];
    uint32_t child_pid; /* 0 if none */
    uint64_t child_start;
    bool released;
} ul_state_lease;

typedef struct ul_state {
    int fd;
    char path[4096];
    uint64_t records; /* lines in the file */
} ul_state;

/*
 * Read the journal at path (missing is fine). Returns 0 and a calloc'd
 * array of the leases not released (*out, *n; caller frees), and the
 * largest lease id and fence seen (0 if none). Malformed lines are skipped
 * and counted in *bad. Returns UVMLEASE_ESYSTEM on a read error.
 */
int ul_state_load(const char *path, ul_state_lease **out, size_t *n, uint64_t *max_lease,
                  uint64_t *max_fence, size_t *bad);

/* Write the given leases as a fresh journal (temp file + rename) and open
 * it for appending. 0 or UVMLEASE_ESYSTEM. */
int ul_state_rewrite(ul_state *st, const char *path, const ul_state_lease *leases, size_t n);

/* Append one record. Errors are returned (UVMLEASE_ESYSTEM) and the caller
 * logs them: a lease is never refused because the journal failed. */
int ul_state_grant(ul_state *st, const ul_state_lease *l);
int ul_state_child(ul_state *st, uint64_t lease, uint32_t pid, uint64_t start);
int ul_state_release(ul_state *st, uint64_t lease);

void ul_state_close(ul_state *st);

#endif
