/*
 * notify.c — sd_notify glue for uvmleased (see notify.h).
 */
#include "notify.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifdef UL_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>

/* Without a watchdog, STATUS= is refreshed this often. */
#define S_STATUS_MS 5000

static bool s_watchdog;
/* Set once serving; valid until the broker is stopped, after its loop. */
static _Atomic(const char *) s_endpoint;

/* On the broker's thread, from its loop. */
static void s_beat(void *ctx, const uvmlease_broker_status *st)
{
    (void)ctx;
    const char *ep = atomic_load(&s_endpoint);
    sd_notifyf(0, "%sSTATUS=%s%s%s%" PRIu64 " lease%s held, %" PRIu64 " waiting, journal %s",
               s_watchdog ? "WATCHDOG=1\n" : "", ep ? "serving " : "", ep ? ep : "", ep ? ": " : "",
               st->holders, st->holders == 1 ? "" : "s", st->waiters,
               st->journal_healthy ? "ok" : "FAILING (grants suspended)");
}

void ul_notify_setup(uvmlease_broker_config *cfg)
{
    const char *sock = getenv("NOTIFY_SOCKET");
    if (!sock || !*sock)
        return;
    uint64_t usec = 0;
    s_watchdog = sd_watchdog_enabled(0, &usec) > 0 && usec > 0;
    cfg->heartbeat = s_beat;
    cfg->heartbeat_ctx = NULL;
    /* Ping at half the watchdog period, as sd_watchdog_enabled(3) advises. */
    cfg->heartbeat_ms = S_STATUS_MS;
    if (s_watchdog) {
        uint64_t ms = usec / 2000;
        cfg->heartbeat_ms = ms ? ms : 1;
    }
}

void ul_notify_ready(const uvmlease_broker *b)
{
    atomic_store(&s_endpoint, uvmlease_broker_endpoint(b));
    sd_notifyf(0, "READY=1\nMAINPID=%d\nSTATUS=serving %s", (int)getpid(),
               uvmlease_broker_endpoint(b));
}

void ul_notify_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=stopping");
}

#else

void ul_notify_setup(uvmlease_broker_config *cfg)
{
    (void)cfg;
}
void ul_notify_ready(const uvmlease_broker *b)
{
    (void)b;
}
void ul_notify_stopping(void) {}

#endif
