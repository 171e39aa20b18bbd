/*
 * conn.c — connections and the processes pinned behind them (see conn.h).
 *
 * Three sources, all served on the broker's thread:
 *  - the socket monitor reports ACCEPTED(fd) and DISCONNECTED(fd). On
 *    ACCEPTED the broker reads the peer's credentials from the fd, enforces
 *    the connection limits (shutdown(2) of the fd) and pins the process:
 *    SO_PEERPIDFD where the kernel has it (the exact process that called
 *    connect), else pidfd_open of the SO_PEERCRED pid (whoever holds that
 *    pid now, a few milliseconds after connect).
 *  - the ZAP handler is asked by libzmq once per connection, after the
 *    peer's greeting and before any message is delivered. The request names
 *    the peer only by its SO_PEERCRED triple "localhost:uid:gid:pid", not by
 *    fd, so it is matched to the accepted connections with that triple that
 *    have not been through ZAP yet. When they all share one pinned process,
 *    the connection gets a User-Id naming the pin; when they do not (the pid
 *    was reused while an old connection was still in its handshake) the
 *    connection is refused: the broker cannot tell which process it is.
 *  - the pins' pidfds report exits: a dead pin refuses every later message
 *    of its connections, and its connections still in the handshake are shut
 *    down so that they cannot make a later process's connection ambiguous.
 *
 * Monitor events are emitted before libzmq closes an fd (DISCONNECTED comes
 * first), and the monitor is drained before each ZAP request and each
 * shutdown(2), so a tracked fd is still the connection it was accepted as
 * (a tiny window remains for shutdown: see README "Failure behaviour").
 */
#include "conn.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "procs.h"
#include "send.h"
#include "ul_sys.h"
#include "ul_text.h"

#define S_BUCKETS        1024 /* pin hash buckets (by id and by pid) */
#define S_HANDSHAKE_MS   2000 /* a connection must finish its greeting in this */
#define S_ZAP_FRAMES_MAX 8

enum { S_FREE, S_PENDING, S_ZAPPED, S_REFUSED };

static const char S_WHY_EXITED[] = "the process that opened this connection has exited";

/* A process pinned behind one or more connections. */
typedef struct cpin {
    uint64_t id; /* the User-Id its connections carry */
    uint32_t pid, uid, gid;
    uint64_t start_time;
    int pidfd;       /* -1 once dead, or for a tombstone */
    const char *why; /* set: every message of its connections is refused */
    uint32_t n_conns, n_pending;
    ul_list conns; /* cconn.link */
    char comm[UL_MAX_COMM + 1];
    struct cpin *id_next, *pid_next;
} cpin;

/* One accepted connection, by the fd libzmq accepted it on. */
typedef struct cconn {
    int fd;
    int state;
    uint32_t uid;
    uint64_t seq; /* accept order */
    cpin *pin;    /* NULL when refused */
    ul_list link;
} cconn;

typedef struct uid_count {
    uint32_t uid, n;
} uid_count;

typedef struct ul_conns {
    void *zap, *mon;
    int pin_epfd;
    cconn **by_fd;
    uint32_t fd_cap;
    cpin *by_id[S_BUCKETS], *by_pid[S_BUCKETS];
    uint64_t next_id, next_seq;
    uint32_t n_open;
    uid_count *uids;
    uint32_t n_uids, uid_cap;
    uint32_t max_total, max_per_uid;
    bool told_pidfd_kind;
} ul_conns;

/* ---- pins ---------------------------------------------------------------- */

static cpin *s_pin_by_id(ul_conns *c, uint64_t id)
{
    for (cpin *p = c->by_id[id % S_BUCKETS]; p; p = p->id_next)
        if (p->id == id)
            return p;
    return NULL;
}

static void s_unchain(cpin **pp, cpin *p, size_t off)
{
    while (*pp && *pp != p)
        pp = (cpin **)((char *)*pp + off);
    if (*pp)
        *pp = *(cpin **)((char *)p + off);
}

static void s_pin_free(ul_conns *c, cpin *p)
{
    s_unchain(&c->by_id[p->id % S_BUCKETS], p, offsetof(cpin, id_next));
    s_unchain(&c->by_pid[p->pid % S_BUCKETS], p, offsetof(cpin, pid_next));
    if (p->pidfd >= 0) {
        ul_waitset_del(c->pin_epfd, p->pidfd);
        close(p->pidfd);
    }
    free(p);
}

