/*
 * uvmlease_broker.h — the uvmlease broker as a library.
 *
 * uvmlease_broker_start() runs a broker on its own thread with its own
 * ZeroMQ context and returns once the endpoint is bound (or with an error).
 * The embedded broker installs no signal handlers, never touches the umask
 * or other process-wide state, and logs through a callback. The daemon
 * uvmleased is a thin main() over the same functions.
 */
#ifndef UVMLEASE_BROKER_H
#define UVMLEASE_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ul_log.h"
#include "lease_table.h"

typedef struct uvmlease_broker uvmlease_broker;

/* What the broker's loop reports to a heartbeat callback. */
typedef struct uvmlease_broker_status {
    uint64_t holders;     /* leases held now */
    uint64_t waiters;     /* acquires waiting now */
    bool journal_healthy; /* false while journal writes fail (grants suspended) */
} uvmlease_broker_status;

typedef struct uvmlease_broker_config {
    /* The broker's private directory: lock file and lease journal, and the
     * socket unless endpoint puts it elsewhere. NULL: /run/uvmlease as
     * root, else $XDG_RUNTIME_DIR/uvmlease. Created 0750 if missing; an
     * existing one must be the broker's and not writable by others. */
    const char *runtime_dir;
    /* "ipc://PATH". NULL: ipc://<runtime_dir>/broker.sock. Nothing but the
     * socket is ever placed beside PATH; a live broker answering there, or
     * a file that is not the broker's own socket, is refused. */
    const char *endpoint;
    /* Group allowed to connect (name or number); NULL: the broker's gid. */
    const char *socket_group;
    /* Group whose members may run admin operations; NULL: uid 0 only. */
    const char *admin_group;
    lt_serialize serialize; /* default LT_SERIALIZE_CONFIDENTIAL */
    uint32_t max_active;    /* default 0: no host-wide cap */
    uint64_t quarantine_ms; /* default 0 */
    uint64_t hold_warn_ms;  /* default 300000 */
    uint64_t kill_grace_ms; /* force-release kill: SIGTERM..SIGKILL, default 5000 */
    /* Leases plus waiters the broker holds at once, host-wide; also sizes
     * the lease journal (1 KiB per lease, reserved at start). 0: 16384. */
    uint32_t max_leases;
    /* Start even when the journal is damaged in a way that could hide a
     * live lease (the operator has checked). Default false: refuse. */
    bool force_journal;
    /* Fault injection for tests: every journal write goes through this
     * (pwrite semantics). NULL: pwrite. */
    ssize_t (*journal_write)(void *ctx, int fd, const void *buf, size_t n, off_t off);
    void *journal_write_ctx;
    /* Pin a connection's process with pidfd_open(2) of its SO_PEERCRED pid
     * even where the kernel offers SO_PEERPIDFD (Linux >= 6.5): the path
     * Debian 12's 6.1 kernel takes, so tests can cover it. Default false. */
    bool pin_by_pid;
    /* Called on the broker's own thread, from its loop, once at start and
     * then every heartbeat_ms (0: never, the default), whatever the loop is
     * doing: a loop that stops turning stops calling it, which is what a
     * service manager's watchdog needs. It must be quick and must not call
     * into the broker. */
    void (*heartbeat)(void *ctx, const uvmlease_broker_status *st);
    void *heartbeat_ctx;
    uint64_t heartbeat_ms;
    ul_log_level log_level; /* default UL_LOG_INFO */
    /* Lines of the broker's thread reach the sink from that thread: info
     * and debug lines in batches, at most 100 ms after their event (each
     * keeps its own ts=), warnings and errors at once; lines of start and
     * stop from the caller's thread. NULL: stderr. */
    ul_log_sink log_sink;
    void *log_ctx;
} uvmlease_broker_config;

/* Fill cfg with the defaults above. */
void uvmlease_broker_config_init(uvmlease_broker_config *cfg);

/*
 * Start a broker on its own thread. Blocks until the endpoint is bound and
 * serving, or until start-up failed. Returns 0 and sets *out, or a
 * uvmlease_status (UVMLEASE_EBUSY: another broker holds the endpoint's lock;
 * its pid is written to *other_pid when other_pid is not NULL;
 * UVMLEASE_EBADENDPOINT: not ipc://; UVMLEASE_ESYSTEM: see errno) and
 * writes a one-line reason into err (if errsz > 0). The config strings are
 * copied.
 */
int uvmlease_broker_start(const uvmlease_broker_config *cfg, uvmlease_broker **out,
                          pid_t *other_pid, char *err, size_t errsz);

/*
 * Stop the broker and free it; returns once its thread has exited, its
 * socket is closed and unlinked and its lock released. Stopping is not
 * releasing: no lease is handed to another client because of it.
 * Sets *b = NULL. Safe on NULL.
 */
void uvmlease_broker_stop(uvmlease_broker **b);

/* The endpoint the broker serves ("ipc://..."); valid until stop. */
const char *uvmlease_broker_endpoint(const uvmlease_broker *b);

/* The broker's instance id (the "bi" of every message). */
uint64_t uvmlease_broker_instance(const uvmlease_broker *b);

#endif
