/*
 * notify.h — uvmleased and its service manager (sd_notify): READY=1 once
 * serving, STOPPING=1, and from the broker's loop WATCHDOG=1 (when the unit
 * sets WatchdogSec=) with a STATUS= line on leases held and journal health.
 * Does nothing when not started by systemd (no $NOTIFY_SOCKET) or when
 * built without libsystemd.
 */
#ifndef UL_NOTIFY_H
#define UL_NOTIFY_H

#include "uvmlease_broker.h"

/* Before uvmlease_broker_start: set cfg's heartbeat. */
void ul_notify_setup(uvmlease_broker_config *cfg);
/* The broker is serving. */
void ul_notify_ready(const uvmlease_broker *b);
/* The daemon is stopping. */
void ul_notify_stopping(void);

#endif
