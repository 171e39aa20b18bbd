/*
 * broker.c — the broker loop: one ROUTER socket, peer credentials from the
 * kernel, one pidfd per client process, and the lease table.
 *
 * Threading: everything below runs on the broker's own thread, except
 * uvmlease_broker_start/stop, which set up and tear down around it.
 */
#include "uvmlease_broker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "admin.h"
#include "events.h"
#include "heartbeat.h"
#include "kills.h"
#include "ops.h"
#include "persist.h"
#include "procs.h"
#include "send.h"
#include "watch.h"
#include "conn.h"
#include "runtime.h"
#include "ul_sys.h"
#include "ul_text.h"

#define S_MAX_BATCH   512 /* messages handled per loop iteration */
#define S_LOG_HOLD_MS 100 /* info lines wait at most this long for a batched write */

void uvmlease_broker_config_init(uvmlease_broker_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->serialize = LT_SERIALIZE_CONFIDENTIAL;
    cfg->hold_warn_ms = 300000;
    cfg->kill_grace_ms = 5000;
    cfg->log_level = UL_LOG_INFO;
}

/* ---- small helpers ---------------------------------------------------- */

static char *s_strdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void s_u64(char *out, size_t n, uint64_t v)
{
    snprintf(out, n, "%llu", (unsigned long long)v);
}

uint64_t ul_broker_wall_of(const uvmlease_broker *b, uint64_t mono_ms)
{
    return b->wall_base_ms + mono_ms;
}

/* Decode a request and hand it to the client or the admin operations. */
static void s_dispatch(uvmlease_broker *b, const ul_peer *peer, const void *data, size_t len)
{
    ul_request req;
    int rc = ul_request_decode(data, len, &req);
    if (rc) {
        char detail[UL_MAX_DETAIL + 1];
        if (rc == UVMLEASE_EVERSION)
            /* PROTOCOL.md section 4: the versions supported, in a form a
             * client of any version can show. */
            snprintf(detail, sizeof detail, "supported: %d", UL_PROTO_VERSION);
        else
            snprintf(detail, sizeof detail, "%s", ul_status_message(rc));
        ul_broker_reply_error(b, peer, &req, rc, detail);
        ul_broker_log_reject(b, peer->pid, rc, "decode");
        return;
    }
    switch (req.op) {
    case UL_OP_HELLO:
    case UL_OP_PING:
    case UL_OP_ACQUIRE:
    case UL_OP_CANCEL:
    case UL_OP_RELEASE:
    case UL_OP_PHASE:
    case UL_OP_WATCH_CHILD:
        ul_ops_handle(b, peer, &req);
        break;
    default:
        ul_admin_handle(b, peer, &req);
        break;
    }
}

/* ---- receiving --------------------------------------------------------- */

/* Receive one whole message. Returns 1 if one was handled, 0 if none was
 * waiting. */
