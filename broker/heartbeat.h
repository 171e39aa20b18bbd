/*
 * heartbeat.h — the embedder's heartbeat (uvmlease_broker_config.heartbeat),
 * called from the broker's loop: a loop that stops turning stops calling
 * it. uvmleased turns it into systemd's WATCHDOG=1 and STATUS= lines.
 */
#ifndef UL_HEARTBEAT_H
#define UL_HEARTBEAT_H

#include <stdint.h>

typedef struct uvmlease_broker uvmlease_broker;

/* Call cfg.heartbeat if it is due; returns the next time it is (LT_NEVER
 * without a heartbeat). */
uint64_t ul_heartbeat_tick(uvmlease_broker *b, uint64_t now);

#endif
