/*
 * lease_table.c — the broker's lease tables (see lease_table.h).
 *
 * Invariants kept between public calls:
 *  - an exclusive UVM has at most one holder; a shared UVM has no waiters;
 *  - an exclusive UVM with waiters and no holder is quarantined, or (with a
 *    cap) sits in the ready heap while the cap is full;
 *  - with a cap, active exclusive leases < max_active implies the ready heap
 *    is empty (a freed slot is always handed on before the call returns);
 *  - a UVM entry without holders, waiters, drain or quarantine is freed.
 * Granting never allocates (a waiter carries its lease from enqueue), so a
 * release, an exit or a tick cannot fail half-way.
 */
#include "lease_table.h"
#include "lt_hash.h"
#include "lt_heap.h"

#include <stdlib.h>
#include <string.h>

#include "uvmlease_errors.h"

#define S_NONE LT_NOWHERE

struct lt_table {
    lt_config cfg;
    lt_stats stats;
    uint64_t key[2];
    uint64_t fence;
    uint64_t lease_id;
    uint64_t seq;
    uint64_t now;
    uint64_t active_excl; /* exclusive leases held, for the cap */
    bool suspended;       /* exclusive grants stopped: their record cannot be written */
    lt_htab uvms, leases, owners, lease_rids, waiter_rids;
    lt_alloc al;
    ul_list all_uvms;   /* lt_uvm.all_link */
    ul_list warn;       /* lt_lease.warn_link */
    ul_list quar;       /* lt_uvm.quar_link */
    lt_dlheap dl;       /* waiters by deadline */
    lt_readyheap ready; /* min-heap on the head waiter's seq */
};

/* ---- allocation */

static void *s_realloc(lt_table *t, void *p, size_t n)
{
    return lt_alloc_resize(&t->al, p, n);
}

static void *s_zalloc(lt_table *t, size_t n)
{
    return lt_alloc_zero(&t->al, n);
}

static void s_free(lt_table *t, void *p)
{
    lt_alloc_free(&t->al, p);
}

static uint64_t s_hash2(const lt_table *t, uint64_t a, uint64_t b)
{
    unsigned char buf[16];
    for (int i = 0; i < 8; i++) {
        buf[i] = (unsigned char)(a >> (8 * i));
        buf[8 + i] = (unsigned char)(b >> (8 * i));
    }
    return lt_siphash(t->key, buf, sizeof buf);
}

static uint64_t s_hash_rid(const lt_table *t, const lt_owner *o, uint64_t rid)
{
    return s_hash2(t, (uint64_t)(uintptr_t)o, rid);
}

/* ---- small helpers */

static uint64_t s_sat_add(uint64_t a, uint64_t b)
{
    return a > LT_NEVER - b ? LT_NEVER : a + b;
}

static uint64_t s_clock(lt_table *t, uint64_t now)
{
    if (now < t->now)
        return t->now;
    t->now = now;
    return now;
}

static void s_emit(lt_table *t, const lt_event *ev)
{
    if (t->cfg.on_event)
        t->cfg.on_event(t->cfg.ctx, ev);
}

static bool s_excl_class(const lt_table *t, bool confidential)
{
    switch (t->cfg.serialize) {
    case LT_SERIALIZE_ALL:
        return true;
    case LT_SERIALIZE_NONE:
        return false;
    case LT_SERIALIZE_CONFIDENTIAL:
    default:
        return confidential;
    }
}

static bool s_uvm_exclusive(const lt_table *t, const lt_uvm *u)
{
    return u->class_set && s_excl_class(t, u->confidential);
}

static bool s_cap_room(const lt_table *t)
{
    return t->cfg.max_active == 0 || t->active_excl < t->cfg.max_active;
}

static lt_lease *s_first_holder(lt_uvm *u)
{
    ul_list *n = ul_list_first(&u->holders);
    return n ? ul_container_of(n, lt_lease, uvm_link) : NULL;
}

static lt_waiter *s_head(lt_uvm *u)
{
    ul_list *n = ul_list_first(&u->waiters);
    return n ? ul_container_of(n, lt_waiter, uvm_link) : NULL;
}

/* Exclusive, waiters queued, and nothing but (possibly) the cap in the way. */
static bool s_uvm_ready(const lt_table *t, const lt_uvm *u)
{
    return !t->suspended && u->n_waiters > 0 && u->n_holders == 0 && u->quarantine_until == 0 &&
           !u->draining && s_uvm_exclusive(t, u);
}

static bool s_ring_has(const lt_owner *o, uint64_t id)
{
    if (id == 0)
        return false;
    for (size_t i = 0; i < sizeof o->revoked / sizeof o->revoked[0]; i++)
        if (o->revoked[i] == id)
            return true;
    return false;
}

static void s_ring_add(lt_owner *o, uint64_t id)
{
    unsigned n = sizeof o->revoked / sizeof o->revoked[0];
    o->revoked[o->revoked_next % n] = id;
    o->revoked_next = (o->revoked_next + 1) % n;
}

