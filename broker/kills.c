/*
 * kills.c — force-release --mode kill: the processes that keep a UVM's
 * leases get SIGTERM through their pidfds, then SIGKILL once the grace
 * period has run out; their deaths, seen on the pidfds, hand the leases on
 * with reason "killed".
 */
#include "kills.h"

#include <signal.h>
#include <stdlib.h>

#include "ul_sys.h"

#define S_MAX_KILLS 256

typedef struct kill_job {
    bproc *proc;         /* removed by ul_kills_proc_gone before it is freed */
    uint64_t sigkill_at; /* monotonic ms; 0 once SIGKILL was sent */
} kill_job;

struct ul_kills {
    kill_job kills[S_MAX_KILLS];
    uint32_t n_kills;
};

void ul_kills_free(uvmlease_broker *b)
{
    free(b->kills);
    b->kills = NULL;
}

static bool s_kill_add(struct ul_kills *a, bproc *p, uint64_t at)
{
    for (uint32_t i = 0; i < a->n_kills; i++)
        if (a->kills[i].proc == p)
            return true;
    if (a->n_kills >= S_MAX_KILLS)
        return false;
    a->kills[a->n_kills].proc = p;
    a->kills[a->n_kills].sigkill_at = at;
    a->n_kills++;
    return true;
}

/* Signal the processes that keep the UVM's leases (holder and watched
 * child) through their pidfds; their deaths, seen on the pidfds, release
 * the leases with reason "killed". */
/* Whether pid names lease l: its holder, or its watched child (the pid an
 * admin sees once the holder is gone). 0 names every lease. */
static bool s_names(const lt_lease *l, uint32_t pid)
{
    return pid == 0 || l->pid == pid || (l->child && l->child->id.pid == pid);
}

/* Signal the processes that keep the UVM's leases (holder and watched
 * child) through their pidfds; their deaths, seen on the pidfds, release
 * the leases with reason "killed". Room for every kill job is checked
 * before anything is signalled. */
int ul_kills_start(uvmlease_broker *b, lt_uvm *u, uint32_t pid, uint64_t now, uint32_t *signalled)
{
    if (!b->kills)
        b->kills = calloc(1, sizeof *b->kills);
    struct ul_kills *a = b->kills;
    if (!a)
        return UVMLEASE_ENOMEM;
    *signalled = 0;
    bproc *targets[2 * S_MAX_KILLS];
    uint32_t n = 0;
    bool named = false;
    for (const lt_lease *l = lt_uvm_holders(u); l; l = lt_uvm_holder_next(u, l)) {
        if (!s_names(l, pid))
            continue;
        named = true;
        lt_owner *anchors[2] = {l->owner, l->child};
        for (int k = 0; k < 2; k++) {
            bproc *p = anchors[k] ? anchors[k]->user : NULL;
            if (!p || p->kill_pending)
                continue;
            if (a->n_kills + n >= S_MAX_KILLS)
                return UVMLEASE_ERESOURCE;
            targets[n++] = p;
        }
    }
    if (!named)
        return UVMLEASE_ENOLEASE;
    for (uint32_t i = 0; i < n; i++) {
        bproc *p = targets[i];
        if (p->kill_pending) /* holder of two leases of this UVM */
            continue;
        if (ul_pidfd_send_signal(p->pidfd, SIGTERM) < 0)
            continue; /* already gone (its pidfd will say so) or not ours to signal */
        s_kill_add(a, p, now + b->cfg.kill_grace_ms);
        p->kill_pending = true;
        (*signalled)++;
    }
    /* Already being killed, or dying: the lease moves on at the death. */
    return 0;
}

void ul_kills_proc_gone(uvmlease_broker *b, const bproc *p)
{
    struct ul_kills *a = b->kills;
    for (uint32_t i = 0; a && i < a->n_kills;) {
        if (a->kills[i].proc == p)
            a->kills[i] = a->kills[--a->n_kills];
        else
            i++;
    }
}

/* SIGKILL the processes whose grace period ran out. Returns the next
 * deadline. */
uint64_t ul_kills_tick(uvmlease_broker *b, uint64_t now)
{
    struct ul_kills *a = b->kills;
    uint64_t next = LT_NEVER;
    for (uint32_t i = 0; a && i < a->n_kills; i++) {
        kill_job *k = &a->kills[i];
        if (k->sigkill_at == 0)
            continue;
        if (k->sigkill_at <= now) {
            /* Still tracked, so its pidfd has not reported the death. */
            ul_pidfd_send_signal(k->proc->pidfd, SIGKILL);
            k->sigkill_at = 0;
        } else if (k->sigkill_at < next) {
            next = k->sigkill_at;
        }
    }
    return next;
}
