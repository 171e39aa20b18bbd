/*
 * uvmlease.c — the public API of libuvmlease: connecting, leases, cancel
 * tokens and status strings. The I/O machinery and the connection's life
 * are in conn.c; this file owns the lease handles and the cancel tokens,
 * and alone changes them.
 */
#include "uvmlease.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ul_client.h"
#include "ul_sys.h"

_Static_assert(UVMLEASE_UVM_MAX == UL_MAX_UVM, "UVM size");
_Static_assert(UVMLEASE_LABEL_MAX == UL_MAX_LABEL, "label size");
_Static_assert(UVMLEASE_PHASE_MAX == UL_MAX_PHASE, "phase size");
_Static_assert(UVMLEASE_COMM_MAX == UL_MAX_COMM, "comm size");
_Static_assert(UVMLEASE_VERSION_MAX == UL_MAX_CLIENT, "version size");
_Static_assert(UVMLEASE_FOREVER == UL_TIMEOUT_FOREVER, "forever");

#define IPC_PREFIX "ipc://"

struct uvmlease_lease {
    ul_list link; /* in uvmlease.leases until released or the connection closes */
    uvmlease *conn;
    uint64_t id;
    uint64_t fence;
    bool linked;
    bool revoked;
    char uvm[UL_MAX_UVM + 1];
};

struct uvmlease_cancel_token {
    pthread_mutex_t mu; /* lock order: token, then connection */
    bool cancelled;
    ul_list waiters; /* ul_waitctx.tok_link */
};

/* -------------------------------------------------------------- endpoint */

static int s_endpoint_check(const char *ep)
{
    size_t plen = strlen(IPC_PREFIX);
    if (strncmp(ep, IPC_PREFIX, plen) != 0 || ep[plen] == '\0')
        return UVMLEASE_EBADENDPOINT;
    struct sockaddr_un sun;
    if (strlen(ep + plen) >= sizeof sun.sun_path)
        return UVMLEASE_EBADENDPOINT;
    return 0;
}

int ul_client_resolve_endpoint(const char *arg, char *out, size_t outsz)
{
    const char *env = getenv("UVMLEASE_ENDPOINT");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    const char *sys = &UVMLEASE_SYSTEM_ENDPOINT[sizeof IPC_PREFIX - 1];
    int n;
    if (arg)
        n = snprintf(out, outsz, "%s", arg);
    else if (env && *env)
        n = snprintf(out, outsz, "%s", env);
    else if (access(sys, F_OK) == 0 || !xdg || !*xdg)
        n = snprintf(out, outsz, "%s", UVMLEASE_SYSTEM_ENDPOINT);
    else
        n = snprintf(out, outsz, IPC_PREFIX "%s/uvmlease/broker.sock", xdg);
    if (n < 0 || (size_t)n >= outsz)
        return UVMLEASE_EBADENDPOINT;
    return s_endpoint_check(out);
}

/*
 * Fail fast when nobody listens: libzmq connects in the background and
 * would retry silently, so ask the kernel directly first. Abstract socket
 * names ("@...") are left to the hello round trip.
 */
static int s_probe(const char *ep)
{
    const char *path = ep + strlen(IPC_PREFIX);
    if (path[0] == '@')
        return 0;
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return UVMLEASE_ENOBROKER;
        return UVMLEASE_ESYSTEM;
    }
    if (!S_ISSOCK(st.st_mode))
        return UVMLEASE_ENOBROKER;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return UVMLEASE_ESYSTEM;
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path)); /* length checked by s_endpoint_check */
    int rc = 0;
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        int e = errno;
        if (e == ECONNREFUSED || e == ENOENT)
            rc = UVMLEASE_ENOBROKER;
        else if (e != EAGAIN && e != EINPROGRESS)
            rc = UVMLEASE_ESYSTEM; /* EACCES and the like: errno says why */
        close(fd);
        errno = e;
        return rc;
    }
    close(fd);
    return 0;
}

/* ------------------------------------------------------------ connection */

/* conn.c's on_revoked: the broker took a lease away. Its handle says so
 * from now on. */
static void s_on_revoked_locked(uvmlease *c, uint64_t lease)
{
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &c->leases)
    {
        uvmlease_lease *l = ul_container_of(pos, uvmlease_lease, link);
        if (l->id == lease)
            l->revoked = true;
    }
}

