/*
 * accept_guard.c — uvmleased only (not the embedded broker): no abort when
 * descriptors run out.
 *
 * libzmq 4.3.4's ipc listener asserts (SIGABRT) when accept(2) fails with
 * EMFILE, ENOBUFS or ENOMEM (src/ipc_listener.cpp, accept()). The broker's
 * connection limits (conn.c) keep it far from the descriptor limit, but
 * they act on the monitor's ACCEPTED events, after libzmq has accepted: a
 * burst of connections faster than the broker thread can shut them down
 * could still reach the limit. This file defines accept4 and accept in the
 * executable, which the dynamic linker binds libzmq's calls to: on EMFILE
 * or ENFILE one reserved descriptor is released, the waiting connection is
 * accepted and closed at once (its client sees the connection reset and
 * reconnects later), the reserve is taken back, and libzmq is told
 * ECONNABORTED, which it ignores. Without the reserve the pending connection
 * would stay in the backlog and the listener would spin on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "accept_guard.h"

static _Atomic int s_reserve = -1;

void ul_accept_guard_init(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int old = atomic_exchange(&s_reserve, fd);
    if (old >= 0)
        close(old);
}

static int s_guarded(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    int s = (int)syscall(SYS_accept4, fd, addr, len, flags);
    if (s >= 0)
        return s;
    int e = errno;
    if (e == EMFILE || e == ENFILE) {
        int r = atomic_exchange(&s_reserve, -1);
        if (r >= 0) {
            close(r);
            int drop = (int)syscall(SYS_accept4, fd, NULL, NULL, SOCK_CLOEXEC);
            if (drop >= 0)
                close(drop);
        }
        /* Take the reserve back; if another thread took the descriptor
         * first, try again at the next EMFILE rather than never. */
        ul_accept_guard_init();
        e = ECONNABORTED;
    } else if (e == ENOBUFS || e == ENOMEM) {
        e = ECONNABORTED; /* the connection is lost; the listener goes on */
    }
    errno = e;
    return -1;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    return s_guarded(fd, addr, len, flags);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return s_guarded(fd, addr, len, 0);
}
