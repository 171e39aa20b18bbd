/*
 * procs.h — the client processes the broker watches (bproc in
 * broker_internal.h): looked up or pinned by pid, one pidfd each, and an
 * LRU of idle ones.
 */
#ifndef UL_PROCS_H
#define UL_PROCS_H

#include "broker_internal.h"

/* The tracked process for a peer pid, created on first use: pidfd first,
 * then the start time, so the start time read belongs to the process the
 * pidfd watches. NULL with *err set (EPEER: already gone; ERESOURCE;
 * ENOMEM). */
bproc *ul_broker_proc_get(uvmlease_broker *b, uint32_t pid, uint32_t uid, int *err);
/* As ul_broker_proc_get for a pid whose process (with start time start)
 * is known to run now: no liveness check for the tracked one. */
bproc *ul_broker_proc_get_pinned(uvmlease_broker *b, uint32_t pid, uint32_t uid, uint64_t start,
                                 int *err);
/* Queue p among the idle if it has nothing left (forgetting the oldest
 * idle ones beyond a bound). Safe on NULL. */
void ul_broker_proc_maybe_forget(uvmlease_broker *b, bproc *p);
/* Run maybe_forget on every process a table event touched. */
void ul_broker_proc_check_idle(uvmlease_broker *b);
/* A lease or waiter of o ended inside a table call: look at the process
 * once the call has returned (inactive also uncounts it). Safe inside a
 * table event. */
void ul_proc_touch(uvmlease_broker *b, const lt_owner *o);
void ul_proc_inactive(uvmlease_broker *b, const lt_owner *o);
/* Handle the deaths the pidfds report: their leases and waiters end. */
void ul_procs_reap(uvmlease_broker *b);
/* Close every pidfd and free every process (no table events). */
void ul_procs_free(uvmlease_broker *b);

#endif
