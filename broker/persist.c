/*
 * persist.c — the broker's side of the lease journal (see persist.h).
 */
#include "persist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "procs.h"
#include "ul_sys.h"

#define S_RETRY_MS 250   /* a failing journal is tried again this often */
#define S_NAG_MS   60000 /* and said to be failing again this often */

static void s_u64(char *out, size_t n, uint64_t v)
{
    snprintf(out, n, "%llu", (unsigned long long)v);
}

/* The journal cannot be written: stop exclusive grants (safe inside a
 * table callback) and say so once per change. */
static void s_failing(uvmlease_broker *b)
{
    uint64_t now = ul_now_ms();
    lt_suspend(b->table);
    b->journal_retry_at = now + S_RETRY_MS;
    if (b->journal_failing)
        return;
    b->journal_failing = true;
    b->journal_failing_since = now;
    b->journal_nag_at = now + S_NAG_MS;
    ul_log(&b->log, UL_LOG_ERROR, "lease journal cannot be written: exclusive grants suspended",
           "path", ul_journal_path(b->journal), "err", strerror(ul_journal_last_errno(b->journal)),
           NULL);
}

static void s_record(const lt_lease *l, ul_jrec *r)
{
    memset(r, 0, sizeof *r);
    const lt_owner *o = l->owner ? l->owner : l->child;
    r->lease = l->id;
    r->fence = l->fence;
    r->rid = l->rid;
    r->pid = o ? o->id.pid : l->pid;
    r->uid = o ? o->id.uid : 0;
    r->start_time = o ? o->id.start_time : 0;
    r->confidential = l->uvm->confidential;
    snprintf(r->uvm, sizeof r->uvm, "%s", l->uvm->id);
    snprintf(r->label, sizeof r->label, "%s", l->label);
    if (l->owner && l->child) {
        r->child_pid = l->child->id.pid;
        r->child_start = l->child->id.start_time;
    }
}

int ul_persist_grant(void *ctx, const lt_lease *l)
{
    uvmlease_broker *b = ctx;
    /* While failing, only the retry timer writes: a grant that slipped
     * through between two failures would be granted out of FIFO order. */
    if (b->journal_failing)
        return UVMLEASE_EJOURNAL;
    ul_jrec r;
    s_record(l, &r);
    int rc = ul_journal_grant(b->journal, &r);
    if (rc == 0)
        return 0;
    /* A shared lease is granted unrecorded, but the slot its write may
     * have cut short must be cleared by the retry all the same. */
    s_failing(b);
    return rc;
}

void ul_persist_release(uvmlease_broker *b, uint64_t lease)
{
    /* Until the clear is written, the record still names the old holder:
     * nobody else may be granted, or a restart would restore both. */
    if (ul_journal_release(b->journal, lease) != 0)
        s_failing(b);
}

static int s_child_pending_add(uvmlease_broker *b, uint64_t lease)
{
    if (b->n_child_pending == b->child_pending_cap) {
        size_t nc = b->child_pending_cap ? b->child_pending_cap * 2 : 16;
        uint64_t *n = realloc(b->child_pending, nc * sizeof *n);
        if (!n)
            return -1;
        b->child_pending = n;
        b->child_pending_cap = nc;
    }
    b->child_pending[b->n_child_pending++] = lease;
    return 0;
}

static int s_child_write(uvmlease_broker *b, uint64_t lease)
{
    lt_lease *l = lt_lease_find(b->table, lease);
    if (!l)
        return 0; /* released meanwhile: nothing to record */
    ul_jrec r;
    s_record(l, &r);
    int rc = ul_journal_child(b->journal, &r);
    return rc == UVMLEASE_ENOLEASE ? 0 : rc;
}

int ul_persist_child(uvmlease_broker *b, uint64_t lease, const struct bproc *child)
{
    (void)child; /* the lease already names it */
    if (!b->journal_failing && s_child_write(b, lease) == 0) {
        /* The new copy is written; a failed clear of the old one still
         * leaves the journal unhealthy, and until the retry has cleared it
         * a release would leave that copy behind: nothing new is granted
         * meanwhile. */
        if (!ul_journal_healthy(b->journal))
            s_failing(b);
        return 0;
    }
    /* Kept for the retry: the anchor holds in memory, and grants stay
     * suspended until it is on disk too. */
    if (s_child_pending_add(b, lease) < 0)
        ul_log(&b->log, UL_LOG_ERROR, "cannot keep a child record for retry", NULL);
    s_failing(b);
    return UVMLEASE_EJOURNAL;
}

/* Clears first: on a full journal they free the slots the pending child
 * copies need. */
static int s_retry(uvmlease_broker *b)
{
    if (ul_journal_retry(b->journal) != 0)
        return -1;
    while (b->n_child_pending > 0) {
        if (s_child_write(b, b->child_pending[b->n_child_pending - 1]) != 0)
            return -1;
        b->n_child_pending--;
    }
    return ul_journal_healthy(b->journal) ? 0 : -1;
}

uint64_t ul_persist_tick(uvmlease_broker *b, uint64_t now)
{
    if (!b->journal_failing)
        return LT_NEVER;
    if (now < b->journal_retry_at)
        return b->journal_retry_at;
    char ms[24];
    s_u64(ms, sizeof ms, now - b->journal_failing_since);
    if (s_retry(b) == 0) {
        b->journal_failing = false;
        ul_log(&b->log, UL_LOG_WARN, "lease journal writable again: grants resumed", "path",
               ul_journal_path(b->journal), "failed_ms", ms, NULL);
        lt_resume(b->table, now);
        /* A grant inside the resume may have failed again. */
        return b->journal_failing ? b->journal_retry_at : LT_NEVER;
    }
    if (now >= b->journal_nag_at) {
        b->journal_nag_at = now + S_NAG_MS;
        ul_log(&b->log, UL_LOG_ERROR, "lease journal still cannot be written", "path",
               ul_journal_path(b->journal), "err", strerror(ul_journal_last_errno(b->journal)),
               "failing_ms", ms, NULL);
    }
    b->journal_retry_at = now + S_RETRY_MS;
    return b->journal_retry_at;
}