static cpin *s_pin_new(ul_conns *c, uint32_t pid, uint32_t uid, uint32_t gid)
{
    cpin *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->id = ++c->next_id;
    p->pid = pid;
    p->uid = uid;
    p->gid = gid;
    p->pidfd = -1;
    ul_list_init(&p->conns);
    p->id_next = c->by_id[p->id % S_BUCKETS];
    c->by_id[p->id % S_BUCKETS] = p;
    p->pid_next = c->by_pid[pid % S_BUCKETS];
    c->by_pid[pid % S_BUCKETS] = p;
    return p;
}

/* A pin for a connection whose process cannot be pinned: its messages are
 * refused with why. One per (pid, uid, gid, why), shared. */
static cpin *s_tombstone(ul_conns *c, uint32_t pid, uint32_t uid, uint32_t gid, const char *why)
{
    for (cpin *p = c->by_pid[pid % S_BUCKETS]; p; p = p->pid_next)
        if (p->pid == pid && p->uid == uid && p->gid == gid && p->pidfd < 0 && p->why == why)
            return p;
    cpin *p = s_pin_new(c, pid, uid, gid);
    if (p)
        p->why = why;
    return p;
}

/* pidfd, start time and uid of the process behind a connection, or NULL
 * with *why. The reads of /proc come after the pidfd and are trusted only if
 * the pidfd still reports a running process afterwards: a process that has
 * exited may already have given its pid to another. */
static int s_pin_process(int fd, uint32_t pid, uint32_t uid, uint64_t *start, const char **why,
                         bool *exact, bool by_pid)
{
    int pidfd = by_pid ? -1 : ul_sock_peer_pidfd(fd);
    *exact = pidfd >= 0;
    if (pidfd < 0)
        pidfd = ul_pidfd_open((pid_t)pid);
    if (pidfd < 0) {
        *why = S_WHY_EXITED;
        return -1;
    }
    uint32_t euid = UINT32_MAX;
    *start = ul_proc_start_time((pid_t)pid);
    if (*start == 0 || ul_proc_euid((pid_t)pid, &euid) < 0 || !ul_pidfd_alive(pidfd)) {
        close(pidfd);
        *why = S_WHY_EXITED;
        return -1;
    }
    if (euid != uid) {
        /* Not the credentials it connected with: another process holds the
         * pid now (or it changed uid; either way, not the connection's). */
        close(pidfd);
        *why = *exact ? "the connection's process changed its uid"
                      : "the connection's pid belongs to another process";
        return -1;
    }
    return pidfd;
}

static cpin *s_pin_for(uvmlease_broker *b, int fd, uint32_t pid, uint32_t uid, uint32_t gid)
{
    ul_conns *c = b->conns;
    if (pid == 0)
        return s_tombstone(c, pid, uid, gid, "peer pid is 0: another pid namespace");
    const char *why = NULL;
    uint64_t start = 0;
    bool exact = false;
    int pidfd = s_pin_process(fd, pid, uid, &start, &why, &exact, b->cfg.pin_by_pid);
    if (!c->told_pidfd_kind && why != S_WHY_EXITED) {
        c->told_pidfd_kind = true;
        ul_log(&b->log, UL_LOG_INFO, "connection identity", "pinned_by",
               exact ? "SO_PEERPIDFD" : "pidfd_open of the SO_PEERCRED pid", NULL);
    }
    if (pidfd < 0)
        return s_tombstone(c, pid, uid, gid, why);
    for (cpin *p = c->by_pid[pid % S_BUCKETS]; p; p = p->pid_next) {
        if (p->pid == pid && p->pidfd >= 0 && p->start_time == start && p->uid == uid &&
            p->gid == gid) {
            close(pidfd); /* already pinned: the same process */
            return p;
        }
    }
    cpin *p = s_pin_new(c, pid, uid, gid);
    if (!p || ul_waitset_add(c->pin_epfd, pidfd, p) < 0) {
        if (p)
            s_pin_free(c, p);
        close(pidfd);
        return NULL;
    }
    p->pidfd = pidfd;
    p->start_time = start;
    ul_proc_comm((pid_t)pid, p->comm, sizeof p->comm);
    ul_text_sanitize(p->comm, UL_MAX_COMM);
    return p;
}

/* ---- per-uid counts -------------------------------------------------------- */