/* Close: the user's lease handles stay valid (their calls fail with
 * ECLOSED), and the broker is told to release what is still held. */
static void s_leases_drop_locked(uvmlease *c)
{
    while (!ul_list_empty(&c->leases)) {
        uvmlease_lease *l = ul_container_of(c->leases.next, uvmlease_lease, link);
        ul_list_remove(&l->link);
        l->linked = false;
        if (!l->revoked)
            ul_client_release_bg_locked(c, l->id);
    }
}

int uvmlease_connect(const char *endpoint, uvmlease **out)
{
    if (!out)
        return UVMLEASE_EINVAL;
    *out = NULL;
    char ep[sizeof((uvmlease *)0)->endpoint];
    int rc = ul_client_resolve_endpoint(endpoint, ep, sizeof ep);
    if (!rc)
        rc = s_probe(ep);
    if (rc)
        return rc;

    uvmlease *c;
    rc = ul_client_new(ep, s_on_revoked_locked, &c);
    if (rc)
        return rc;
    ul_list_init(&c->leases); /* before the I/O thread can report a revocation */
    rc = ul_client_io_start(c);
    if (!rc) {
        ul_request q;
        memset(&q, 0, sizeof q);
        q.op = UL_OP_HELLO;
        snprintf(q.client, sizeof q.client, "libuvmlease/%s", UL_VERSION);
        ul_reply *rep;
        rc = ul_client_call(c, &q, UVMLEASE_CONNECT_TIMEOUT_MS, NULL, &rep);
        if (!rc) {
            rc = (int)rep->err;
            c->broker_pid = rep->broker_pid;
            snprintf(c->server, sizeof c->server, "%s", rep->server);
        }
        ul_client_reply_free(rep);
    }
    if (rc) {
        int saved = errno;
        ul_client_shutdown(c);
        ul_client_unref(c);
        errno = saved;
        return rc;
    }
    *out = c;
    return 0;
}

void uvmlease_close(uvmlease *c)
{
    /* In a forked child the mutex may have been copied locked and the
     * thread does not exist: leave the inherited copy alone. */
    if (!ul_client_usable(c))
        return;
    pthread_mutex_lock(&c->mu);
    ul_client_begin_close_locked(c);
    s_leases_drop_locked(c);
    pthread_mutex_unlock(&c->mu);
    ul_client_shutdown(c);
    ul_client_unref(c);
}

/* --------------------------------------------------------------- acquire */

static void s_holder_fill(uvmlease_holder *h, const ul_holder *src)
{
    h->pid = (pid_t)src->pid;
    snprintf(h->comm, sizeof h->comm, "%s", src->comm);
    snprintf(h->label, sizeof h->label, "%s", src->label);
    snprintf(h->phase, sizeof h->phase, "%s", src->phase);
    h->held_ms = src->held_ms;
    h->phase_ms = src->phase_ms;
}

/* Register w with the token so uvmlease_cancel() can reach it. */
static int s_token_attach(uvmlease_cancel_token *t, ul_waitctx *w)
{
    if (!t)
        return 0;
    pthread_mutex_lock(&t->mu);
    bool cancelled = t->cancelled;
    if (!cancelled)
        ul_list_insert_tail(&t->waiters, &w->tok_link);
    pthread_mutex_unlock(&t->mu);
    return cancelled ? UVMLEASE_ECANCELLED : 0;
}

static void s_token_detach(uvmlease_cancel_token *t, ul_waitctx *w)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    ul_list_remove(&w->tok_link);
    pthread_mutex_unlock(&t->mu);
}

static int s_lease_new(uvmlease *c, const ul_reply *rep, uvmlease_lease **out)
{
    uvmlease_lease *l = calloc(1, sizeof *l);
    pthread_mutex_lock(&c->mu);
    int rc = l ? ul_client_hold_locked(c) : UVMLEASE_ENOMEM;
    if (rc) {
        /* Nobody will ever release it: do it now. */
        ul_client_release_bg_locked(c, rep->lease);
    } else {
        l->conn = c;
        l->id = rep->lease;
        l->fence = rep->fence;
        snprintf(l->uvm, sizeof l->uvm, "%s", rep->uvm);
        ul_list_insert_tail(&c->leases, &l->link);
        l->linked = true;
    }
    pthread_mutex_unlock(&c->mu);
    if (rc) {
        free(l);
        return rc;
    }
    *out = l;
    return 0;
}

