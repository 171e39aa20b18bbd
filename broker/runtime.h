/*
 * runtime.h — the broker's runtime directory, single-instance lock and the
 * permissions of its socket.
 */
#ifndef UL_RUNTIME_H
#define UL_RUNTIME_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct ul_runtime {
    char dir[PATH_MAX];       /* runtime directory */
    char sock_path[108];      /* sun_path limit */
    char endpoint[128];       /* "ipc://" + sock_path */
    char lock_path[PATH_MAX]; /* dir + "/broker.lock" */
    int lock_fd;              /* holds an OFD write lock while the broker runs */
    bool have_group;
    gid_t group; /* --socket-group */
} ul_runtime;

/* The default runtime directory: /run/uvmlease as root, else
 * $XDG_RUNTIME_DIR/uvmlease. Returns 0, or -1 if neither applies. */
int ul_runtime_default_dir(char *out, size_t outsz);

/* Resolve a group name or number. Returns 0 or -1. */
int ul_resolve_group(const char *name, gid_t *out);

/*
 * Prepare: resolve paths, create the directory (0750, group set when given;
 * an existing one must be the broker's and not writable by group or
 * others), take the single-instance lock in it, then check the socket path:
 * a live broker answering there is EBUSY, anything but a dead socket of the
 * broker's uid is refused, a dead socket is removed. On a held lock returns UVMLEASE_EBUSY with the
 * holder's pid in *other_pid (0 if unknown). Other errors: UVMLEASE_EBADENDPOINT, UVMLEASE_ESYSTEM
 * (errno set). err gets a one-line reason. rt->lock_fd is -1 on failure.
 */
int ul_runtime_open(ul_runtime *rt, const char *dir, const char *endpoint, const char *group,
                    pid_t *other_pid, char *err, size_t errsz);

/* After bind: chmod 0660 and chgrp the socket (never through the umask). */
int ul_runtime_secure_socket(const ul_runtime *rt, char *err, size_t errsz);

/* Unlink the socket and drop the lock. The lock file stays: unlinking it
 * would let two later brokers lock two different files. */
void ul_runtime_close(ul_runtime *rt);

#endif
