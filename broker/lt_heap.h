/*
 * lt_heap.h — the lease table's two heaps, private to it.
 *
 * The deadline heap orders waiters by deadline so expiry is O(log n); a
 * waiter that leaves is tombstoned in O(1) (its slot stays, keyed, so the
 * order holds around it) and the heap is compacted once tombstones
 * outnumber live entries. The ready heap (host-wide cap only) orders UVMs
 * whose head waiter could be granted by that waiter's arrival. Each entry
 * records its slot in the object (heap_idx, ready_idx; LT_NOWHERE when not
 * in a heap). Only reserve allocates, so a grant never does.
 */
#ifndef UL_LT_HEAP_H
#define UL_LT_HEAP_H

#include <stdint.h>

#include "lease_table.h"

#define LT_NOWHERE UINT32_MAX

/* Deadline heap slot. w == NULL is a tombstone. */
typedef struct lt_dlent {
    uint64_t deadline;
    lt_waiter *w;
} lt_dlent;

typedef struct lt_dlheap {
    lt_dlent *v;
    uint32_t n, cap, tomb;
} lt_dlheap;

typedef struct lt_readyheap {
    lt_uvm **v;
    uint32_t n, cap;
} lt_readyheap;

/* Room for one more waiter: 0 or -1 (out of memory). */
int lt_dl_reserve(lt_dlheap *h, const lt_alloc *a);
/* Insert w (room reserved) at w->deadline. */
void lt_dl_push(lt_dlheap *h, lt_waiter *w);
void lt_dl_remove(lt_dlheap *h, const lt_alloc *a, lt_waiter *w);
/* Drop tombstones from the top, so v[0] (if n > 0) is a live waiter. */
void lt_dl_clean_top(lt_dlheap *h);

/* Room for `entries` UVMs: 0 or -1. */
int lt_ready_reserve(lt_readyheap *r, const lt_alloc *a, uint64_t entries);
void lt_ready_set(lt_readyheap *r, uint32_t i, lt_uvm *u);
void lt_ready_up(lt_readyheap *r, uint32_t i);
void lt_ready_down(lt_readyheap *r, uint32_t i);

#endif