int uvmlease_acquire(uvmlease *c, const char *uvm_id, unsigned flags, const char *label,
                     int64_t timeout_ms, uvmlease_cancel_token *cancel, uvmlease_holder *holder,
                     uvmlease_lease **lease_out)
{
    if (holder)
        memset(holder, 0, sizeof *holder);
    if (lease_out)
        *lease_out = NULL;
    if (!c || !uvm_id || !lease_out || (flags & ~UVMLEASE_CONFIDENTIAL) || timeout_ms < -1)
        return UVMLEASE_EINVAL;
    if (!label)
        label = "";

    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_ACQUIRE;
    if (strlen(uvm_id) > UL_MAX_UVM)
        return UVMLEASE_EBADUVM;
    if (strlen(label) > UL_MAX_LABEL)
        return UVMLEASE_EBADTEXT;
    snprintf(q.uvm, sizeof q.uvm, "%s", uvm_id);
    snprintf(q.label, sizeof q.label, "%s", label);
    q.confidential = (flags & UVMLEASE_CONFIDENTIAL) != 0;
    q.timeout_ms = timeout_ms;

    int rc = ul_client_enter(c);
    if (rc)
        return rc;
    ul_waitctx w;
    rc = ul_waitctx_init(&w, c);
    if (rc) {
        ul_client_leave(c);
        return rc;
    }
    /* The broker's deadline decides; ours only covers a broker that went
     * silent. */
    int64_t wait_ms = -1;
    if (timeout_ms >= 0)
        wait_ms =
            timeout_ms > INT64_MAX / 4 ? INT64_MAX / 4 : timeout_ms + UVMLEASE_ACQUIRE_GRACE_MS;
    ul_reply *rep = NULL;
    rc = s_token_attach(cancel, &w);
    if (!rc) {
        rc = ul_client_call(c, &q, wait_ms, &w, &rep);
        s_token_detach(cancel, &w);
    }
    ul_waitctx_destroy(&w);

    if (!rc) {
        rc = (int)rep->err;
        if (rc && holder && rep->has_holder)
            s_holder_fill(holder, &rep->holder);
        if (!rc && rep->lease == 0)
            rc = UVMLEASE_EINTERNAL; /* the codec requires it; stay safe anyway */
        if (!rc)
            rc = s_lease_new(c, rep, lease_out);
    }
    ul_client_reply_free(rep);
    ul_client_leave(c);
    return rc;
}

/* ---------------------------------------------------------------- leases */

uint64_t uvmlease_lease_fence(const uvmlease_lease *lease)
{
    return lease ? lease->fence : 0;
}

uint64_t uvmlease_lease_id(const uvmlease_lease *lease)
{
    return lease ? lease->id : 0;
}

/* A call about a lease: checks it is still ours, maps the answer. */
static int s_lease_call(uvmlease_lease *l, ul_request *q)
{
    uvmlease *c = l->conn;
    if (!ul_client_usable(c))
        return UVMLEASE_ECLOSED;
    pthread_mutex_lock(&c->mu);
    int rc = !l->linked ? UVMLEASE_ECLOSED : l->revoked ? UVMLEASE_EREVOKED : 0;
    pthread_mutex_unlock(&c->mu);
    if (rc)
        return rc;
    rc = ul_client_enter(c);
    if (rc)
        return rc;
    q->lease = l->id;
    ul_reply *rep = NULL;
    rc = ul_client_call(c, q, UVMLEASE_CALL_TIMEOUT_MS, NULL, &rep);
    if (!rc)
        rc = (int)rep->err;
    ul_client_reply_free(rep);
    if (rc == UVMLEASE_EREVOKED) {
        pthread_mutex_lock(&c->mu);
        l->revoked = true;
        pthread_mutex_unlock(&c->mu);
    }
    ul_client_leave(c);
    return rc;
}

int uvmlease_phase(uvmlease_lease *lease, const char *phase)
{
    if (!lease || !phase)
        return UVMLEASE_EINVAL;
    if (strlen(phase) > UL_MAX_PHASE)
        return UVMLEASE_EBADTEXT;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_PHASE;
    snprintf(q.phase, sizeof q.phase, "%s", phase);
    return s_lease_call(lease, &q);
}

