/*
 * ul_sys.h — the platform seam: every operating-system facility the broker
 * and the client use beyond ISO C, POSIX files and ZeroMQ. Clocks, process
 * handles (a pidfd on Linux: readable once the process has exited) and
 * facts about processes, peer credentials of a local socket, wake-up
 * events, a set of handles waited on together, an exclusive file lock, and
 * random numbers. One implementation file per operating system:
 * ul_sys_linux.c today; a Windows port provides ul_sys_win32.c (see
 * deploy/windows/README.md for what each function maps to there). Nothing
 * else in the tree includes <sys/pidfd.h>, <sys/epoll.h> or
 * <sys/eventfd.h>, or reads /proc.
 */
#ifndef UL_SYS_H
#define UL_SYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in milliseconds / microseconds / nanoseconds. */
uint64_t ul_now_ms(void);
uint64_t ul_now_us(void);
uint64_t ul_now_ns(void);
/* CLOCK_REALTIME in milliseconds / microseconds since the Unix epoch. */
uint64_t ul_wall_ms(void);
uint64_t ul_wall_us(void);

/* Process start time (field 22 of /proc/<pid>/stat, clock ticks since
 * boot). 0 and errno set when the process does not exist or is unreadable. */
uint64_t ul_proc_start_time(pid_t pid);

/* Command name (/proc/<pid>/comm, without newline) into out; "?" if
 * unreadable. out must hold at least 17 bytes. */
void ul_proc_comm(pid_t pid, char *out, size_t outsz);

/* Parent pid from /proc/<pid>/status ("PPid:"), or -1. */
pid_t ul_proc_ppid(pid_t pid);

/* Whether the process's primary or supplementary groups (/proc/<pid>/status
 * "Gid:" effective and "Groups:") include gid. false when unreadable. */
bool ul_proc_in_group(pid_t pid, gid_t gid);

/* pidfd_open(2) through syscall(2); -1 and errno on failure. */
int ul_pidfd_open(pid_t pid);
/* pidfd_send_signal(2); -1 and errno on failure. */
int ul_pidfd_send_signal(int pidfd, int sig);

/* The process's effective uid from /proc/<pid>/status ("Uid:" second
 * field). 0 on success, -1 when unreadable. */
int ul_proc_euid(pid_t pid, uint32_t *uid);

/* Whether the process behind a pidfd still runs (the pidfd is not readable:
 * it becomes readable when the process exits). */
bool ul_pidfd_alive(int pidfd);

/* The kernel's credentials of a connected AF_UNIX socket's peer, taken at
 * connect(2) (SO_PEERCRED). 0 or -1 and errno. */
int ul_sock_peercred(int fd, uint32_t *pid, uint32_t *uid, uint32_t *gid);
/* A pidfd for the exact process that connected (SO_PEERPIDFD, Linux 6.5
 * and later), or -1 and errno (ENOPROTOOPT on older kernels). */
int ul_sock_peer_pidfd(int fd);

/* Descriptors this process has open now (entries of /proc/self/fd), or -1. */
long ul_fd_count(void);

/* 64 random bits from getrandom(2), never 0. */
uint64_t ul_random64(void);

/* A wake-up event another thread can signal (an eventfd): readable while
 * signalled. -1 and errno on failure. */
int ul_wakeup_new(void);
void ul_wakeup_signal(int fd);
/* Clear it (non-blocking). */
void ul_wakeup_clear(int fd);

/* A set of handles waited on together (an epoll instance), each with a
 * pointer handed back when it is ready. -1 and errno on failure. */
int ul_waitset_new(void);
int ul_waitset_add(int ws, int fd, void *ptr);
void ul_waitset_del(int ws, int fd);
/* Without blocking: the pointers of up to max ready handles; how many. */
int ul_waitset_ready(int ws, void **out, int max);
/* The same, waiting up to timeout_ms (-1: no limit) for one to be ready.
 * How many, or -1 and errno (EINTR). */
int ul_waitset_wait(int ws, void **out, int max, int timeout_ms);

/* Take an exclusive lock on an open file, owned by this open file
 * description (an OFD lock: it conflicts even within one process). 0, or
 * -1 with errno (EAGAIN or EACCES: someone holds it). */
int ul_file_lock(int fd);

#endif
