/*
 * lt_hash.c — the lease table's building blocks (see lt_hash.h).
 */
#include "lt_hash.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LT_HT_MIN 16u

void *lt_alloc_resize(const lt_alloc *a, void *p, size_t n)
{
    if (a->fn)
        return a->fn(a->ctx, p, n);
    if (n == 0) {
        free(p);
        return NULL;
    }
    return realloc(p, n);
}

void *lt_alloc_zero(const lt_alloc *a, size_t n)
{
    if (!a->fn)
        return calloc(1, n);
    void *p = a->fn(a->ctx, NULL, n);
    if (p)
        memset(p, 0, n);
    return p;
}

void lt_alloc_free(const lt_alloc *a, void *p)
{
    if (p)
        (void)lt_alloc_resize(a, p, 0);
}

void *lt_alloc_array(const lt_alloc *a, void *p, size_t n, size_t size)
{
    if (n == 0 || n > SIZE_MAX / size)
        return NULL;
    return lt_alloc_resize(a, p, n * size);
}

/* ---- SipHash-2-4: peers choose UVM ids, so the bucket index must not be
 * predictable without the key. */

static uint64_t s_rotl(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

static void s_sipround(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = s_rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = s_rotl(v[0], 32);
    v[2] += v[3];
    v[3] = s_rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = s_rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = s_rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = s_rotl(v[2], 32);
}

static uint64_t s_le64(const unsigned char *p, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x |= (uint64_t)p[i] << (8 * i);
    return x;
}

uint64_t lt_siphash(const uint64_t key[2], const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v[4] = {key[0] ^ 0x736f6d6570736575ull, key[1] ^ 0x646f72616e646f6dull,
                     key[0] ^ 0x6c7967656e657261ull, key[1] ^ 0x7465646279746573ull};
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = s_le64(p + i, 8);
        v[3] ^= m;
        s_sipround(v);
        s_sipround(v);
        v[0] ^= m;
    }
    uint64_t m = s_le64(p + full, len - full) | ((uint64_t)(len & 0xff) << 56);
    v[3] ^= m;
    s_sipround(v);
    s_sipround(v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++)
        s_sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- hash table */

int lt_ht_init(lt_htab *h, const lt_alloc *a)
{
    h->b = lt_alloc_zero(a, LT_HT_MIN * sizeof *h->b);
    h->mask = LT_HT_MIN - 1;
    h->count = 0;
    return h->b ? 0 : -1;
}

/* A failed resize keeps the old buckets: chains get longer, nothing breaks,
 * so inserting never fails. */
static void s_ht_resize(lt_htab *h, const lt_alloc *a, size_t nb)
{
    if (nb > SIZE_MAX / sizeof *h->b)
        return;
    lt_hnode **nbk = lt_alloc_zero(a, nb * sizeof *nbk);
    if (!nbk)
        return;
    for (size_t i = 0; i <= h->mask; i++) {
        lt_hnode *n = h->b[i];
        while (n) {
            lt_hnode *next = n->next;
            size_t j = (size_t)(n->hash & (nb - 1));
            n->next = nbk[j];
            nbk[j] = n;
            n = next;
        }
    }
    lt_alloc_free(a, h->b);
    h->b = nbk;
    h->mask = nb - 1;
}

void lt_ht_insert(lt_htab *h, const lt_alloc *a, lt_hnode *n, uint64_t hash)
{
    size_t i = (size_t)(hash & h->mask);
    n->hash = hash;
    n->next = h->b[i];
    h->b[i] = n;
    if (++h->count > h->mask + 1)
        s_ht_resize(h, a, (h->mask + 1) * 2);
}

void lt_ht_remove(lt_htab *h, const lt_alloc *a, lt_hnode *n)
{
    lt_hnode **pp = &h->b[n->hash & h->mask];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (!*pp)
        return;
    *pp = n->next;
    n->next = NULL;
    h->count--;
    /* Shrink with hysteresis (grow at 1, shrink below 1/4) so a burst of
     * entries does not pin memory forever and resizes stay amortised. */
    if (h->mask + 1 > LT_HT_MIN && h->count < (h->mask + 1) / 4)
        s_ht_resize(h, a, (h->mask + 1) / 2);
}

lt_hnode *lt_ht_chain(const lt_htab *h, uint64_t hash)
{
    return h->b[hash & h->mask];
}