static int s_recv_one(uvmlease_broker *b)
{
    zmq_msg_t idf, body;
    zmq_msg_init(&idf);
    if (zmq_msg_recv(&idf, b->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&idf);
        return 0;
    }
    broute route;
    memset(&route, 0, sizeof route);
    size_t idlen = zmq_msg_size(&idf);
    if (idlen > 0 && idlen <= sizeof route.id) {
        route.len = (uint8_t)idlen;
        memcpy(route.id, zmq_msg_data(&idf), idlen);
    }
    bool more = zmq_msg_more(&idf);
    zmq_msg_close(&idf);
    if (!more)
        return 1; /* a ROUTER always prefixes the identity; nothing to read */

    zmq_msg_init(&body);
    if (zmq_msg_recv(&body, b->router, 0) < 0) {
        zmq_msg_close(&body);
        return 1;
    }
    /* Identity is the connection's pinned process, never the pid read at
     * request time (conn.h). */
    ul_peer peer = {.route = &route};
    const char *why = NULL;
    int refused = ul_conn_identify(b, &body, &peer, &why);
    uint32_t pid = peer.pid;
    int extra = 0;
    if (zmq_msg_more(&body)) {
        /* Drain the remaining frames: one message, one body frame. */
        zmq_msg_t x;
        zmq_msg_init(&x);
        while (zmq_msg_recv(&x, b->router, 0) >= 0) {
            extra++;
            if (!zmq_msg_more(&x))
                break;
        }
        zmq_msg_close(&x);
    }
    if (b->log.min_level <= UL_LOG_DEBUG) {
        char pidbuf[16], lenbuf[16];
        snprintf(pidbuf, sizeof pidbuf, "%u", pid);
        snprintf(lenbuf, sizeof lenbuf, "%zu", zmq_msg_size(&body));
        ul_log(&b->log, UL_LOG_DEBUG, "message", "pid", pidbuf, "bytes", lenbuf, NULL);
    }
    if (refused) {
        /* Refused whatever it asks, before any table operation; decoding
         * only finds the rid, so the client can match the refusal to its
         * request. */
        ul_request req;
        ul_request_decode(zmq_msg_data(&body), zmq_msg_size(&body), &req);
        ul_broker_reply_error(b, &peer, &req, UVMLEASE_EPEER, why);
        ul_broker_log_reject(b, pid, UVMLEASE_EPEER, why);
    } else if (extra) {
        ul_broker_reply_error(b, &peer, NULL, UVMLEASE_EMULTIPART, "send one frame per message");
        ul_broker_log_reject(b, pid, UVMLEASE_EMULTIPART, "frames");
    } else {
        s_dispatch(b, &peer, zmq_msg_data(&body), zmq_msg_size(&body));
    }
    zmq_msg_close(&body);
    return 1;
}

/* ---- the loop ---------------------------------------------------------- */

/* Tags of what the loop waits for (conn.h has its own bits). */
#define S_EV_ROUTER 0x1u
#define S_EV_STOP   0x2u
#define S_EV_PROCS  0x4u

/* Whether the ROUTER has a message waiting. Its descriptor (ZMQ_FD) only
 * says that libzmq has commands for it, and any call on the socket (a send
 * too) may take them: a message whose notice a send took, or one left over
 * from a full batch, shows only here. The loop asks before each wait,
 * which also leaves the descriptor ready to signal the next notice. */
static bool s_router_has_input(uvmlease_broker *b)
{
    int ev = 0;
    size_t sz = sizeof ev;
    return zmq_getsockopt(b->router, ZMQ_EVENTS, &ev, &sz) == 0 && (ev & ZMQ_POLLIN);
}

/* One wait set for everything: the ROUTER's and the connection code's
 * libzmq sockets by their descriptors, and our own descriptors. zmq_poll()
 * would ask each libzmq socket for its commands twice per turn, which
 * costs a message round trip 5-15 % (Performance in the README). */
static int s_watch(uvmlease_broker *b)
{
    int fd = -1;
    size_t sz = sizeof fd;
    b->loopfd = ul_waitset_new();
    if (b->loopfd < 0 || zmq_getsockopt(b->router, ZMQ_FD, &fd, &sz) < 0 ||
        ul_waitset_add(b->loopfd, fd, (void *)(uintptr_t)S_EV_ROUTER) < 0 ||
        ul_waitset_add(b->loopfd, b->stop_efd, (void *)(uintptr_t)S_EV_STOP) < 0 ||
        ul_waitset_add(b->loopfd, b->epfd, (void *)(uintptr_t)S_EV_PROCS) < 0 ||
        ul_conn_watch(b, b->loopfd) < 0)
        return -1;
    return 0;
}

/* Milliseconds until the next timer is due, -1 for none. */
static int s_timeout(uvmlease_broker *b)
{
    uint64_t now = ul_now_ms();
    uint64_t next = lt_tick(b->table, now);
    uint64_t next2 = ul_kills_tick(b, now);
    uint64_t next3 = ul_persist_tick(b, now);
    uint64_t next4 = ul_heartbeat_tick(b, now);
    ul_broker_proc_check_idle(b);
    if (next2 < next)
        next = next2;
    if (next3 < next)
        next = next3;
    if (next4 < next)
        next = next4;
    if (next == LT_NEVER)
        return -1;
    uint64_t t = next > now ? next - now : 0;
    return t > 60000 ? 60000 : (int)t;
}

