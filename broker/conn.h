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

/* What the connection code waits for in the broker loop: bits of the
 * tags it registers (the loop's own tags use other bits). */
#define UL_CONN_EV_MON 0x10u /* the socket monitor: accepts, disconnects */
#define UL_CONN_EV_ZAP 0x20u /* ZAP requests: handshakes to admit */
#define UL_CONN_EV_PIN 0x40u /* a pinned process exited */
#define UL_CONN_EV_ALL (UL_CONN_EV_MON | UL_CONN_EV_ZAP | UL_CONN_EV_PIN)

/* Set up the ZAP handler, the socket monitor and the limits for b->router.
 * Call after the router exists and before it binds. 0 or a status, with a
 * message in err. */
int ul_conn_open(struct uvmlease_broker *b, char *err, size_t errsz);
/* Free everything; call before closing the router. */
void ul_conn_close(struct uvmlease_broker *b);

/* Add what the connection code waits for to the loop's wait set ws, each
 * tagged (void *)(uintptr_t)UL_CONN_EV_*. 0, or -1 and errno. The
 * monitor's and the ZAP socket's descriptors only say that libzmq has
 * news for them; ul_conn_service reads each until it has nothing more, so
 * the descriptor signals again on the next news. */
int ul_conn_watch(struct uvmlease_broker *b, int ws);
/* Handle what the tags in ready (UL_CONN_EV_* bits) report. */
void ul_conn_service(struct uvmlease_broker *b, unsigned ready);

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
