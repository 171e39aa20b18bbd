/*
 * admin.c — the admin view and control operations (list, show, watch,
 * stats, drain, undrain, force-release) and the hooks the loop calls for
 * them.
 */
#include "broker_internal.h"

void ul_broker_admin(uvmlease_broker *b, const ul_peer *peer, const ul_request *req)
{
    ul_broker_reply_error(b, peer, req, UVMLEASE_ENOTIMPL,
                          "admin and view operations are not available in this broker yet");
}

void ul_broker_event_hook(uvmlease_broker *b, const lt_event *ev)
{
    (void)b;
    (void)ev;
}

void ul_broker_proc_gone_hook(uvmlease_broker *b, bproc *p)
{
    (void)b;
    (void)p;
}

bool ul_broker_proc_pinned(uvmlease_broker *b, const bproc *p)
{
    (void)b;
    return p->kill_pending;
}

uint64_t ul_broker_timers(uvmlease_broker *b, uint64_t now)
{
    (void)b;
    (void)now;
    return LT_NEVER;
}

void ul_broker_admin_free(uvmlease_broker *b) { (void)b; }