static void *s_run(void *arg)
{
    uvmlease_broker *b = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    /* Info lines are written in batches, at most S_LOG_HOLD_MS after the
     * event (each keeps its own time): a write(2) per line was paid by
     * the client waiting for its answer on a small host, even when the
     * line was written after the answer left (README, Performance). */
    ul_log_hold();
    /* A libzmq pipe signals its reader only once a read has found it
     * empty: read the monitor and ZAP sockets dry before the first wait,
     * or the first connections' events would wait for a handshake. */
    ul_conn_service(b, UL_CONN_EV_MON | UL_CONN_EV_ZAP);
    for (;;) {
        int timeout = s_timeout(b);
        uint64_t held = ul_log_held_since_ms();
        if (held) {
            uint64_t now = ul_now_ms();
            if (now >= held + S_LOG_HOLD_MS)
                ul_log_flush();
            else if (timeout < 0 || held + S_LOG_HOLD_MS - now < (uint64_t)timeout)
                timeout = (int)(held + S_LOG_HOLD_MS - now);
        }
        bool input = s_router_has_input(b);
        void *ready[8];
        int n = ul_waitset_wait(b->loopfd, ready, 8, input ? 0 : timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            ul_log(&b->log, UL_LOG_ERROR, "wait failed", "err", strerror(errno), NULL);
            break;
        }
        unsigned ev = 0;
        for (int i = 0; i < n; i++)
            ev |= (unsigned)(uintptr_t)ready[i];
        if (ev & S_EV_STOP)
            break;
        /* Connections first: a message is identified by the process pinned
         * when its connection was accepted. */
        ul_conn_service(b, ev & UL_CONN_EV_ALL);
        /* Deaths first: a message that follows a death must not find the
         * dead holder still holding. */
        if (ev & S_EV_PROCS)
            ul_procs_reap(b);
        if (input || (ev & S_EV_ROUTER)) {
            /* Deadlines that passed while we slept are settled before any
             * release is processed, and the table refuses to grant a
             * waiter whose deadline has passed in any case. */
            lt_tick(b->table, ul_now_ms());
            ul_broker_undo_lost(b);
            for (int i = 0; i < S_MAX_BATCH; i++)
                if (!s_recv_one(b))
                    break;
            ul_broker_proc_check_idle(b);
        }
    }
    ul_log_hold_free();
    return NULL;
}

/* ---- start / stop ------------------------------------------------------ */

static void s_free(uvmlease_broker *b)
{
    if (!b)
        return;
    ul_conn_close(b);
    if (b->router)
        zmq_close(b->router);
    if (b->zctx)
        zmq_ctx_term(b->zctx);
    ul_procs_free(b);
    ul_broker_admin_free(b);
    ul_watch_free(b);
    ul_kills_free(b);
    ul_persist_close(b);
    free(b->lost);
    lt_free(&b->table);
    ul_runtime_close(&b->rt);
    if (b->stop_efd >= 0)
        close(b->stop_efd);
    if (b->epfd >= 0)
        close(b->epfd);
    if (b->loopfd >= 0)
        close(b->loopfd);
    ul_buf_free(&b->out);
    free(b->socket_group);
    free(b->admin_group_name);
    free(b);
}

