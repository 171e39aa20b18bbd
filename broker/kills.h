/*
 * kills.h — force-release --mode kill: SIGTERM, then SIGKILL after the
 * grace period, through pidfds.
 */
#ifndef UL_KILLS_H
#define UL_KILLS_H

#include <stdint.h>

#include "broker_internal.h"

/* Signal the processes that keep the UVM's leases named by pid (0: all).
 * Room for every job is checked before anything is signalled. 0 (with
 * *signalled), ENOLEASE (pid names no lease), ERESOURCE or ENOMEM. */
int ul_kills_start(uvmlease_broker *b, lt_uvm *u, uint32_t pid, uint64_t now, uint32_t *signalled);
/* The process is gone: forget its job. */
void ul_kills_proc_gone(uvmlease_broker *b, const bproc *p);
/* SIGKILL the processes whose grace period ran out; the next deadline. */
uint64_t ul_kills_tick(uvmlease_broker *b, uint64_t now);
void ul_kills_free(uvmlease_broker *b);

#endif
