/*
 * events.h — the lease table's event callback (lt_config.on_event).
 */
#ifndef UL_EVENTS_H
#define UL_EVENTS_H

#include "lease_table.h"

/* ctx is the broker. Logs, persists, sends and notifies; never calls back
 * into the table. */
void ul_broker_on_event(void *ctx, const lt_event *ev);

#endif