/* A broker with its configuration copied and nothing opened yet. */
static uvmlease_broker *s_new(const uvmlease_broker_config *cfg)
{
    uvmlease_broker *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->stop_efd = -1;
    b->epfd = -1;
    b->loopfd = -1;
    b->rt.lock_fd = -1;
    b->cfg = *cfg;
    b->socket_group = s_strdup_or_null(cfg->socket_group);
    b->admin_group_name = s_strdup_or_null(cfg->admin_group);
    b->cfg.runtime_dir = NULL;
    b->cfg.endpoint = NULL;
    b->cfg.socket_group = b->socket_group;
    b->cfg.admin_group = b->admin_group_name;
    b->max_leases = cfg->max_leases ? cfg->max_leases : UL_MAX_ACTIVE_TOTAL;
    b->log.min_level = cfg->log_level;
    b->log.sink = cfg->log_sink;
    b->log.ctx = cfg->log_ctx;
    b->instance = ul_random64();
    ul_list_init(&b->idle);
    ul_list_init(&b->check);
    b->wall_base_ms = ul_wall_ms() - ul_now_ms();
    return b;
}

static void s_log_journal(uvmlease_broker *b, const ul_journal_load *ld, size_t restored)
{
    if (ld->created && !ld->n)
        return;
    char r[24], d[24], torn[24], bad[24], sup[24];
    s_u64(r, sizeof r, restored);
    s_u64(d, sizeof d, ld->n - restored);
    s_u64(torn, sizeof torn, ld->torn);
    s_u64(bad, sizeof bad, ld->invalid);
    s_u64(sup, sizeof sup, ld->superseded);
    bool warn = ld->torn || ld->invalid || ld->header_lost;
    ul_log(&b->log, warn ? UL_LOG_WARN : UL_LOG_INFO, "journal read", "path",
           ul_journal_path(b->journal), "restored", r, "holder_gone", d, "torn_rolled_back", torn,
           "invalid_dropped", bad, "superseded", sup, "header", ld->header_lost ? "lost" : "ok",
           NULL);
}

/* The journal, the lease table above its high-water marks, and the
 * leases whose holders still run. */
static int s_open_state(uvmlease_broker *b, char *err, size_t errsz)
{
    ul_journal_load ld;
    int rc = ul_persist_open(b, &ld, err, errsz);
    if (rc)
        return rc;
    /* Lease ids and fences only go up, across broker instances too: above
     * the journal's marks, and above the wall clock in microseconds for a
     * journal lost with the host's tmpfs. */
    uint64_t floor = ul_wall_us();
    lt_config tc = {
        .serialize = b->cfg.serialize,
        .max_active = b->cfg.max_active,
        .quarantine_ms = b->cfg.quarantine_ms,
        .hold_warn_ms = b->cfg.hold_warn_ms,
        .fence_floor = floor > ld.fence_hw ? floor : ld.fence_hw,
        .lease_id_floor = floor > ld.lease_hw ? floor : ld.lease_hw,
        /* Peers choose UVM ids: a secret hash key keeps them from
         * crafting collisions. */
        .hash_key = {ul_random64(), ul_random64()},
        .on_event = ul_broker_on_event,
        .persist = ul_persist_grant,
        .ctx = b,
    };
    b->table = lt_new(&tc);
    b->stop_efd = ul_wakeup_new();
    b->epfd = ul_waitset_new();
    b->zctx = zmq_ctx_new();
    if (!b->table || b->stop_efd < 0 || b->epfd < 0 || !b->zctx) {
        snprintf(err, errsz, "cannot allocate broker resources: %s", strerror(errno));
        free(ld.recs);
        return UVMLEASE_ESYSTEM;
    }
    size_t restored = 0;
    rc = ul_persist_restore(b, &ld, &restored, err, errsz);
    if (rc == 0)
        s_log_journal(b, &ld, restored);
    free(ld.recs);
    return rc;
}

