/*
 * admin.h — the admin view and control operations: list, show, stats,
 * watch/unwatch (open to anyone who can connect) and drain, undrain,
 * force-release (uid 0 or the admin group, audited).
 */
#ifndef UL_ADMIN_H
#define UL_ADMIN_H

#include "broker_internal.h"

/* Handle a decoded admin or view request; every request is answered. */
void ul_admin_handle(uvmlease_broker *b, const ul_peer *peer, const ul_request *req);
void ul_broker_admin_free(uvmlease_broker *b);

#endif
