/*
 * ul_list.h — intrusive circular doubly-linked list (O(1) insert/remove).
 */
#ifndef UL_LIST_H
#define UL_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct ul_list {
    struct ul_list *prev, *next;
} ul_list;

#define ul_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void ul_list_init(ul_list *h)
{
    h->prev = h->next = h;
}
static inline bool ul_list_empty(const ul_list *h)
{
    return h->next == h;
}
/* A node that was initialised or removed with ul_list_remove() is unlinked. */
static inline bool ul_list_linked(const ul_list *n)
{
    return n->next != n;
}

static inline void ul_list_insert_tail(ul_list *h, ul_list *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static inline void ul_list_remove(ul_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#define ul_list_first(h) ((h)->next == (h) ? NULL : (h)->next)

#define ul_list_foreach_safe(pos, tmp, h)                                                          \
    for ((pos) = (h)->next, (tmp) = (pos)->next; (pos) != (h); (pos) = (tmp), (tmp) = (pos)->next)

#endif
