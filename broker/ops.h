/*
 * ops.h — the client operations: hello/ping, acquire, cancel, release,
 * phase, watch-child.
 */
#ifndef UL_OPS_H
#define UL_OPS_H

#include "broker_internal.h"

/* Handle a decoded client request; every request is answered. */
void ul_ops_handle(uvmlease_broker *b, const ul_peer *peer, const ul_request *req);

#endif