static uid_count *s_uid(ul_conns *c, uint32_t uid, bool create)
{
    for (uint32_t i = 0; i < c->n_uids; i++)
        if (c->uids[i].uid == uid)
            return &c->uids[i];
    if (!create)
        return NULL;
    if (c->n_uids == c->uid_cap) {
        uint32_t ncap = c->uid_cap ? c->uid_cap * 2 : 16;
        uid_count *n = realloc(c->uids, ncap * sizeof *n);
        if (!n)
            return NULL;
        c->uids = n;
        c->uid_cap = ncap;
    }
    c->uids[c->n_uids] = (uid_count){.uid = uid, .n = 0};
    return &c->uids[c->n_uids++];
}

static void s_uid_put(ul_conns *c, uint32_t uid)
{
    uid_count *u = s_uid(c, uid, false);
    if (u && u->n > 0 && --u->n == 0)
        *u = c->uids[--c->n_uids]; /* order does not matter */
}

/* ---- connection records ---------------------------------------------------- */

static void s_conn_forget(ul_conns *c, int fd)
{
    if (fd < 0 || (uint32_t)fd >= c->fd_cap || !c->by_fd[fd])
        return;
    cconn *k = c->by_fd[fd];
    c->by_fd[fd] = NULL;
    c->n_open--;
    s_uid_put(c, k->uid);
    if (k->pin) {
        ul_list_remove(&k->link);
        if (k->state == S_PENDING)
            k->pin->n_pending--;
        if (--k->pin->n_conns == 0)
            s_pin_free(c, k->pin);
    }
    free(k);
}

static int s_fd_room(ul_conns *c, int fd)
{
    if ((uint32_t)fd < c->fd_cap)
        return 0;
    uint32_t ncap = c->fd_cap ? c->fd_cap : 256;
    while (ncap <= (uint32_t)fd)
        ncap *= 2;
    cconn **n = realloc(c->by_fd, ncap * sizeof *n);
    if (!n)
        return -1;
    memset(n + c->fd_cap, 0, (ncap - c->fd_cap) * sizeof *n);
    c->by_fd = n;
    c->fd_cap = ncap;
    return 0;
}

/* A connection libzmq accepted: check the limits, pin its process. */
static void s_accepted(uvmlease_broker *b, int fd)
{
    ul_conns *c = b->conns;
    if (fd < 0)
        return;
    s_conn_forget(c, fd); /* a record left by a lost event: the fd is new */
    uint32_t pid = 0, uid = UINT32_MAX, gid = UINT32_MAX;
    cconn *k = calloc(1, sizeof *k);
    uid_count *u = NULL;
    bool cred = ul_sock_peercred(fd, &pid, &uid, &gid) == 0;
    if (!k || s_fd_room(c, fd) < 0 || !(u = s_uid(c, uid, true))) {
        free(k);
        shutdown(fd, SHUT_RDWR); /* cannot track it: do not serve it */
        return;
    }
    k->fd = fd;
    k->uid = uid;
    k->seq = ++c->next_seq;
    ul_list_init(&k->link);
    c->by_fd[fd] = k;
    c->n_open++;
    u->n++;
    if (c->n_open > c->max_total || u->n > c->max_per_uid) {
        /* Refused before its handshake: libzmq sees the end of the stream
         * and closes the fd; a ZeroMQ client reconnects later. */
        k->state = S_REFUSED;
        shutdown(fd, SHUT_RDWR);
        ul_broker_log_reject(b, pid, UVMLEASE_ERESOURCE,
                             c->n_open > c->max_total ? "connections in total"
                                                      : "connections of one uid");
        return;
    }
    k->pin = cred ? s_pin_for(b, fd, pid, uid, gid)
                  : s_tombstone(c, 0, UINT32_MAX, UINT32_MAX, "no peer credentials");
    if (!k->pin) {
        k->state = S_REFUSED;
        shutdown(fd, SHUT_RDWR);
        return;
    }
    k->state = S_PENDING;
    k->pin->n_conns++;
    k->pin->n_pending++;
    ul_list_insert_tail(&k->pin->conns, &k->link);
}

/* Read every monitor event waiting. */
static void s_drain_monitor(uvmlease_broker *b)
{
    ul_conns *c = b->conns;
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t type = 0;
        int32_t value = -1;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&type, zmq_msg_data(&ev), 2);
            memcpy(&value, (char *)zmq_msg_data(&ev) + 2, 4);
        }
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            zmq_msg_recv(&addr, c->mon, 0);
            zmq_msg_close(&addr);
        }
        if (type == ZMQ_EVENT_ACCEPTED)
            s_accepted(b, value);
        else if (type == ZMQ_EVENT_DISCONNECTED)
            s_conn_forget(c, value);
        else if (type == ZMQ_EVENT_ACCEPT_FAILED)
            ul_broker_log_reject(b, 0, UVMLEASE_ERESOURCE, strerror(value));
    }
}

