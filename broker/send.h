/*
 * send.h — everything that leaves the broker: replies, unasked messages,
 * what could not be sent, and the log of rejected input.
 */
#ifndef UL_SEND_H
#define UL_SEND_H

#include <stddef.h>
#include <stdint.h>

#include "broker_internal.h"

#define UL_REJECT_BURST 20 /* rejected-input log lines allowed in a burst */

/* Encode rep into b->out (0 or a status, logged). */
int ul_broker_encode(uvmlease_broker *b, ul_reply *rep);
/* Send encoded bytes to a route: 0, -1 if the peer is gone, -2 if not sent
 * (over its high-water mark). */
int ul_broker_send_raw(uvmlease_broker *b, const broute *to, const void *data, size_t len);
/* Encode and send: as ul_broker_send_raw, -2 also when encoding failed (a
 * reply that cannot be encoded is answered "internal" instead). A message
 * not sent is counted by kind (stats "undelivered_total"). */
int ul_broker_send(uvmlease_broker *b, const broute *to, ul_reply *rep);
/* A grant of l could not be sent (sent: the ul_broker_send result): log it
 * and queue the lease (safe inside a table event) for ul_broker_undo_lost. */
void ul_broker_grant_lost(uvmlease_broker *b, const lt_lease *l, int sent);
/* Release every queued lost grant with reason "undeliverable"; the next
 * waiters are granted, and their grants may be lost in turn. Call after
 * every table call that can grant. */
void ul_broker_undo_lost(uvmlease_broker *b);
/* A holder as admins see it (wall-clock phase times). */
void ul_broker_fill_holder(const uvmlease_broker *b, const lt_lease *l, uint64_t now, ul_holder *h,
                           bool with_phases);
uint64_t ul_broker_wall_of(const uvmlease_broker *b, uint64_t mono_ms);
/* Count and (rate-limited) log a rejected message. */
void ul_broker_log_reject(uvmlease_broker *b, uint32_t pid, int code, const char *what);

/* A reply to req (rid and op echoed; req may be NULL). */
void ul_reply_init(ul_reply *rep, const ul_request *req);
/* Answer req with code (0: success) and an optional detail. */
void ul_broker_reply_error(uvmlease_broker *b, const ul_peer *peer, const ul_request *req, int code,
                           const char *detail);

#endif