static int s_open_socket(uvmlease_broker *b, char *err, size_t errsz)
{
    zmq_ctx_set(b->zctx, ZMQ_IO_THREADS, 1);
    zmq_ctx_set(b->zctx, ZMQ_BLOCKY, 0);
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    int linger = 0, mandatory = 1;
    int64_t maxmsg = UL_MAX_REQUEST;
    int hwm = 1000;
    if (!b->router || zmq_setsockopt(b->router, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory) < 0 ||
        zmq_setsockopt(b->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) < 0 ||
        zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm) < 0 ||
        zmq_setsockopt(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm) < 0) {
        snprintf(err, errsz, "cannot create socket: %s", zmq_strerror(zmq_errno()));
        return UVMLEASE_ESYSTEM;
    }
    int rc = ul_conn_open(b, err, errsz);
    if (rc)
        return rc;
    if (zmq_bind(b->router, b->rt.endpoint) < 0) {
        snprintf(err, errsz, "cannot bind %s: %s", b->rt.endpoint, zmq_strerror(zmq_errno()));
        return UVMLEASE_ESYSTEM;
    }
    return ul_runtime_secure_socket(&b->rt, err, errsz);
}

static int s_start(uvmlease_broker *b, const uvmlease_broker_config *cfg, pid_t *other_pid,
                   char *err, size_t errsz)
{
    if (cfg->admin_group) {
        gid_t g;
        if (ul_resolve_group(cfg->admin_group, &g) < 0) {
            snprintf(err, errsz, "unknown admin group '%s'", cfg->admin_group);
            return UVMLEASE_EINVAL;
        }
        b->admin_gid = g;
        b->have_admin_gid = true;
    }
    int rc = ul_runtime_open(&b->rt, cfg->runtime_dir, cfg->endpoint, cfg->socket_group, other_pid,
                             err, errsz);
    if (!rc)
        rc = s_open_state(b, err, errsz);
    if (!rc)
        rc = s_open_socket(b, err, errsz);
    if (!rc && s_watch(b) < 0) {
        snprintf(err, errsz, "cannot set up the broker's wait set: %s", strerror(errno));
        rc = UVMLEASE_ESYSTEM;
    }
    if (!rc && pthread_create(&b->thread, NULL, s_run, b) != 0) {
        snprintf(err, errsz, "cannot start broker thread");
        rc = UVMLEASE_ESYSTEM;
    }
    return rc;
}

int uvmlease_broker_start(const uvmlease_broker_config *cfg, uvmlease_broker **out,
                          pid_t *other_pid, char *err, size_t errsz)
{
    if (errsz)
        err[0] = '\0';
    if (other_pid)
        *other_pid = 0;
    *out = NULL;
    uvmlease_broker *b = s_new(cfg);
    if (!b) {
        snprintf(err, errsz, "out of memory");
        return UVMLEASE_ENOMEM;
    }
    int rc = s_start(b, cfg, other_pid, err, errsz);
    if (rc) {
        s_free(b);
        return rc;
    }
    char inst[24], pidbuf[16], slots[24];
    snprintf(inst, sizeof inst, "%016llx", (unsigned long long)b->instance);
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)getpid());
    s_u64(slots, sizeof slots, b->max_leases);
    ul_log(&b->log, UL_LOG_INFO, "broker started", "endpoint", b->rt.endpoint, "instance", inst,
           "pid", pidbuf, "serialize",
           cfg->serialize == LT_SERIALIZE_ALL    ? "all"
           : cfg->serialize == LT_SERIALIZE_NONE ? "none"
                                                 : "confidential",
           "max_leases", slots, "journal", ul_journal_path(b->journal), NULL);
    *out = b;
    return 0;
}

void uvmlease_broker_stop(uvmlease_broker **bp)
{
    if (!bp || !*bp)
        return;
    uvmlease_broker *b = *bp;
    ul_wakeup_signal(b->stop_efd);
    pthread_join(b->thread, NULL);
    const lt_stats *st = lt_stats_get(b->table);
    char h[24], w[24];
    s_u64(h, sizeof h, st->holders);
    s_u64(w, sizeof w, st->waiters);
    ul_log(&b->log, UL_LOG_INFO, "broker stopped", "endpoint", b->rt.endpoint, "holders", h,
           "waiters", w, NULL);
    s_free(b);
    *bp = NULL;
}

const char *uvmlease_broker_endpoint(const uvmlease_broker *b)
{
    return b->rt.endpoint;
}

uint64_t uvmlease_broker_instance(const uvmlease_broker *b)
{
    return b->instance;
}