int uvmlease_watch_child(uvmlease_lease *lease, pid_t child)
{
    if (!lease || child <= 0)
        return UVMLEASE_EINVAL;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_WATCH_CHILD;
    q.pid = (uint32_t)child;
    return s_lease_call(lease, &q);
}

int uvmlease_release(uvmlease_lease *lease)
{
    if (!lease)
        return UVMLEASE_EINVAL;
    uvmlease *c = lease->conn;
    if (!ul_client_usable(c))
        return UVMLEASE_ECLOSED;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_RELEASE;
    int rc = s_lease_call(lease, &q);
    pthread_mutex_lock(&c->mu);
    if (lease->linked)
        ul_list_remove(&lease->link);
    pthread_mutex_unlock(&c->mu);
    free(lease);
    ul_client_unref(c);
    return rc;
}

int uvmlease_release_nowait(uvmlease_lease *lease)
{
    if (!lease)
        return UVMLEASE_EINVAL;
    uvmlease *c = lease->conn;
    if (!ul_client_usable(c))
        return UVMLEASE_ECLOSED;
    ul_req *r;
    if (ul_client_nowait_new(lease->id, &r) != 0)
        return uvmlease_release(lease); /* it has the same outcome, slower */
    /* Unlinking and queueing under one lock: close() either released the
     * lease already (not linked) or will find the release queued. */
    pthread_mutex_lock(&c->mu);
    int rc = !lease->linked ? UVMLEASE_ECLOSED : lease->revoked ? UVMLEASE_EREVOKED : 0;
    if (lease->linked)
        ul_list_remove(&lease->link);
    if (!rc) {
        ul_client_nowait_send_locked(c, r);
        r = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    ul_client_nowait_free(r);
    free(lease);
    ul_client_unref(c);
    return rc;
}

int uvmlease_on_release_error(uvmlease *c, uvmlease_release_error_fn fn, void *ctx)
{
    if (!c)
        return UVMLEASE_EINVAL;
    int rc = ul_client_enter(c);
    if (rc)
        return rc;
    ul_client_on_release_error(c, fn, ctx);
    ul_client_leave(c);
    return 0;
}

int uvmlease_ping(uvmlease *c, uvmlease_ping_info *info)
{
    if (info)
        memset(info, 0, sizeof *info);
    if (!c)
        return UVMLEASE_EINVAL;
    int rc = ul_client_enter(c);
    if (rc)
        return rc;
    ul_request q;
    memset(&q, 0, sizeof q);
    q.op = UL_OP_PING;
    ul_reply *rep = NULL;
    uint64_t t0 = ul_now_us();
    rc = ul_client_call(c, &q, UVMLEASE_CALL_TIMEOUT_MS, NULL, &rep);
    uint64_t t1 = ul_now_us();
    if (!rc)
        rc = (int)rep->err;
    if (!rc && info) {
        info->pid = (pid_t)rep->broker_pid;
        info->instance = rep->instance;
        snprintf(info->version, sizeof info->version, "%s", rep->server);
        info->rtt_us = t1 - t0;
        info->journal = !strcmp(rep->journal, "ok") ? 1 : !strcmp(rep->journal, "failing") ? 0 : -1;
    }
    ul_client_reply_free(rep);
    ul_client_leave(c);
    return rc;
}

/* ---------------------------------------------------------- cancel tokens */

int uvmlease_cancel_token_new(uvmlease_cancel_token **out)
{
    if (!out)
        return UVMLEASE_EINVAL;
    uvmlease_cancel_token *t = calloc(1, sizeof *t);
    if (!t) {
        *out = NULL;
        return UVMLEASE_ENOMEM;
    }
    pthread_mutex_init(&t->mu, NULL);
    ul_list_init(&t->waiters);
    *out = t;
    return 0;
}

void uvmlease_cancel(uvmlease_cancel_token *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->cancelled = true;
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &t->waiters)
    {
        ul_waitctx_cancel(ul_container_of(pos, ul_waitctx, tok_link));
    }
    pthread_mutex_unlock(&t->mu);
}

void uvmlease_cancel_token_free(uvmlease_cancel_token *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* --------------------------------------------------------------- strings */

const char *uvmlease_strerror(int status)
{
    return ul_status_message(status);
}

const char *uvmlease_status_name(int status)
{
    return ul_status_name(status);
}

const char *uvmlease_version(void)
{
    return UL_VERSION;
}
