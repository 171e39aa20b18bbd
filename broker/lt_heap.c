/*
 * lt_heap.c — the lease table's two heaps (see lt_heap.h).
 */
#include "lt_heap.h"

#define LT_HEAP_MIN 16u

static void s_dl_set(lt_dlheap *h, uint32_t i, lt_dlent e)
{
    h->v[i] = e;
    if (e.w)
        e.w->heap_idx = i;
}

static void s_dl_up(lt_dlheap *h, uint32_t i)
{
    lt_dlent e = h->v[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (h->v[p].deadline <= e.deadline)
            break;
        s_dl_set(h, i, h->v[p]);
        i = p;
    }
    s_dl_set(h, i, e);
}

static void s_dl_down(lt_dlheap *h, uint32_t i)
{
    lt_dlent e = h->v[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && h->v[c + 1].deadline < h->v[c].deadline)
            c++;
        if (e.deadline <= h->v[c].deadline)
            break;
        s_dl_set(h, i, h->v[c]);
        i = c;
    }
    s_dl_set(h, i, e);
}

/* Make room for one more entry; the only allocating heap operation, done
 * before anything else changes. */
int lt_dl_reserve(lt_dlheap *h, const lt_alloc *a)
{
    if (h->n < h->cap)
        return 0;
    if (h->cap >= LT_NOWHERE / 2)
        return -1;
    uint32_t ncap = h->cap ? h->cap * 2 : LT_HEAP_MIN;
    lt_dlent *n = lt_alloc_array(a, h->v, ncap, sizeof *n);
    if (!n)
        return -1;
    h->v = n;
    h->cap = ncap;
    return 0;
}

void lt_dl_push(lt_dlheap *h, lt_waiter *w)
{
    uint32_t i = h->n++;
    h->v[i] = (lt_dlent){w->deadline, w};
    w->heap_idx = i;
    s_dl_up(h, i);
}

static void s_dl_pop(lt_dlheap *h)
{
    if (!h->v[0].w)
        h->tomb--;
    else
        h->v[0].w->heap_idx = LT_NOWHERE;
    lt_dlent last = h->v[--h->n];
    if (h->n > 0) {
        s_dl_set(h, 0, last);
        s_dl_down(h, 0);
    }
}

static void s_dl_compact(lt_dlheap *h, const lt_alloc *a)
{
    uint32_t j = 0;
    for (uint32_t i = 0; i < h->n; i++)
        if (h->v[i].w)
            h->v[j++] = h->v[i];
    h->n = j;
    h->tomb = 0;
    for (uint32_t i = 0; i < j; i++)
        h->v[i].w->heap_idx = i;
    for (uint32_t i = j / 2; i-- > 0;)
        s_dl_down(h, i);
    if (h->cap > 4 * LT_HEAP_MIN && h->n < h->cap / 4) {
        lt_dlent *n = lt_alloc_array(a, h->v, h->cap / 2, sizeof *n);
        if (n) {
            h->v = n;
            h->cap /= 2;
        }
    }
}

/* O(1) amortised: tombstone the slot; compaction is paid for by the
 * removals that made the tombstones. */
void lt_dl_remove(lt_dlheap *h, const lt_alloc *a, lt_waiter *w)
{
    uint32_t i = w->heap_idx;
    if (i == LT_NOWHERE || i >= h->n)
        return;
    w->heap_idx = LT_NOWHERE;
    if (i == h->n - 1) {
        h->n--;
        return;
    }
    h->v[i].w = NULL;
    h->tomb++;
    if (h->tomb > h->n - h->tomb)
        s_dl_compact(h, a);
}

void lt_dl_clean_top(lt_dlheap *h)
{
    while (h->n > 0 && !h->v[0].w)
        s_dl_pop(h);
}

/* ---- ready heap (cap only): UVMs whose head waiter could be granted if a
 * slot were free, ordered by that waiter's arrival. */

static uint64_t s_ready_key(const lt_uvm *u)
{
    const ul_list *n = ul_list_first((ul_list *)&u->waiters);
    return ul_container_of(n, lt_waiter, uvm_link)->seq;
}

void lt_ready_set(lt_readyheap *r, uint32_t i, lt_uvm *u)
{
    r->v[i] = u;
    u->ready_idx = i;
}

void lt_ready_up(lt_readyheap *r, uint32_t i)
{
    lt_uvm *u = r->v[i];
    uint64_t k = s_ready_key(u);
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (s_ready_key(r->v[p]) <= k)
            break;
        lt_ready_set(r, i, r->v[p]);
        i = p;
    }
    lt_ready_set(r, i, u);
}

void lt_ready_down(lt_readyheap *r, uint32_t i)
{
    lt_uvm *u = r->v[i];
    uint64_t k = s_ready_key(u);
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= r->n)
            break;
        if (c + 1 < r->n && s_ready_key(r->v[c + 1]) < s_ready_key(r->v[c]))
            c++;
        if (k <= s_ready_key(r->v[c]))
            break;
        lt_ready_set(r, i, r->v[c]);
        i = c;
    }
    lt_ready_set(r, i, u);
}

/* Capacity for every UVM entry is reserved when the entry is created, so
 * the heap never allocates while granting. */
int lt_ready_reserve(lt_readyheap *r, const lt_alloc *a, uint64_t entries)
{
    if (entries <= r->cap)
        return 0;
    if (r->cap >= LT_NOWHERE / 2)
        return -1;
    uint32_t ncap = r->cap ? r->cap * 2 : LT_HEAP_MIN;
    lt_uvm **n = lt_alloc_array(a, r->v, ncap, sizeof *n);
    if (!n)
        return -1;
    r->v = n;
    r->cap = ncap;
    return 0;
}