bool ul_persist_healthy(const uvmlease_broker *b)
{
    return !b->journal_failing;
}

int ul_persist_open(uvmlease_broker *b, ul_journal_load *ld, char *err, size_t errsz)
{
    char path[PATH_MAX + 32];
    int n = snprintf(path, sizeof path, "%s/leases.journal", b->rt.dir);
    if (n < 0 || (size_t)n >= sizeof path) {
        snprintf(err, errsz, "runtime directory path too long");
        return UVMLEASE_EINVAL;
    }
    /* One slot per lease the broker may hold, plus one: attaching a child
     * writes the new copy before it clears the old. */
    return ul_journal_open(&b->journal, path, b->max_leases + 1, b->cfg.force_journal,
                           b->cfg.journal_write, b->cfg.journal_write_ctx, ld, err, errsz);
}

/* A journalled process still alive as the same process, tracked; NULL
 * otherwise. *unknown when that cannot be told (out of descriptors, /proc
 * unreadable): then nothing may be assumed. The same process is the same
 * pid with the same start time, as for a live holder: its uid is not
 * compared, since a holder that changed its uid (a shim dropping root
 * after it took the lease) still holds it, and dropping its lease would
 * let another bring-up overlap its own. */
static bproc *s_same_proc(uvmlease_broker *b, uint32_t pid, uint32_t uid, uint64_t start,
                          bool *unknown)
{
    int err = 0;
    bproc *p = pid ? ul_broker_proc_get(b, pid, uid, &err) : NULL;
    if (!p && pid && err != UVMLEASE_EPEER)
        *unknown = true;
    if (p && p->start_time != start) {
        ul_broker_proc_maybe_forget(b, p); /* the pid was reused */
        return NULL;
    }
    return p;
}

static int s_restore_one(uvmlease_broker *b, const ul_jrec *r, bproc *h, bproc *c, uint64_t now)
{
    bproc *owner = h ? h : c;
    lt_restore_args a = {.uvm = r->uvm,
                         .confidential = r->confidential,
                         .label = r->label,
                         .rid = r->rid,
                         .lease_id = r->lease,
                         .fence = r->fence};
    int rc = lt_restore(b->table, owner->owner, &a, now);
    if (rc == 0 && h && c && lt_attach_child(b->table, h->owner, r->lease, c->owner) != 0)
        rc = UVMLEASE_EINTERNAL;
    if (rc == 0)
        owner->n_active++;
    return rc;
}

/* The holder died while no broker ran: an abnormal release. Its in-flight
 * host operations may still be settling. */
static void s_holder_gone(uvmlease_broker *b, const ul_jrec *r, uint64_t now)
{
    ul_persist_release(b, r->lease);
    if (lt_quarantine(b->table, r->uvm, r->confidential, now) != 0)
        ul_log(&b->log, UL_LOG_ERROR, "cannot quarantine", "uvm", r->uvm, NULL);
}

int ul_persist_restore(uvmlease_broker *b, const ul_journal_load *ld, size_t *restored, char *err,
                       size_t errsz)
{
    *restored = 0;
    uint64_t now = ul_now_ms();
    for (size_t i = 0; i < ld->n; i++) {
        const ul_jrec *r = &ld->recs[i];
        bool unknown = false;
        bproc *h = s_same_proc(b, r->pid, r->uid, r->start_time, &unknown);
        bproc *c =
            r->child_pid ? s_same_proc(b, r->child_pid, r->uid, r->child_start, &unknown) : NULL;
        char id[24], pidbuf[16];
        s_u64(id, sizeof id, r->lease);
        snprintf(pidbuf, sizeof pidbuf, "%u", r->pid);
        int rc = unknown ? UVMLEASE_ESYSTEM : !h && !c ? 0 : s_restore_one(b, r, h, c, now);
        if (rc && !b->cfg.force_journal) {
            /* A live holder the broker cannot put back (or cannot see)
             * would be granted over: refuse rather than guess. */
            snprintf(err, errsz,
                     "cannot restore lease %s of %s (pid %s): %s; the broker will not start "
                     "(check the holder, then start once with --force-journal)",
                     id, r->uvm, pidbuf, unknown ? strerror(errno) : ul_status_name(rc));
            return UVMLEASE_EBADVALUE;
        }
        if (rc || (!h && !c)) {
            if (rc)
                ul_log(&b->log, UL_LOG_ERROR, "cannot restore lease (forced start)", "uvm", r->uvm,
                       "lease", id, "pid", pidbuf, "err", ul_status_name(rc), NULL);
            s_holder_gone(b, r, now);
            continue;
        }
        (*restored)++;
        ul_log(&b->log, UL_LOG_INFO, "restored", "uvm", r->uvm, "pid", pidbuf, "label", r->label,
               "lease", id, NULL);
    }
    ul_broker_proc_check_idle(b);
    return 0;
}

void ul_persist_close(uvmlease_broker *b)
{
    ul_journal_close(&b->journal);
    free(b->child_pending);
    b->child_pending = NULL;
    b->n_child_pending = b->child_pending_cap = 0;
}