/* The pinned process exited: refuse its connections from now on, and shut
 * down those still in their handshake (they could only ever be refused, and
 * while pending they would make a later process with the same pid
 * ambiguous). */
static void s_pin_died(ul_conns *c, cpin *p)
{
    if (p->pidfd >= 0) {
        ul_waitset_del(c->pin_epfd, p->pidfd);
        close(p->pidfd);
        p->pidfd = -1;
    }
    if (!p->why)
        p->why = S_WHY_EXITED;
    for (ul_list *pos = p->conns.next; pos != &p->conns; pos = pos->next) {
        cconn *k = ul_container_of(pos, cconn, link);
        if (k->state == S_PENDING)
            shutdown(k->fd, SHUT_RDWR);
    }
}

static void s_handle_pin_exits(uvmlease_broker *b)
{
    void *ready[64];
    int n = ul_waitset_ready(b->conns->pin_epfd, ready, 64);
    for (int i = 0; i < n; i++)
        s_pin_died(b->conns, ready[i]);
}

/* ---- ZAP ------------------------------------------------------------------- */

/* Parse "localhost:<uid>:<gid>:<pid>" (digits only in the last three). */
static bool s_parse_triple(const char *s, uint32_t *uid, uint32_t *gid, uint32_t *pid)
{
    const char *p = strchr(s, ':');
    unsigned long long v[3];
    for (int i = 0; i < 3; i++) {
        if (!p || p[1] < '0' || p[1] > '9')
            return false;
        char *end;
        errno = 0;
        v[i] = strtoull(p + 1, &end, 10);
        if (errno || v[i] > UINT32_MAX || (i < 2 ? *end != ':' : *end != '\0'))
            return false;
        p = end;
    }
    *uid = (uint32_t)v[0];
    *gid = (uint32_t)v[1];
    *pid = (uint32_t)v[2];
    return true;
}

/* The pin for a connection presenting (uid, gid, pid) at ZAP: the one pin
 * with that triple that has connections not yet through ZAP. NULL when none
 * or more than one (then the dead ones' pending connections are shut down,
 * so that the next attempt is not ambiguous). */
static cpin *s_zap_match(ul_conns *c, uint32_t uid, uint32_t gid, uint32_t pid)
{
    cpin *found = NULL;
    int n = 0;
    for (cpin *p = c->by_pid[pid % S_BUCKETS]; p; p = p->pid_next) {
        if (p->pid == pid && p->uid == uid && p->gid == gid && p->n_pending > 0) {
            found = p;
            n++;
        }
    }
    if (n <= 1)
        return found;
    for (cpin *p = c->by_pid[pid % S_BUCKETS]; p; p = p->pid_next)
        if (p->pid == pid && p->n_pending > 0 && p->pidfd >= 0 && !ul_pidfd_alive(p->pidfd))
            s_pin_died(c, p);
    for (cpin *p = c->by_pid[pid % S_BUCKETS]; p; p = p->pid_next)
        if (p->pid == pid && p->n_pending > 0 && p->pidfd < 0)
            s_pin_died(c, p); /* tombstones: shut their pending ones down too */
    return NULL;
}

/* Mark one pending connection of p as through ZAP: the oldest. Which of p's
 * pending connections it really was does not matter, they share the pin. */
static void s_zap_consume(cpin *p)
{
    cconn *oldest = NULL;
    for (ul_list *pos = p->conns.next; pos != &p->conns; pos = pos->next) {
        cconn *k = ul_container_of(pos, cconn, link);
        if (k->state == S_PENDING && (!oldest || k->seq < oldest->seq))
            oldest = k;
    }
    if (oldest) {
        oldest->state = S_ZAPPED;
        p->n_pending--;
    }
}

