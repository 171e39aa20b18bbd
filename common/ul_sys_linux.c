/*
 * ul_sys.c — clocks and /proc readers.
 */
#include "ul_sys.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <dirent.h>
#include <poll.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

static uint64_t s_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ul_now_ns(void)
{
    return s_clock_ns(CLOCK_MONOTONIC);
}
uint64_t ul_now_us(void)
{
    return s_clock_ns(CLOCK_MONOTONIC) / 1000u;
}
uint64_t ul_now_ms(void)
{
    return s_clock_ns(CLOCK_MONOTONIC) / 1000000u;
}
uint64_t ul_wall_ms(void)
{
    return s_clock_ns(CLOCK_REALTIME) / 1000000u;
}
uint64_t ul_wall_us(void)
{
    return s_clock_ns(CLOCK_REALTIME) / 1000u;
}

/* Read a small /proc file into buf (NUL-terminated). Returns bytes or -1. */
static ssize_t s_read_small(const char *path, char *buf, size_t bufsz)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    while (got + 1 < bufsz) {
        ssize_t n = read(fd, buf + got, bufsz - 1 - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return (ssize_t)got;
}

uint64_t ul_proc_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (s_read_small(path, buf, sizeof buf) < 0)
        return 0;
    /* comm (field 2) may contain spaces and ')': fields resume after the
     * last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) {
        errno = EINVAL;
        return 0;
    }
    p++;
    /* Now at " S ppid ..." : field 3 is the state; start time is field 22. */
    for (int field = 3; field < 22; field++) {
        while (*p == ' ')
            p++;
        while (*p && *p != ' ')
            p++;
        if (!*p) {
            errno = EINVAL;
            return 0;
        }
    }
    while (*p == ' ')
        p++;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (end == p || errno) {
        errno = EINVAL;
        return 0;
    }
    /* A start time of 0 would read as "unknown"; the kernel's first
     * processes can have it, so shift everything by one. */
    return (uint64_t)v + 1;
}

void ul_proc_comm(pid_t pid, char *out, size_t outsz)
{
    char path[64], buf[64];
    if (outsz == 0)
        return;
    snprintf(path, sizeof path, "/proc/%d/comm", (int)pid);
    ssize_t n = s_read_small(path, buf, sizeof buf);
    if (n <= 0) {
        snprintf(out, outsz, "?");
        return;
    }
    if (buf[n - 1] == '\n')
        buf[n - 1] = '\0';
    snprintf(out, outsz, "%s", buf);
}

/* Find "Key:\t..." in /proc/<pid>/status; returns pointer into buf. */
static const char *s_status_field(pid_t pid, const char *key, char *buf, size_t bufsz)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    if (s_read_small(path, buf, bufsz) < 0)
        return NULL;
    size_t klen = strlen(key);
    for (const char *line = buf; line && *line;) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':')
            return line + klen + 1;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return NULL;
}

pid_t ul_proc_ppid(pid_t pid)
{
    char buf[4096];
    const char *v = s_status_field(pid, "PPid", buf, sizeof buf);
    if (!v)
        return -1;
    char *end;
    long p = strtol(v, &end, 10);
    if (end == v || p < 0)
        return -1;
    return (pid_t)p;
}

bool ul_proc_in_group(pid_t pid, gid_t gid)
{
    char buf[8192];
    const char *v = s_status_field(pid, "Gid", buf, sizeof buf);
    if (v) {
        /* Gid: real effective saved fs — the effective one decides. */
        char *end;
        unsigned long real = strtoul(v, &end, 10);
        unsigned long eff = strtoul(end, &end, 10);
        (void)real;
        if (eff == (unsigned long)gid)
            return true;
    }
    v = s_status_field(pid, "Groups", buf, sizeof buf);
    if (!v)
        return false;
    const char *p = v;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!isdigit((unsigned char)*p))
            return false;
        char *end;
        unsigned long g = strtoul(p, &end, 10);
        if (g == (unsigned long)gid)
            return true;
        p = end;
    }
}

int ul_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int ul_pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int ul_proc_euid(pid_t pid, uint32_t *uid)
{
    char buf[4096];
    const char *v = s_status_field(pid, "Uid", buf, sizeof buf);
    if (!v)
        return -1;
    /* Uid: real effective saved fs */
    char *end;
    strtoul(v, &end, 10);
    const char *e = end;
    unsigned long eff = strtoul(e, &end, 10);
    if (end == e || eff > UINT32_MAX)
        return -1;
    *uid = (uint32_t)eff;
    return 0;
}

bool ul_pidfd_alive(int pidfd)
{
    struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
    return pidfd >= 0 && poll(&pfd, 1, 0) == 0;
}

int ul_sock_peercred(int fd, uint32_t *pid, uint32_t *uid, uint32_t *gid)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
        return -1;
    if (len != sizeof cr) {
        errno = EINVAL;
        return -1;
    }
    *pid = (uint32_t)cr.pid;
    *uid = (uint32_t)cr.uid;
    *gid = (uint32_t)cr.gid;
    return 0;
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; Debian 12's headers predate it */
#endif

int ul_sock_peer_pidfd(int fd)
{
    int pidfd = -1;
    socklen_t len = sizeof pidfd;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0)
        return -1;
    if (len != sizeof pidfd || pidfd < 0) {
        errno = EINVAL;
        return -1;
    }
    return pidfd;
}

long ul_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

uint64_t ul_random64(void)
{
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v)
            v = ul_now_ns() ^ ((uint64_t)getpid() << 32);
    }
    return v;
}

/* ---- wake-ups, wait sets, locks ------------------------------------------ */

int ul_wakeup_new(void)
{
    return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

void ul_wakeup_signal(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0) {
        /* Only fails when the counter would overflow: it is signalled. */
    }
}

void ul_wakeup_clear(int fd)
{
    uint64_t v;
    if (read(fd, &v, sizeof v) < 0) {
        /* EAGAIN: it was not signalled. */
    }
}

int ul_waitset_new(void)
{
    return epoll_create1(EPOLL_CLOEXEC);
}

int ul_waitset_add(int ws, int fd, void *ptr)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = ptr};
    return epoll_ctl(ws, EPOLL_CTL_ADD, fd, &ev);
}

void ul_waitset_del(int ws, int fd)
{
    epoll_ctl(ws, EPOLL_CTL_DEL, fd, NULL);
}

int ul_waitset_wait(int ws, void **out, int max, int timeout_ms)
{
    struct epoll_event evs[64];
    int n = epoll_wait(ws, evs, max < 64 ? max : 64, timeout_ms);
    for (int i = 0; i < n; i++)
        out[i] = evs[i].data.ptr;
    return n;
}

int ul_waitset_ready(int ws, void **out, int max)
{
    int n = ul_waitset_wait(ws, out, max, 0);
    return n < 0 ? 0 : n;
}

int ul_file_lock(int fd)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    return fcntl(fd, F_OFD_SETLK, &fl);
}
