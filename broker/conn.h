/*
 * conn.h — connections and the processes pinned behind them.
 *
 * Identity belongs to the connection, not to a pid read at request time:
 * when libzmq accepts a connection the broker pins the process that opened
 * it (a pidfd, its start time, its uid), and the ZAP handler gives the
 * connection a User-Id naming that pin. Every message then carries the pin,
 * and once the pinned process has exited the connection's messages are
 * refused, so a process that later gets the same pid inherits nothing.
 *
 * The same code bounds connections per uid and in total, well below the
 * descriptor limit: libzmq 4.3.4's ipc listener aborts the process when
 * accept(2) fails with EMFILE.
 */
#ifndef UL_CONN_H
#define UL_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

struct uvmlease_broker;
struct ul_peer;
struct bproc;

/* Poll items the connection code needs in the broker loop. */
#define UL_CONN_NITEMS 3

/* Set up the ZAP handler, the socket monitor and the limits for b->router.
 * Call after the router exists and before it binds. 0 or a status, with a
 * message in err. */
int ul_conn_open(struct uvmlease_broker *b, char *err, size_t errsz);
/* Free everything; call before closing the router. */
void ul_conn_close(struct uvmlease_broker *b);

/* Fill UL_CONN_NITEMS poll items (monitor, ZAP, pinned process exits). */
void ul_conn_pollitems(struct uvmlease_broker *b, zmq_pollitem_t *items);
/* Handle whatever the items report; items as filled and polled. */
void ul_conn_service(struct uvmlease_broker *b, const zmq_pollitem_t *items);

/*
 * The identity of a received message: the pinned process of the connection
 * it came on. Fills peer (uid, gid, pid, start time, pin). Returns 0, or
 * UVMLEASE_EPEER with *why naming the reason (the connection is unknown, the
 * pinned process has exited, another pid namespace) and whatever of peer is
 * known.
 */
int ul_conn_identify(struct uvmlease_broker *b, zmq_msg_t *msg, struct ul_peer *peer,
                     const char **why);

/* The broker's tracked process for a peer, checked to be the peer's pinned
 * process (same start time, still running). NULL and *err otherwise. */
struct bproc *ul_conn_peer_proc(struct uvmlease_broker *b, const struct ul_peer *peer, int *err);

/* Whether the peer's pinned process is in group gid (effective or
 * supplementary, from /proc), re-checked through its pidfd after the read so
 * the read cannot belong to a process that reused the pid. */
bool ul_conn_peer_in_group(const struct ul_peer *peer, uint32_t gid);

/* The pinned process's command name (read when it was pinned). */
const char *ul_conn_peer_comm(const struct ul_peer *peer);

#endif
