/*
 * lt_hash.h — building blocks of the lease table, private to it: its
 * allocator (tests inject failures through it), a keyed hash (SipHash-2-4:
 * peers choose UVM ids, so bucket indexes must not be predictable without
 * the key) and an intrusive chained hash table over lt_hnode that grows and
 * shrinks with hysteresis. Inserting never fails: a failed resize keeps the
 * old buckets.
 */
#ifndef UL_LT_HASH_H
#define UL_LT_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Intrusive hash-chain node, embedded in the table's objects (private to
 * lease_table.c). */
typedef struct lt_hnode {
    struct lt_hnode *next;
    uint64_t hash;
} lt_hnode;

typedef struct lt_alloc {
    void *(*fn)(void *ctx, void *p, size_t n); /* NULL: realloc / free */
    void *ctx;
} lt_alloc;

/* Resize p to n bytes (p NULL: allocate; n 0: free, NULL returned). */
void *lt_alloc_resize(const lt_alloc *a, void *p, size_t n);
void *lt_alloc_zero(const lt_alloc *a, size_t n);
void lt_alloc_free(const lt_alloc *a, void *p);
/* n elements of size bytes (NULL on overflow or out of memory). */
void *lt_alloc_array(const lt_alloc *a, void *p, size_t n, size_t size);

uint64_t lt_siphash(const uint64_t key[2], const void *data, size_t len);

typedef struct lt_htab {
    lt_hnode **b;
    size_t mask; /* bucket count - 1, a power of two */
    size_t count;
} lt_htab;

/* 0, or -1 on out of memory. */
int lt_ht_init(lt_htab *h, const lt_alloc *a);
void lt_ht_insert(lt_htab *h, const lt_alloc *a, lt_hnode *n, uint64_t hash);
void lt_ht_remove(lt_htab *h, const lt_alloc *a, lt_hnode *n);
/* The chain a hash falls in: compare n->hash, then the entry. */
lt_hnode *lt_ht_chain(const lt_htab *h, uint64_t hash);

#endif
