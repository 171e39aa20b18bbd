/*
 * procs.c — the client processes the broker watches: one pidfd each (its
 * exit releases the process's leases), looked up by pid, and an LRU of idle
 * ones kept tracked so a shim that acquires again soon costs no new pidfd.
 */
#include "procs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kills.h"
#include "watch.h"
#include "send.h"
#include "ul_sys.h"
#include "ul_text.h"

#define S_MAX_PROCS 8192 /* client processes tracked at once */
#define S_IDLE_KEEP 256  /* idle processes kept tracked (saves pidfd_open + /proc reads) */

/* ---- client processes ------------------------------------------------- */

static uint32_t s_pid_slot(const uvmlease_broker *b, uint32_t pid)
{
    return (pid * 2654435761u) & (b->proc_cap - 1);
}

static bproc *s_proc_find(uvmlease_broker *b, uint32_t pid)
{
    if (b->proc_cap == 0)
        return NULL;
    for (bproc *p = b->procs[s_pid_slot(b, pid)]; p; p = p->hnext)
        if (p->pid == pid)
            return p;
    return NULL;
}

static void s_proc_unlink(uvmlease_broker *b, bproc *p)
{
    if (ul_list_linked(&p->idle_link)) {
        ul_list_remove(&p->idle_link);
        b->n_idle--;
    }
    if (ul_list_linked(&p->check_link))
        ul_list_remove(&p->check_link);
    bproc **pp = &b->procs[s_pid_slot(b, p->pid)];
    while (*pp && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = p->hnext;
    b->n_procs--;
}

/* Free the reply routes stored in the owner's waiters and leases: the
 * process is gone, nothing will be sent to it. */
static void s_drop_routes(lt_owner *o)
{
    for (lt_waiter *w = lt_owner_waiters(o); w; w = lt_owner_waiter_next(o, w)) {
        free(w->user);
        w->user = NULL;
    }
    for (lt_lease *l = lt_owner_leases(o); l; l = lt_owner_lease_next(o, l)) {
        free(l->user);
        l->user = NULL;
    }
}

/* The process behind p is gone (or its pid was reused): end its leases,
 * waiters and anchors, and forget it. */
static void s_proc_gone(uvmlease_broker *b, bproc *p, lt_reason reason)
{
    uint64_t now = ul_now_ms();
    char pidbuf[16];
    snprintf(pidbuf, sizeof pidbuf, "%u", p->pid);
    ul_log(&b->log, UL_LOG_DEBUG, "process exit", "pid", pidbuf, "comm", p->comm, NULL);
    s_proc_unlink(b, p);
    if (p->pidfd >= 0) {
        ul_waitset_del(b->epfd, p->pidfd);
        close(p->pidfd);
    }
    if (p->owner) {
        s_drop_routes(p->owner);
        lt_owner_exit(b->table, p->owner, reason, now);
        ul_broker_undo_lost(b);
    }
    ul_watch_proc_gone(b, p);
    ul_kills_proc_gone(b, p);
    /* lt_owner_exit's events may have queued it for an idle check. */
    if (ul_list_linked(&p->check_link))
        ul_list_remove(&p->check_link);
    free(p);
}

/* Has the process behind a tracked pidfd exited? (A pid can be reused only
 * after its process died, and the pidfd says so.) */
static bool s_proc_dead(const bproc *p)
{
    return !ul_pidfd_alive(p->pidfd);
}

static int s_proc_grow(uvmlease_broker *b)
{
    uint32_t ncap = b->proc_cap ? b->proc_cap * 2 : 64;
    bproc **n = calloc(ncap, sizeof *n);
    if (!n)
        return -1;
    bproc **old = b->procs;
    uint32_t ocap = b->proc_cap;
    b->procs = n;
    b->proc_cap = ncap;
    for (uint32_t i = 0; i < ocap; i++) {
        for (bproc *p = old[i], *next; p; p = next) {
            next = p->hnext;
            uint32_t s = s_pid_slot(b, p->pid);
            p->hnext = n[s];
            n[s] = p;
        }
    }
    free(old);
    return 0;
}

bproc *ul_broker_proc_get_pinned(uvmlease_broker *b, uint32_t pid, uint32_t uid, uint64_t start,
                                 int *err)
{
    /* The connection's pinned process was seen alive for this message:
     * the tracked process with its start time is that one, and polling its
     * pidfd again would only cost a system call per message. */
    bproc *p = s_proc_find(b, pid);
    if (p && p->start_time == start) {
        if (ul_list_linked(&p->idle_link)) {
            ul_list_remove(&p->idle_link);
            b->n_idle--;
        }
        return p;
    }
    return ul_broker_proc_get(b, pid, uid, err);
}

/*
 * The tracked process for a peer pid, created on first use: pidfd first,
 * then the start time, so the start time read belongs to the process the
 * pidfd watches. Returns NULL with *err set.
 */
bproc *ul_broker_proc_get(uvmlease_broker *b, uint32_t pid, uint32_t uid, int *err)
{
    bproc *p = s_proc_find(b, pid);
    if (p && s_proc_dead(p)) {
        s_proc_gone(b, p, p->kill_pending ? LT_R_KILLED : LT_R_HOLDER_EXIT);
        p = NULL;
    }
    if (p) {
        if (ul_list_linked(&p->idle_link)) {
            ul_list_remove(&p->idle_link);
            b->n_idle--;
        }
        return p;
    }
    if (b->n_procs >= S_MAX_PROCS) {
        *err = UVMLEASE_ERESOURCE;
        return NULL;
    }
    if (b->n_procs + 1 > b->proc_cap / 2 && s_proc_grow(b) < 0) {
        *err = UVMLEASE_ENOMEM;
        return NULL;
    }
    int fd = ul_pidfd_open((pid_t)pid);
    if (fd < 0) {
        /* Gone already (ESRCH): nothing to hold for it. Anything else
         * (out of descriptors) says nothing about the process. */
        *err = errno == ESRCH ? UVMLEASE_EPEER : UVMLEASE_ESYSTEM;
        return NULL;
    }
    uint64_t start = ul_proc_start_time((pid_t)pid);
    /* The sender may have exited (and its pid been reused) before we got
     * here: if the pidfd already reports a death, the start time read may
     * be another process's. Nothing is held for a sender that is gone. */
    if (start == 0 || !ul_pidfd_alive(fd)) {
        /* Dead by now, or alive but unreadable: the latter is not proof
         * of death. */
        *err = start == 0 && ul_pidfd_alive(fd) ? UVMLEASE_ESYSTEM : UVMLEASE_EPEER;
        close(fd);
        return NULL;
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        *err = UVMLEASE_ENOMEM;
        return NULL;
    }
    ul_list_init(&p->idle_link);
    ul_list_init(&p->check_link);
    p->pid = pid;
    p->uid = uid;
    p->start_time = start;
    p->pidfd = fd;
    ul_proc_comm((pid_t)pid, p->comm, sizeof p->comm);
    /* A process names itself: whatever bytes it chose must not reach a
     * reply (the codec refuses control characters) or a log unescaped. */
    ul_text_sanitize(p->comm, UL_MAX_COMM);
    lt_ident id = {.pid = pid, .uid = uid, .start_time = start};
    snprintf(id.comm, sizeof id.comm, "%s", p->comm);
    p->owner = lt_owner_new(b->table, &id);
    if (!p->owner || ul_waitset_add(b->epfd, fd, p) < 0) {
        if (p->owner)
            lt_owner_free(b->table, p->owner);
        close(fd);
        free(p);
        *err = UVMLEASE_ENOMEM;
        return NULL;
    }
    p->owner->user = p;
    uint32_t s = s_pid_slot(b, pid);
    p->hnext = b->procs[s];
    b->procs[s] = p;
    b->n_procs++;
    return p;
}

/* A tracked process whose owner has nothing left costs a pidfd. Keep the
 * most recently used ones (a shim acquires again soon, and re-tracking costs
 * pidfd_open and two /proc reads); forget the oldest beyond S_IDLE_KEEP. */
static void s_proc_forget(uvmlease_broker *b, bproc *p)
{
    s_proc_unlink(b, p);
    ul_waitset_del(b->epfd, p->pidfd);
    close(p->pidfd);
    lt_owner_free(b->table, p->owner);
    free(p);
}

void ul_broker_proc_check_idle(uvmlease_broker *b)
{
    /* Undoing a lost grant ends a lease, which can leave a process idle. */
    ul_broker_undo_lost(b);
    while (!ul_list_empty(&b->check)) {
        bproc *p = ul_container_of(b->check.next, bproc, check_link);
        ul_list_remove(&p->check_link);
        ul_broker_proc_maybe_forget(b, p);
    }
}

void ul_broker_proc_maybe_forget(uvmlease_broker *b, bproc *p)
{
    if (!p || !p->owner || !lt_owner_idle(p->owner) || (p->kill_pending || ul_watch_has(b, p->pid)))
        return;
    if (!ul_list_linked(&p->idle_link)) {
        ul_list_insert_tail(&b->idle, &p->idle_link);
        b->n_idle++;
    }
    while (b->n_idle > S_IDLE_KEEP) {
        bproc *old = ul_container_of(b->idle.next, bproc, idle_link);
        s_proc_forget(b, old);
    }
}

/* A lease or waiter of o ended inside a table call: count it, and look at
 * the process once the call has returned (forgetting it now would free an
 * owner the table is still using). */
void ul_proc_touch(uvmlease_broker *b, const lt_owner *o)
{
    bproc *p = o ? o->user : NULL;
    if (p && !ul_list_linked(&p->check_link))
        ul_list_insert_tail(&b->check, &p->check_link);
}

void ul_proc_inactive(uvmlease_broker *b, const lt_owner *o)
{
    bproc *p = o ? o->user : NULL;
    if (p && p->n_active > 0)
        p->n_active--;
    ul_proc_touch(b, o);
}

void ul_procs_reap(uvmlease_broker *b)
{
    void *ready[64];
    int n = ul_waitset_ready(b->epfd, ready, 64);
    for (int i = 0; i < n; i++) {
        bproc *p = ready[i];
        s_proc_gone(b, p, p->kill_pending ? LT_R_KILLED : LT_R_HOLDER_EXIT);
    }
}

void ul_procs_free(uvmlease_broker *b)
{
    if (b->procs) {
        for (uint32_t i = 0; i < b->proc_cap; i++) {
            for (bproc *p = b->procs[i], *next; p; p = next) {
                next = p->hnext;
                if (p->pidfd >= 0)
                    close(p->pidfd);
                if (p->owner)
                    s_drop_routes(p->owner);
                free(p);
            }
        }
        free(b->procs);
    }
}
