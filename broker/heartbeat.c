/*
 * heartbeat.c — the embedder's heartbeat (see heartbeat.h).
 */
#include "heartbeat.h"

#include "broker_internal.h"
#include "persist.h"

uint64_t ul_heartbeat_tick(uvmlease_broker *b, uint64_t now)
{
    if (!b->cfg.heartbeat || !b->cfg.heartbeat_ms)
        return LT_NEVER;
    if (now >= b->heartbeat_at) {
        const lt_stats *ls = lt_stats_get(b->table);
        uvmlease_broker_status st = {
            .holders = ls->holders,
            .waiters = ls->waiters,
            .journal_healthy = ul_persist_healthy(b),
        };
        b->cfg.heartbeat(b->cfg.heartbeat_ctx, &st);
        b->heartbeat_at = now + b->cfg.heartbeat_ms;
    }
    return b->heartbeat_at;
}