static void s_zap_reply(void *zap, const char *reqid, size_t reqid_len, const char *status,
                        const char *text, const char *user)
{
    zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(zap, reqid, reqid_len, ZMQ_SNDMORE);
    zmq_send(zap, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(zap, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(zap, "", 0, 0);
}

/* One ZAP request: frames version, request id, domain, address, identity,
 * mechanism[, credentials]. Returns false when none was waiting. */
static bool s_zap_one(uvmlease_broker *b)
{
    ul_conns *c = b->conns;
    char fr[S_ZAP_FRAMES_MAX][64];
    size_t len[S_ZAP_FRAMES_MAX] = {0};
    int n = 0;
    for (bool more = true; more; n++) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->zap, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (n == 0)
                return false;
            break;
        }
        if (n < S_ZAP_FRAMES_MAX) {
            len[n] = zmq_msg_size(&m) < sizeof fr[n] ? zmq_msg_size(&m) : sizeof fr[n] - 1;
            memcpy(fr[n], zmq_msg_data(&m), len[n]);
            fr[n][len[n]] = '\0';
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    /* The ACCEPTED event of this connection was emitted before this request
     * (the same I/O thread, earlier): read it first. */
    s_drain_monitor(b);
    uint32_t uid = 0, gid = 0, pid = 0;
    cpin *p = NULL;
    if (n >= 6 && s_parse_triple(fr[3], &uid, &gid, &pid))
        p = s_zap_match(c, uid, gid, pid);
    if (!p) {
        ul_broker_log_reject(b, n >= 6 ? pid : 0, UVMLEASE_EPEER,
                             "handshake: no single process behind the connection");
        s_zap_reply(c->zap, fr[1], len[1], "400", "cannot tell which process connected", "");
        return true;
    }
    s_zap_consume(p);
    char user[24];
    snprintf(user, sizeof user, "%" PRIu64, p->id);
    s_zap_reply(c->zap, fr[1], len[1], "200", "OK", user);
    return true;
}

/* ---- set-up and the loop ------------------------------------------------- */

/* Connection limits from the descriptor limit: each connection may cost a
 * socket, a pin's pidfd and a tracked process's pidfd; keep a reserve for
 * the journal, /proc reads and libzmq. One uid gets a quarter. */
static void s_limits(ul_conns *c)
{
    struct rlimit rl;
    long used = ul_fd_count();
    uint64_t soft = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
    if (soft > (1u << 24))
        soft = 1u << 24;
    uint64_t reserve = soft / 16 < 16 ? 16 : soft / 16 > 1024 ? 1024 : soft / 16;
    uint64_t fixed = (uint64_t)(used > 0 ? used : 32) + 4 + reserve;
    uint64_t total = soft > fixed ? (soft - fixed) / 3 : 0;
    c->max_total = total < 2 ? 2 : (uint32_t)total;
    c->max_per_uid = c->max_total / 4 < 1 ? 1 : c->max_total / 4;
}

int ul_conn_open(uvmlease_broker *b, char *err, size_t errsz)
{
    ul_conns *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errsz, "out of memory");
        return UVMLEASE_ENOMEM;
    }
    b->conns = c;
    c->pin_epfd = ul_waitset_new();
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://uvmlease-monitor-%p", (void *)b);
    /* ZMQ_ZAP_DOMAIN makes the NULL mechanism ask the ZAP handler. The
     * monitor pipe is unbounded (RCVHWM 0): a lost ACCEPTED or DISCONNECTED
     * would leave a connection untracked. */
    int zero = 0, hs = S_HANDSHAKE_MS;
    c->zap = zmq_socket(b->zctx, ZMQ_REP);
    c->mon = zmq_socket(b->zctx, ZMQ_PAIR);
    if (c->pin_epfd < 0 || !c->zap || !c->mon ||
        zmq_setsockopt(c->zap, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_bind(c->zap, "inproc://zeromq.zap.01") < 0 ||
        zmq_setsockopt(b->router, ZMQ_ZAP_DOMAIN, "uvmlease", 8) < 0 ||
        zmq_setsockopt(b->router, ZMQ_HANDSHAKE_IVL, &hs, sizeof hs) < 0 ||
        zmq_socket_monitor(b->router, ep,
                           ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_ACCEPT_FAILED) <
            0 ||
        zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero) < 0 ||
        zmq_setsockopt(c->mon, ZMQ_RCVHWM, &zero, sizeof zero) < 0 || zmq_connect(c->mon, ep) < 0) {
        snprintf(err, errsz, "cannot set up connection tracking: %s",
                 c->pin_epfd < 0 ? strerror(errno) : zmq_strerror(zmq_errno()));
        return UVMLEASE_ESYSTEM;
    }
    s_limits(c);
    char tot[16], per[16];
    snprintf(tot, sizeof tot, "%u", c->max_total);
    snprintf(per, sizeof per, "%u", c->max_per_uid);
    ul_log(&b->log, UL_LOG_INFO, "connection limits", "total", tot, "per_uid", per, NULL);
    return 0;
}