static void s_copy(char *dst, const char *src, size_t max)
{
    size_t n = strnlen(src, max);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---- deadline heap (waiters with a finite deadline) */

/* Put u in, take it out of, or reorder it in the ready heap after any change
 * to its holders, waiters, quarantine or drain. */
static void s_ready_update(lt_table *t, lt_uvm *u)
{
    bool want = t->cfg.max_active > 0 && s_uvm_ready(t, u);
    if (want && u->ready_idx == S_NONE) {
        if (t->ready.n >= t->ready.cap)
            return; /* cannot happen: reserved per entry */
        uint32_t i = t->ready.n++;
        lt_ready_set(&t->ready, i, u);
        lt_ready_up(&t->ready, i);
    } else if (want) {
        lt_ready_up(&t->ready, u->ready_idx);
        lt_ready_down(&t->ready, u->ready_idx);
    } else if (u->ready_idx != S_NONE) {
        uint32_t i = u->ready_idx;
        lt_uvm *last = t->ready.v[--t->ready.n];
        u->ready_idx = S_NONE;
        if (i < t->ready.n) {
            lt_ready_set(&t->ready, i, last);
            lt_ready_up(&t->ready, i);
            lt_ready_down(&t->ready, last->ready_idx);
        }
    }
}

/* ---- UVM entries */

static lt_uvm *s_uvm_lookup(lt_table *t, const char *id, size_t len, uint64_t hash)
{
    for (lt_hnode *n = lt_ht_chain(&t->uvms, hash); n; n = n->next) {
        lt_uvm *u = ul_container_of(n, lt_uvm, hnode);
        if (n->hash == hash && strncmp(u->id, id, len) == 0 && u->id[len] == '\0')
            return u;
    }
    return NULL;
}

static lt_uvm *s_uvm_create(lt_table *t, const char *id, size_t len, uint64_t hash)
{
    if (t->cfg.max_active > 0 && lt_ready_reserve(&t->ready, &t->al, t->stats.uvms + 1) < 0)
        return NULL;
    lt_uvm *u = s_zalloc(t, sizeof *u + len + 1);
    if (!u)
        return NULL;
    memcpy(u->id, id, len);
    u->id[len] = '\0';
    ul_list_init(&u->holders);
    ul_list_init(&u->waiters);
    ul_list_init(&u->quar_link);
    u->ready_idx = S_NONE;
    lt_ht_insert(&t->uvms, &t->al, &u->hnode, hash);
    ul_list_insert_tail(&t->all_uvms, &u->all_link);
    t->stats.uvms++;
    return u;
}

/* Reset the class of an entry with nothing left on it, and free it unless a
 * drain keeps it. Callers must not touch u afterwards. */
static void s_uvm_settle(lt_table *t, lt_uvm *u)
{
    if (u->n_holders || u->n_waiters || u->quarantine_until)
        return;
    u->class_set = false;
    u->confidential = false;
    if (u->draining)
        return;
    lt_ht_remove(&t->uvms, &t->al, &u->hnode);
    ul_list_remove(&u->all_link);
    t->stats.uvms--;
    s_free(t, u);
}

/* ---- leases and waiters */

/* A lease with its label (copied, exact size). */
static lt_lease *s_lease_alloc(lt_table *t, const char *label)
{
    size_t n = strlen(label ? label : "") + 1;
    lt_lease *l = s_zalloc(t, sizeof *l);
    char *lab = l ? s_zalloc(t, n) : NULL;
    if (!lab) {
        s_free(t, l);
        return NULL;
    }
    memcpy(lab, label ? label : "", n);
    l->label = lab;
    ul_list_init(&l->uvm_link);
    ul_list_init(&l->owner_link);
    ul_list_init(&l->child_link);
    ul_list_init(&l->warn_link);
    return l;
}

static void s_lease_free(lt_table *t, lt_lease *l)
{
    if (!l)
        return;
    s_free(t, l->label);
    s_free(t, l->phases);
    s_free(t, l);
}

static lt_lease *s_lease_by_rid(lt_table *t, const lt_owner *o, uint64_t rid)
{
    uint64_t h = s_hash_rid(t, o, rid);
    for (lt_hnode *n = lt_ht_chain(&t->lease_rids, h); n; n = n->next) {
        lt_lease *l = ul_container_of(n, lt_lease, rnode);
        if (n->hash == h && l->owner == o && l->rid == rid)
            return l;
    }
    return NULL;
}

static lt_waiter *s_waiter_by_rid(lt_table *t, const lt_owner *o, uint64_t rid)
{
    uint64_t h = s_hash_rid(t, o, rid);
    for (lt_hnode *n = lt_ht_chain(&t->waiter_rids, h); n; n = n->next) {
        lt_waiter *w = ul_container_of(n, lt_waiter, rnode);
        if (n->hash == h && w->owner == o && w->rid == rid)
            return w;
    }
    return NULL;
}

/* Give l (rid, label, user already set) a new id and fence and the fields
 * of a grant, without hanging it anywhere yet. */
static void s_lease_fill(lt_table *t, lt_uvm *u, lt_lease *l, lt_owner *o, uint64_t now)
{
    if (l->id == 0 || l->fence == 0) {
        l->id = ++t->lease_id;
        l->fence = ++t->fence;
    }
    l->uvm = u;
    l->owner = o;
    l->pid = o->id.pid;
    l->child = NULL;
    l->exclusive = s_uvm_exclusive(t, u);
    l->overdue = false;
    l->phase[0] = '\0';
    l->granted_at = now;
    l->phase_at = now;
    l->n_phases = 0;
}

/*
 * Ask the broker to record l before it is granted. An exclusive lease whose
 * record cannot be written is not granted, and exclusive grants stop until
 * lt_resume(); its id and fence are dropped (never seen by anyone). A
 * shared lease is granted unrecorded.
 */
static bool s_persist(lt_table *t, lt_lease *l)
{
    if (!t->cfg.persist || t->cfg.persist(t->cfg.ctx, l) == 0 || !l->exclusive)
        return true;
    t->suspended = true;
    t->stats.persist_failures++;
    l->id = l->fence = 0;
    return false;
}

/* Hang a filled lease on the UVM, the owner and the indexes. */
static void s_lease_link(lt_table *t, lt_uvm *u, lt_lease *l, lt_owner *o)
{
    ul_list_insert_tail(&u->holders, &l->uvm_link);
    ul_list_insert_tail(&o->leases, &l->owner_link);
    if (t->cfg.hold_warn_ms > 0)
        ul_list_insert_tail(&t->warn, &l->warn_link);
    lt_ht_insert(&t->leases, &t->al, &l->hnode, s_hash2(t, l->id, 0));
    lt_ht_insert(&t->lease_rids, &t->al, &l->rnode, s_hash_rid(t, o, l->rid));
    u->n_holders++;
    t->stats.holders++;
    t->stats.grants++;
    if (l->exclusive)
        t->active_excl++;
}

/* Take l off everything, record the release, start a quarantine if due,
 * tell the broker, free l. Does not grant: callers kick the UVM. */
static void s_lease_end(lt_table *t, lt_lease *l, lt_reason reason, uint64_t now)
{
    lt_uvm *u = l->uvm;
    ul_list_remove(&l->uvm_link);
    ul_list_remove(&l->owner_link);
    ul_list_remove(&l->child_link);
    ul_list_remove(&l->warn_link);
    lt_ht_remove(&t->leases, &t->al, &l->hnode);
    if (l->owner) {
        lt_ht_remove(&t->lease_rids, &t->al, &l->rnode);
        if (reason == LT_R_REVOKED || reason == LT_R_KILLED)
            s_ring_add(l->owner, l->id);
    }
    u->n_holders--;
    t->stats.holders--;
    t->stats.releases[reason]++;
    if (l->exclusive)
        t->active_excl--;
    u->last = (lt_last_release){.valid = true, .reason = reason, .pid = l->pid, .at = now};
    if (l->exclusive && lt_reason_abnormal(reason) && t->cfg.quarantine_ms > 0) {
        /* Re-appending keeps the list in expiry order: now never goes back. */
        ul_list_remove(&u->quar_link);
        u->quarantine_until = s_sat_add(now, t->cfg.quarantine_ms);
        ul_list_insert_tail(&t->quar, &u->quar_link);
    }
    s_emit(t,
           &(lt_event){.type = LT_EV_RELEASED, .uvm = u, .lease = l, .reason = reason, .now = now});
    s_lease_free(t, l);
}

static void s_waiter_unlink(lt_table *t, lt_waiter *w)
{
    lt_uvm *u = w->uvm;
    ul_list_remove(&w->uvm_link);
    ul_list_remove(&w->owner_link);
    lt_ht_remove(&t->waiter_rids, &t->al, &w->rnode);
    lt_dl_remove(&t->dl, &t->al, w);
    u->n_waiters--;
    t->stats.waiters--;
}

static void s_waiter_destroy(lt_table *t, lt_waiter *w)
{
    s_lease_free(t, w->spare);
    s_free(t, w);
}

/* Remove a waiter without a grant. err 0: its process exited, so nobody is
 * told. Callers settle the UVM. */
static void s_waiter_end(lt_table *t, lt_waiter *w, int err, uint64_t now)
{
    lt_uvm *u = w->uvm;
    s_waiter_unlink(t, w);
    switch (err) {
    case UVMLEASE_ETIMEDOUT:
    case UVMLEASE_EJOURNAL:
        t->stats.timeouts++;
        break;
    case UVMLEASE_ECANCELLED:
        t->stats.cancels++;
        break;
    case UVMLEASE_EDRAINING:
        t->stats.drained_waiters++;
        break;
    default:
        t->stats.exited_waiters++;
        break;
    }
    s_ready_update(t, u);
    if (err)
        s_emit(t, &(lt_event){.type = LT_EV_FAILED,
                              .uvm = u,
                              .waiter = w,
                              .holder = s_first_holder(u),
                              .err = err,
                              .now = now});
    s_waiter_destroy(t, w);
}

/* Grant w its lease once the record is written; false (w stays queued,
 * grants suspended) when it cannot be. */
static bool s_grant_waiter(lt_table *t, lt_waiter *w, uint64_t now)
{
    lt_uvm *u = w->uvm;
    lt_lease *l = w->spare;
    l->rid = w->rid; /* its label is the spare's already */
    l->user = w->user;
    l->waited_ms = now - w->enqueued_at;
    s_lease_fill(t, u, l, w->owner, now);
    if (!s_persist(t, l))
        return false;
    w->spare = NULL;
    s_waiter_unlink(t, w);
    s_lease_link(t, u, l, w->owner);
    s_ready_update(t, u);
    s_emit(t, &(lt_event){.type = LT_EV_GRANTED, .uvm = u, .lease = l, .waiter = w, .now = now});
    s_waiter_destroy(t, w);
    return true;
}

/*
 * Something that could unblock u happened (release, end of quarantine).
 * Without a cap, grant its head waiter here; with one, the oldest ready
 * waiter across all UVMs wins, so only queue u for s_cap_dispatch. Deadlines
 * win over grants: an expired head is failed, never granted.
 */
static void s_uvm_kick(lt_table *t, lt_uvm *u, uint64_t now)
{
    if (!s_uvm_ready(t, u) || t->cfg.max_active > 0) {
        s_ready_update(t, u);
        return;
    }
    lt_waiter *w;
    while ((w = s_head(u)) != NULL) {
        if (w->deadline <= now) {
            s_waiter_end(t, w, UVMLEASE_ETIMEDOUT, now);
            continue;
        }
        s_grant_waiter(t, w, now);
        break;
    }
}

/* Hand free cap slots to the oldest ready waiters. */
static void s_cap_dispatch(lt_table *t, uint64_t now)
{
    while (t->cfg.max_active > 0 && !t->suspended && t->ready.n > 0 && s_cap_room(t)) {
        lt_uvm *u = t->ready.v[0];
        lt_waiter *w = s_head(u);
        if (w->deadline <= now) {
            s_waiter_end(t, w, UVMLEASE_ETIMEDOUT, now);
            s_uvm_settle(t, u);
            continue;
        }
        if (!s_grant_waiter(t, w, now))
            break;
    }
}

static void s_quar_expire(lt_table *t, uint64_t now)
{
    ul_list *n;
    while ((n = ul_list_first(&t->quar)) != NULL) {
        lt_uvm *u = ul_container_of(n, lt_uvm, quar_link);
        if (u->quarantine_until > now)
            break;
        ul_list_remove(&u->quar_link);
        u->quarantine_until = 0;
        s_uvm_kick(t, u, now);
        s_uvm_settle(t, u);
    }
}

/* ---- owners */

static void s_owner_destroy(lt_table *t, lt_owner *o)
{
    lt_ht_remove(&t->owners, &t->al, &o->hnode);
    t->stats.owners--;
    s_free(t, o);
}

/* ---- public API */

const char *lt_reason_name(lt_reason r)
{
    switch (r) {
    case LT_R_RELEASED:
        return "released";
    case LT_R_HOLDER_EXIT:
        return "holder-exit";
    case LT_R_REVOKED:
        return "revoked";
    case LT_R_KILLED:
        return "killed";
    case LT_R_UNDELIVERABLE:
        return "undeliverable";
    case LT_R_COUNT_:
    default:
        return "unknown";
    }
}

bool lt_reason_abnormal(lt_reason r)
{
    /* Undeliverable is normal: the holder never learnt of its grant, so no
     * host operation of its can be in flight. */
    return r == LT_R_HOLDER_EXIT || r == LT_R_REVOKED || r == LT_R_KILLED;
}

lt_table *lt_new(const lt_config *cfg)
{
    static const lt_config defaults;
    if (!cfg)
        cfg = &defaults;
    if (cfg->fence_floor >= (UINT64_C(1) << 63) || cfg->lease_id_floor >= (UINT64_C(1) << 63))
        return NULL;
    lt_table boot = {.al = {cfg->alloc, cfg->alloc_ctx}};
    lt_table *t = s_zalloc(&boot, sizeof *t);
    if (!t)
        return NULL;
    t->cfg = *cfg;
    t->al = boot.al;
    if (t->cfg.serialize != LT_SERIALIZE_ALL && t->cfg.serialize != LT_SERIALIZE_NONE)
        t->cfg.serialize = LT_SERIALIZE_CONFIDENTIAL;
    if (cfg->hash_key[0] || cfg->hash_key[1]) {
        t->key[0] = cfg->hash_key[0];
        t->key[1] = cfg->hash_key[1];
    } else {
        t->key[0] = 0x5d1c0a7e3b29f461ull;
        t->key[1] = 0xa4e8630b17cd92f5ull;
    }
    t->fence = cfg->fence_floor;
    t->lease_id = cfg->lease_id_floor;
    ul_list_init(&t->all_uvms);
    ul_list_init(&t->warn);
    ul_list_init(&t->quar);
    if (lt_ht_init(&t->uvms, &t->al) < 0 || lt_ht_init(&t->leases, &t->al) < 0 ||
        lt_ht_init(&t->owners, &t->al) < 0 || lt_ht_init(&t->lease_rids, &t->al) < 0 ||
        lt_ht_init(&t->waiter_rids, &t->al) < 0) {
        lt_free(&t);
        return NULL;
    }
    return t;
}

void lt_free(lt_table **tp)
{
    if (!tp || !*tp)
        return;
    lt_table *t = *tp;
    ul_list *n, *tmp, *m, *mtmp;
    ul_list_foreach_safe(n, tmp, &t->all_uvms)
    {
        lt_uvm *u = ul_container_of(n, lt_uvm, all_link);
        ul_list_foreach_safe(m, mtmp, &u->holders)
            s_lease_free(t, ul_container_of(m, lt_lease, uvm_link));
        ul_list_foreach_safe(m, mtmp, &u->waiters)
            s_waiter_destroy(t, ul_container_of(m, lt_waiter, uvm_link));
        s_free(t, u);
    }
    if (t->owners.b) {
        for (size_t i = 0; i <= t->owners.mask; i++) {
            lt_hnode *h = t->owners.b[i];
            while (h) {
                lt_hnode *next = h->next;
                s_free(t, ul_container_of(h, lt_owner, hnode));
                h = next;
            }
        }
    }
    s_free(t, t->uvms.b);
    s_free(t, t->leases.b);
    s_free(t, t->owners.b);
    s_free(t, t->lease_rids.b);
    s_free(t, t->waiter_rids.b);
    s_free(t, t->dl.v);
    s_free(t, t->ready.v);
    s_free(t, t);
    *tp = NULL;
}

const lt_config *lt_config_get(const lt_table *t)
{
    return t ? &t->cfg : NULL;
}
const lt_stats *lt_stats_get(const lt_table *t)
{
    return t ? &t->stats : NULL;
}
uint64_t lt_last_fence(const lt_table *t)
{
    return t ? t->fence : 0;
}
uint64_t lt_last_lease_id(const lt_table *t)
{
    return t ? t->lease_id : 0;
}

lt_owner *lt_owner_find(lt_table *t, uint32_t pid, uint64_t start_time)
{
    if (!t)
        return NULL;
    uint64_t h = s_hash2(t, pid, start_time);
    for (lt_hnode *n = lt_ht_chain(&t->owners, h); n; n = n->next) {
        lt_owner *o = ul_container_of(n, lt_owner, hnode);
        if (n->hash == h && o->id.pid == pid && o->id.start_time == start_time)
            return o;
    }
    return NULL;
}

lt_owner *lt_owner_new(lt_table *t, const lt_ident *id)
{
    if (!t || !id || lt_owner_find(t, id->pid, id->start_time))
        return NULL;
    lt_owner *o = s_zalloc(t, sizeof *o);
    if (!o)
        return NULL;
    o->id = *id;
    o->id.comm[LT_MAX_COMM] = '\0';
    ul_list_init(&o->leases);
    ul_list_init(&o->waiters);
    ul_list_init(&o->anchored);
    lt_ht_insert(&t->owners, &t->al, &o->hnode, s_hash2(t, id->pid, id->start_time));
    t->stats.owners++;
    return o;
}

bool lt_owner_idle(const lt_owner *o)
{
    return !o ||
           (ul_list_empty(&o->leases) && ul_list_empty(&o->waiters) && ul_list_empty(&o->anchored));
}

int lt_owner_free(lt_table *t, lt_owner *o)
{
    if (!t || !o || !lt_owner_idle(o))
        return UVMLEASE_EINVAL;
    s_owner_destroy(t, o);
    return 0;
}

void lt_owner_exit(lt_table *t, lt_owner *o, lt_reason reason, uint64_t now)
{
    if (!t || !o)
        return;
    if ((unsigned)reason >= LT_R_COUNT_)
        reason = LT_R_HOLDER_EXIT;
    now = s_clock(t, now);
    ul_list *n;
    /* Waiters go first, so releasing this process's own leases below can
     * never hand one to it. */
    while ((n = ul_list_first(&o->waiters)) != NULL) {
        lt_waiter *w = ul_container_of(n, lt_waiter, owner_link);
        lt_uvm *u = w->uvm;
        s_waiter_end(t, w, 0, now);
        s_uvm_settle(t, u);
    }
    while ((n = ul_list_first(&o->leases)) != NULL) {
        lt_lease *l = ul_container_of(n, lt_lease, owner_link);
        if (l->child) {
            /* The watched child may still be using the UVM: it keeps the
             * lease until it exits too. */
            lt_ht_remove(&t->lease_rids, &t->al, &l->rnode);
            ul_list_remove(&l->owner_link);
            l->owner = NULL;
            continue;
        }
        lt_uvm *u = l->uvm;
        s_lease_end(t, l, reason, now);
        s_uvm_kick(t, u, now);
        s_uvm_settle(t, u);
    }
    while ((n = ul_list_first(&o->anchored)) != NULL) {
        lt_lease *l = ul_container_of(n, lt_lease, child_link);
        ul_list_remove(&l->child_link);
        l->child = NULL;
        if (l->owner)
            continue;
        lt_uvm *u = l->uvm;
        s_lease_end(t, l, reason, now);
        s_uvm_kick(t, u, now);
        s_uvm_settle(t, u);
    }
    s_owner_destroy(t, o);
    s_cap_dispatch(t, now);
}

static int s_check_uvm(const char *uvm, size_t *len)
{
    if (!uvm)
        return UVMLEASE_EINVAL;
    *len = strnlen(uvm, LT_MAX_UVM + 1);
    return (*len == 0 || *len > LT_MAX_UVM) ? UVMLEASE_EBADUVM : 0;
}

static uint32_t s_position(lt_waiter *w)
{
    uint32_t pos = 1;
    for (ul_list *n = w->uvm->waiters.next; n != &w->uvm_link; n = n->next)
        pos++;
    return pos;
}

/* A re-send of a known (owner, rid): answer from what it became. 1 if
 * known (*rc set), 0 if new. */
static int s_acquire_known(lt_table *t, lt_owner *o, const lt_acquire_args *a,
                           lt_acquire_result *res, int *rc)
{
    lt_lease *old = s_lease_by_rid(t, o, a->rid);
    lt_waiter *oldw = old ? NULL : s_waiter_by_rid(t, o, a->rid);
    if (!old && !oldw)
        return 0;
    lt_uvm *ou = old ? old->uvm : oldw->uvm;
    bool conf = old ? ou->confidential : oldw->confidential;
    *rc = 0;
    if (strcmp(ou->id, a->uvm) != 0 || conf != a->confidential) {
        *rc = UVMLEASE_EDUPLICATE;
        return 1;
    }
    res->resent = true;
    if (old) {
        res->lease = old;
    } else {
        res->waiter = oldw;
        res->position = s_position(oldw);
    }
    return 1;
}

/* Grant l at once if its record can be written. */
static bool s_grant_now(lt_table *t, lt_uvm *u, lt_lease *l, lt_owner *o, const lt_acquire_args *a,
                        uint64_t now)
{
    l->rid = a->rid;
    l->user = a->user;
    l->waited_ms = 0;
    s_lease_fill(t, u, l, o, now);
    if (!s_persist(t, l))
        return false;
    s_lease_link(t, u, l, o);
    s_emit(t, &(lt_event){.type = LT_EV_GRANTED, .uvm = u, .lease = l, .now = now});
    return true;
}

/* Queue w (allocated, with its spare lease l) at the tail of u. */
static void s_enqueue(lt_table *t, lt_uvm *u, lt_waiter *w, lt_lease *l, lt_owner *o,
                      const lt_acquire_args *a, uint64_t deadline, uint64_t now)
{
    w->rid = a->rid;
    w->uvm = u;
    w->owner = o;
    w->confidential = a->confidential;
    w->label = l->label; /* owned by the spare lease */
    w->enqueued_at = now;
    w->timeout_ms = a->timeout_ms;
    w->deadline = deadline;
    w->seq = ++t->seq;
    w->user = a->user;
    w->heap_idx = S_NONE;
    w->spare = l;
    ul_list_insert_tail(&u->waiters, &w->uvm_link);
    ul_list_insert_tail(&o->waiters, &w->owner_link);
    lt_ht_insert(&t->waiter_rids, &t->al, &w->rnode, s_hash_rid(t, o, w->rid));
    if (deadline != LT_NEVER)
        lt_dl_push(&t->dl, w);
    u->n_waiters++;
    t->stats.waiters++;
    s_ready_update(t, u);
    s_emit(
        t,
        &(lt_event){
            .type = LT_EV_QUEUED, .uvm = u, .waiter = w, .holder = s_first_holder(u), .now = now});
}

static int s_acquire_check(const lt_acquire_args *a, size_t *len)
{
    int rc = s_check_uvm(a->uvm, len);
    if (rc)
        return rc;
    if (strnlen(a->label ? a->label : "", LT_MAX_LABEL + 1) > LT_MAX_LABEL)
        return UVMLEASE_EBADTEXT;
    return a->timeout_ms < -1 ? UVMLEASE_EBADVALUE : 0;
}

int lt_acquire(lt_table *t, lt_owner *o, const lt_acquire_args *a, uint64_t now,
               lt_acquire_result *res)
{
    lt_acquire_result scratch;
    if (!res)
        res = &scratch;
    memset(res, 0, sizeof *res);
    if (!t || !o || !a)
        return UVMLEASE_EINVAL;
    size_t len;
    int rc = s_acquire_check(a, &len);
    if (rc)
        return rc;
    now = s_clock(t, now);
    if (s_acquire_known(t, o, a, res, &rc))
        return rc;

    uint64_t h = lt_siphash(t->key, a->uvm, len);
    lt_uvm *u = s_uvm_lookup(t, a->uvm, len, h);
    if (u && u->draining)
        return UVMLEASE_EDRAINING;
    /* An entry with nothing on it whose quarantine has run out (lt_tick has
     * not caught up yet) is as good as gone: its class and lock no longer
     * apply. */
    bool stale = u && u->n_holders == 0 && u->n_waiters == 0 && u->quarantine_until <= now;
    if (u && u->class_set && !stale && u->confidential != a->confidential)
        return UVMLEASE_ECLASS;
    bool excl = s_excl_class(t, a->confidential);
    bool now_ok = !excl || (!t->suspended && s_cap_room(t) && (!u || stale));

    if (!now_ok && a->timeout_ms == 0) {
        res->holder = u ? s_first_holder(u) : NULL;
        t->stats.busy_refusals++;
        /* Free but ungrantable: the broker cannot record a grant. */
        if (excl && t->suspended &&
            (!u || stale || (u->n_holders == 0 && u->quarantine_until <= now)))
            return UVMLEASE_EJOURNAL;
        return UVMLEASE_EBUSY;
    }

    /* Allocate everything first, so a failure changes nothing. A waiter is
     * also needed when an immediate grant may fail to be recorded: the
     * acquire then waits like any other. */
    uint64_t deadline = a->timeout_ms < 0 ? LT_NEVER : s_sat_add(now, (uint64_t)a->timeout_ms);
    lt_lease *l = s_lease_alloc(t, a->label);
    lt_waiter *w = NULL;
    bool ok = l != NULL;
    if (ok && (!now_ok || (excl && a->timeout_ms != 0 && t->cfg.persist))) {
        w = s_zalloc(t, sizeof *w);
        ok = w && (deadline == LT_NEVER || lt_dl_reserve(&t->dl, &t->al) == 0);
    }
    if (ok && !u)
        ok = (u = s_uvm_create(t, a->uvm, len, h)) != NULL;
    if (!ok) {
        s_lease_free(t, l);
        s_free(t, w);
        return UVMLEASE_ENOMEM;
    }
    if (stale && u->quarantine_until) {
        ul_list_remove(&u->quar_link);
        u->quarantine_until = 0;
    }
    if (!u->class_set || stale) {
        u->class_set = true;
        u->confidential = a->confidential;
    }
    if (now_ok && s_grant_now(t, u, l, o, a, now)) {
        s_free(t, w);
        res->lease = l;
        return 0;
    }
    if (!w) { /* a try whose record could not be written */
        s_lease_free(t, l);
        s_uvm_settle(t, u);
        t->stats.busy_refusals++;
        return UVMLEASE_EJOURNAL;
    }
    s_enqueue(t, u, w, l, o, a, deadline, now);
    res->waiter = w;
    res->position = u->n_waiters;
    return 0;
}

int lt_restore(lt_table *t, lt_owner *o, const lt_restore_args *a, uint64_t now)
{
    if (!t || !o || !a || a->lease_id == 0 || a->fence == 0)
        return UVMLEASE_EINVAL;
    size_t len;
    int rc = s_check_uvm(a->uvm, &len);
    if (rc)
        return rc;
    const char *label = a->label ? a->label : "";
    if (strnlen(label, LT_MAX_LABEL + 1) > LT_MAX_LABEL)
        return UVMLEASE_EBADTEXT;
    if (lt_lease_find(t, a->lease_id))
        return UVMLEASE_EDUPLICATE;
    now = s_clock(t, now);
    uint64_t h = lt_siphash(t->key, a->uvm, len);
    lt_uvm *u = s_uvm_lookup(t, a->uvm, len, h);
    if (u && u->class_set && u->confidential != a->confidential)
        return UVMLEASE_ECLASS;
    /* A second exclusive holder cannot be restored: the record is not what
     * the broker granted. */
    if (u && u->n_holders > 0 && s_excl_class(t, a->confidential))
        return UVMLEASE_EBUSY;
    lt_lease *l = s_lease_alloc(t, label);
    if (!l || (!u && !(u = s_uvm_create(t, a->uvm, len, h)))) {
        s_lease_free(t, l);
        return UVMLEASE_ENOMEM;
    }
    u->class_set = true;
    u->confidential = a->confidential;
    l->rid = a->rid;
    l->id = a->lease_id;
    l->fence = a->fence;
    if (t->lease_id < a->lease_id)
        t->lease_id = a->lease_id;
    if (t->fence < a->fence)
        t->fence = a->fence;
    s_lease_fill(t, u, l, o, now);
    s_lease_link(t, u, l, o);
    t->stats.grants--; /* not a new grant */
    return 0;
}

int lt_quarantine(lt_table *t, const char *uvm, bool confidential, uint64_t now)
{
    if (!t || !uvm)
        return UVMLEASE_EINVAL;
    size_t len;
    int rc = s_check_uvm(uvm, &len);
    if (rc)
        return rc;
    if (t->cfg.quarantine_ms == 0 || !s_excl_class(t, confidential))
        return 0;
    now = s_clock(t, now);
    uint64_t h = lt_siphash(t->key, uvm, len);
    lt_uvm *u = s_uvm_lookup(t, uvm, len, h);
    if (!u && !(u = s_uvm_create(t, uvm, len, h)))
        return UVMLEASE_ENOMEM;
    if (!u->class_set) {
        u->class_set = true;
        u->confidential = confidential;
    }
    /* Same bookkeeping as after an abnormal release: the list stays in
     * expiry order because now never goes back. */
    ul_list_remove(&u->quar_link);
    u->quarantine_until = s_sat_add(now, t->cfg.quarantine_ms);
    ul_list_insert_tail(&t->quar, &u->quar_link);
    return 0;
}

int lt_cancel(lt_table *t, lt_owner *o, uint64_t rid, uint64_t now)
{
    if (!t || !o)
        return UVMLEASE_EINVAL;
    now = s_clock(t, now);
    lt_waiter *w = s_waiter_by_rid(t, o, rid);
    if (!w)
        return UVMLEASE_ENOTWAITING;
    lt_uvm *u = w->uvm;
    s_waiter_end(t, w, UVMLEASE_ECANCELLED, now);
    s_uvm_settle(t, u);
    return 0;
}

/* The owner's own live lease, or why not. */
static int s_owned_lease(lt_table *t, lt_owner *o, uint64_t lease_id, lt_lease **out)
{
    *out = NULL;
    if (!t || !o)
        return UVMLEASE_EINVAL;
    lt_lease *l = lt_lease_find(t, lease_id);
    if (!l)
        return s_ring_has(o, lease_id) ? UVMLEASE_EREVOKED : UVMLEASE_ENOLEASE;
    if (l->owner != o)
        return UVMLEASE_ENOTOWNER;
    *out = l;
    return 0;
}

int lt_release(lt_table *t, lt_owner *o, uint64_t lease_id, uint64_t now)
{
    return lt_release_as(t, o, lease_id, LT_R_RELEASED, now);
}

int lt_release_as(lt_table *t, lt_owner *o, uint64_t lease_id, lt_reason reason, uint64_t now)
{
    if (reason != LT_R_RELEASED && reason != LT_R_UNDELIVERABLE)
        return UVMLEASE_EINVAL;
    lt_lease *l;
    int rc = s_owned_lease(t, o, lease_id, &l);
    if (rc)
        return rc;
    now = s_clock(t, now);
    lt_uvm *u = l->uvm;
    s_lease_end(t, l, reason, now);
    s_uvm_kick(t, u, now);
    s_uvm_settle(t, u);
    s_cap_dispatch(t, now);
    return 0;
}

int lt_phase(lt_table *t, lt_owner *o, uint64_t lease_id, const char *phase, uint64_t now)
{
    lt_lease *l;
    int rc = s_owned_lease(t, o, lease_id, &l);
    if (rc)
        return rc;
    if (!phase)
        return UVMLEASE_EINVAL;
    if (strnlen(phase, LT_MAX_PHASE + 1) > LT_MAX_PHASE)
        return UVMLEASE_EBADTEXT;
    /* The history grows as phases are reported (most leases see a few):
     * the only allocation, made before anything changes. */
    if (l->n_phases == l->cap_phases && l->cap_phases < LT_PHASES_MAX) {
        uint32_t ncap = l->cap_phases ? l->cap_phases * 2 : 2;
        ncap = ncap < LT_PHASES_MAX ? ncap : LT_PHASES_MAX;
        lt_phase_rec *n = s_realloc(t, l->phases, ncap * sizeof *n);
        if (!n)
            return UVMLEASE_ENOMEM;
        l->phases = n;
        l->cap_phases = ncap;
    }
    now = s_clock(t, now);
    s_copy(l->phase, phase, LT_MAX_PHASE);
    l->phase_at = now;
    if (l->n_phases >= LT_PHASES_MAX) {
        memmove(&l->phases[0], &l->phases[1], (LT_PHASES_MAX - 1) * sizeof l->phases[0]);
        l->n_phases = LT_PHASES_MAX - 1;
    }
    lt_phase_rec *r = &l->phases[l->n_phases++];
    s_copy(r->phase, phase, LT_MAX_PHASE);
    r->at_ms = now;
    s_emit(t, &(lt_event){.type = LT_EV_PHASE, .uvm = l->uvm, .lease = l, .now = now});
    return 0;
}

int lt_attach_child(lt_table *t, lt_owner *o, uint64_t lease_id, lt_owner *child)
{
    lt_lease *l;
    int rc = s_owned_lease(t, o, lease_id, &l);
    if (rc)
        return rc;
    if (!child)
        return UVMLEASE_EINVAL;
    if (l->child || child == o)
        return UVMLEASE_EBADVALUE;
    l->child = child;
    ul_list_insert_tail(&child->anchored, &l->child_link);
    return 0;
}

lt_uvm *lt_uvm_find(lt_table *t, const char *uvm)
{
    size_t len;
    if (!t || s_check_uvm(uvm, &len) != 0)
        return NULL;
    return s_uvm_lookup(t, uvm, len, lt_siphash(t->key, uvm, len));
}

lt_lease *lt_lease_find(lt_table *t, uint64_t lease_id)
{
    if (!t)
        return NULL;
    uint64_t h = s_hash2(t, lease_id, 0);
    for (lt_hnode *n = lt_ht_chain(&t->leases, h); n; n = n->next) {
        lt_lease *l = ul_container_of(n, lt_lease, hnode);
        if (n->hash == h && l->id == lease_id)
            return l;
    }
    return NULL;
}

lt_waiter *lt_waiter_find(lt_table *t, lt_owner *o, uint64_t rid)
{
    return t && o ? s_waiter_by_rid(t, o, rid) : NULL;
}

lt_lease *lt_lease_by_rid(lt_table *t, lt_owner *o, uint64_t rid)
{
    return t && o ? s_lease_by_rid(t, o, rid) : NULL;
}

bool lt_rid_known(lt_table *t, lt_owner *o, uint64_t rid)
{
    return t && o && (s_lease_by_rid(t, o, rid) || s_waiter_by_rid(t, o, rid));
}

int lt_drain(lt_table *t, const char *uvm, uint64_t now)
{
    size_t len;
    if (!t)
        return UVMLEASE_EINVAL;
    int rc = s_check_uvm(uvm, &len);
    if (rc)
        return rc;
    now = s_clock(t, now);
    uint64_t h = lt_siphash(t->key, uvm, len);
    lt_uvm *u = s_uvm_lookup(t, uvm, len, h);
    if (!u && !(u = s_uvm_create(t, uvm, len, h)))
        return UVMLEASE_ENOMEM;
    if (u->draining)
        return 0;
    u->draining = true;
    s_emit(t, &(lt_event){.type = LT_EV_DRAIN, .uvm = u, .now = now});
    lt_waiter *w;
    while ((w = s_head(u)) != NULL)
        s_waiter_end(t, w, UVMLEASE_EDRAINING, now);
    s_ready_update(t, u);
    s_uvm_settle(t, u); /* resets the class if idle; the drain keeps the entry */
    return 0;
}

int lt_undrain(lt_table *t, const char *uvm, uint64_t now)
{
    if (!t)
        return UVMLEASE_EINVAL;
    size_t len;
    int rc = s_check_uvm(uvm, &len);
    if (rc)
        return rc;
    now = s_clock(t, now);
    lt_uvm *u = lt_uvm_find(t, uvm);
    if (!u)
        return UVMLEASE_EUNKNOWNUVM;
    if (!u->draining)
        return 0;
    u->draining = false;
    s_emit(t, &(lt_event){.type = LT_EV_UNDRAIN, .uvm = u, .now = now});
    s_uvm_settle(t, u);
    return 0;
}

int lt_revoke(lt_table *t, const char *uvm, uint32_t pid, uint64_t now)
{
    if (!t)
        return UVMLEASE_EINVAL;
    size_t len;
    int rc = s_check_uvm(uvm, &len);
    if (rc)
        return rc;
    lt_uvm *u = lt_uvm_find(t, uvm);
    if (!u)
        return UVMLEASE_EUNKNOWNUVM;
    now = s_clock(t, now);
    unsigned matched = 0;
    ul_list *n, *tmp;
    ul_list_foreach_safe(n, tmp, &u->holders)
    {
        lt_lease *l = ul_container_of(n, lt_lease, uvm_link);
        /* The pid an admin sees is the holder's, or the watched child's
         * once the holder is gone: either names the lease. */
        if (pid != 0 && l->pid != pid && !(l->child && l->child->id.pid == pid))
            continue;
        s_lease_end(t, l, LT_R_REVOKED, now);
        matched++;
    }
    if (matched == 0)
        return UVMLEASE_ENOLEASE;
    s_uvm_kick(t, u, now);
    s_uvm_settle(t, u);
    s_cap_dispatch(t, now);
    return 0;
}

uint64_t lt_tick(lt_table *t, uint64_t now)
{
    if (!t)
        return LT_NEVER;
    now = s_clock(t, now);
    for (;;) {
        lt_dl_clean_top(&t->dl);
        if (t->dl.n == 0 || t->dl.v[0].deadline > now)
            break;
        lt_waiter *w = t->dl.v[0].w;
        lt_uvm *u = w->uvm;
        /* Waiting in vain because no grant can be recorded: say so. */
        bool journal = t->suspended && u->n_holders == 0 && u->quarantine_until == 0 &&
                       !u->draining && s_head(u) == w;
        s_waiter_end(t, w, journal ? UVMLEASE_EJOURNAL : UVMLEASE_ETIMEDOUT, now);
        s_uvm_settle(t, u);
    }
    s_quar_expire(t, now);
    if (t->cfg.hold_warn_ms > 0) {
        ul_list *n;
        while ((n = ul_list_first(&t->warn)) != NULL) {
            lt_lease *l = ul_container_of(n, lt_lease, warn_link);
            if (s_sat_add(l->granted_at, t->cfg.hold_warn_ms) > now)
                break;
            ul_list_remove(&l->warn_link);
            l->overdue = true;
            t->stats.overdue++;
            s_emit(t, &(lt_event){.type = LT_EV_OVERDUE, .uvm = l->uvm, .lease = l, .now = now});
        }
    }
    s_cap_dispatch(t, now);

    uint64_t next = LT_NEVER;
    lt_dl_clean_top(&t->dl);
    if (t->dl.n > 0)
        next = t->dl.v[0].deadline;
    ul_list *q = ul_list_first(&t->quar);
    if (q) {
        uint64_t until = ul_container_of(q, lt_uvm, quar_link)->quarantine_until;
        next = until < next ? until : next;
    }
    ul_list *wl = ul_list_first(&t->warn);
    if (wl) {
        const lt_lease *l = ul_container_of(wl, lt_lease, warn_link);
        uint64_t due = s_sat_add(l->granted_at, t->cfg.hold_warn_ms);
        next = due < next ? due : next;
    }
    return next;
}

void lt_suspend(lt_table *t)
{
    if (t)
        t->suspended = true;
}

bool lt_suspended(const lt_table *t)
{
    return t && t->suspended;
}

void lt_resume(lt_table *t, uint64_t now)
{
    if (!t || !t->suspended)
        return;
    now = s_clock(t, now);
    t->suspended = false;
    ul_list *pos, *tmp;
    ul_list_foreach_safe(pos, tmp, &t->all_uvms)
    {
        s_uvm_kick(t, ul_container_of(pos, lt_uvm, all_link), now);
    }
    s_cap_dispatch(t, now);
    ul_list_foreach_safe(pos, tmp, &t->all_uvms)
    {
        s_uvm_settle(t, ul_container_of(pos, lt_uvm, all_link));
    }
}

lt_uvm *lt_uvm_first(lt_table *t)
{
    ul_list *n = t ? ul_list_first(&t->all_uvms) : NULL;
    return n ? ul_container_of(n, lt_uvm, all_link) : NULL;
}

lt_uvm *lt_uvm_next(lt_table *t, lt_uvm *u)
{
    if (!t || !u || u->all_link.next == &t->all_uvms)
        return NULL;
    return ul_container_of(u->all_link.next, lt_uvm, all_link);
}

/* ---- walks */

#define S_NEXT(type, list, link, node)                                                             \
    ((node)->link.next == (list) ? NULL : ul_container_of((node)->link.next, type, link))

lt_lease *lt_uvm_holders(const lt_uvm *u)
{
    ul_list *n = u ? ul_list_first((ul_list *)&u->holders) : NULL;
    return n ? ul_container_of(n, lt_lease, uvm_link) : NULL;
}

lt_lease *lt_uvm_holder_next(const lt_uvm *u, const lt_lease *l)
{
    return S_NEXT(lt_lease, &u->holders, uvm_link, l);
}

lt_waiter *lt_uvm_waiters(const lt_uvm *u)
{
    ul_list *n = u ? ul_list_first((ul_list *)&u->waiters) : NULL;
    return n ? ul_container_of(n, lt_waiter, uvm_link) : NULL;
}

lt_waiter *lt_uvm_waiter_next(const lt_uvm *u, const lt_waiter *w)
{
    return S_NEXT(lt_waiter, &u->waiters, uvm_link, w);
}

lt_lease *lt_owner_leases(const lt_owner *o)
{
    ul_list *n = o ? ul_list_first((ul_list *)&o->leases) : NULL;
    return n ? ul_container_of(n, lt_lease, owner_link) : NULL;
}

lt_lease *lt_owner_lease_next(const lt_owner *o, const lt_lease *l)
{
    return S_NEXT(lt_lease, &o->leases, owner_link, l);
}

lt_waiter *lt_owner_waiters(const lt_owner *o)
{
    ul_list *n = o ? ul_list_first((ul_list *)&o->waiters) : NULL;
    return n ? ul_container_of(n, lt_waiter, owner_link) : NULL;
}

lt_waiter *lt_owner_waiter_next(const lt_owner *o, const lt_waiter *w)
{
    return S_NEXT(lt_waiter, &o->waiters, owner_link, w);
}
