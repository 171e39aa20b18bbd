/*
 * accept_guard.h — uvmleased's accept4/accept wrappers for libzmq (see
 * accept_guard.c): descriptor exhaustion drops one connection instead of
 * aborting the daemon.
 */
#ifndef UL_ACCEPT_GUARD_H
#define UL_ACCEPT_GUARD_H

/* Take the reserved descriptor: once at start, before the broker (the
 * guard takes it back itself after each use). */
void ul_accept_guard_init(void);

#endif