void ul_conn_close(uvmlease_broker *b)
{
    ul_conns *c = b->conns;
    if (!c)
        return;
    if (b->router)
        zmq_socket_monitor(b->router, NULL, 0);
    if (c->zap)
        zmq_close(c->zap);
    if (c->mon)
        zmq_close(c->mon);
    for (uint32_t fd = 0; fd < c->fd_cap; fd++)
        s_conn_forget(c, (int)fd);
    for (uint32_t i = 0; i < S_BUCKETS; i++)
        while (c->by_id[i])
            s_pin_free(c, c->by_id[i]);
    if (c->pin_epfd >= 0)
        close(c->pin_epfd);
    free(c->by_fd);
    free(c->uids);
    free(c);
    b->conns = NULL;
}

static int s_watch_socket(int ws, void *sock, unsigned tag)
{
    int fd = -1;
    size_t sz = sizeof fd;
    if (zmq_getsockopt(sock, ZMQ_FD, &fd, &sz) < 0)
        return -1;
    return ul_waitset_add(ws, fd, (void *)(uintptr_t)tag);
}

int ul_conn_watch(uvmlease_broker *b, int ws)
{
    ul_conns *c = b->conns;
    if (s_watch_socket(ws, c->mon, UL_CONN_EV_MON) < 0 ||
        s_watch_socket(ws, c->zap, UL_CONN_EV_ZAP) < 0 ||
        ul_waitset_add(ws, c->pin_epfd, (void *)(uintptr_t)UL_CONN_EV_PIN) < 0)
        return -1;
    return 0;
}

/* Both socket handlers end on a receive that found nothing: libzmq has
 * then taken every command waiting for that socket, so its descriptor
 * signals again when the next one arrives. */
void ul_conn_service(uvmlease_broker *b, unsigned ready)
{
    if (ready & UL_CONN_EV_MON)
        s_drain_monitor(b);
    if (ready & UL_CONN_EV_PIN)
        s_handle_pin_exits(b);
    if (ready & UL_CONN_EV_ZAP)
        while (s_zap_one(b)) {
        }
}

/* ---- identity of a message ------------------------------------------------ */

int ul_conn_identify(uvmlease_broker *b, zmq_msg_t *msg, ul_peer *peer, const char **why)
{
    const char *user = zmq_msg_gets(msg, "User-Id");
    char *end = NULL;
    uint64_t id = user && *user ? strtoull(user, &end, 10) : 0;
    cpin *p = id && end && !*end ? s_pin_by_id(b->conns, id) : NULL;
    if (!p) {
        /* Not through our ZAP handler, or the connection is gone already. */
        *why = "no pinned process for this connection";
        return UVMLEASE_EPEER;
    }
    peer->uid = p->uid;
    peer->gid = p->gid;
    peer->pid = p->pid;
    peer->start_time = p->start_time;
    peer->pin = p;
    if (!p->why && !ul_pidfd_alive(p->pidfd))
        s_pin_died(b->conns, p); /* its exit is not polled yet */
    if (p->why) {
        *why = p->why;
        return UVMLEASE_EPEER;
    }
    return 0;
}

bproc *ul_conn_peer_proc(uvmlease_broker *b, const ul_peer *peer, int *err)
{
    /* ul_conn_identify saw the pin alive for this very message. */
    const cpin *pin = peer->pin;
    bproc *p = pin && !pin->why
                   ? ul_broker_proc_get_pinned(b, peer->pid, peer->uid, pin->start_time, err)
                   : ul_broker_proc_get(b, peer->pid, peer->uid, err);
    if (!p)
        return NULL;
    if (!pin || pin->why || p->start_time != pin->start_time) {
        ul_broker_proc_maybe_forget(b, p);
        *err = UVMLEASE_EPEER;
        return NULL;
    }
    return p;
}

bool ul_conn_peer_in_group(const ul_peer *peer, uint32_t gid)
{
    const cpin *pin = peer->pin;
    if (!pin || pin->why)
        return false;
    bool in = ul_proc_in_group((pid_t)pin->pid, (gid_t)gid);
    /* Still the pinned process after the read: the groups were its own. */
    return in && ul_pidfd_alive(pin->pidfd);
}

const char *ul_conn_peer_comm(const ul_peer *peer)
{
    return peer->pin ? peer->pin->comm : "?";
}
