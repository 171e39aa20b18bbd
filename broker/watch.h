/*
 * watch.h — the live event stream (watch / unwatch) and the latency
 * histograms of stats, fed by table events.
 */
#ifndef UL_WATCH_H
#define UL_WATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "broker_internal.h"

#define UL_WATCH_HISTS 8 /* histograms ul_watch_hists writes at most */

/* Subscribe (or with unwatch, unsubscribe) the peer's connection. 0, or
 * EINVAL / ERESOURCE / ENOMEM with *why for the reply. */
int ul_watch_subscribe(uvmlease_broker *b, const ul_peer *peer, bool unwatch, const char **why);
/* Send ev (at_ms is set here) to every watcher. */
void ul_watch_emit(uvmlease_broker *b, ul_event *ev);
/* A table event: observe its latencies and emit it as a watch event. */
void ul_watch_table_event(uvmlease_broker *b, const lt_event *ev);
/* The process is gone: drop its watchers. */
void ul_watch_proc_gone(uvmlease_broker *b, const bproc *p);
/* Whether the process has a watcher (it stays tracked meanwhile). */
bool ul_watch_has(const uvmlease_broker *b, uint32_t pid);
/* The histograms of stats into out (room for UL_WATCH_HISTS); how many. */
uint32_t ul_watch_hists(uvmlease_broker *b, ul_histogram *out);
void ul_watch_free(uvmlease_broker *b);

#endif
