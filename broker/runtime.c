/*
 * runtime.c — runtime directory, single-instance lock, socket permissions.
 */
#include "runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ul_sys.h"
#include "uvmlease_errors.h"

#define S_ERR(...)                                                                                 \
    do {                                                                                           \
        if (errsz > 0)                                                                             \
            snprintf(err, errsz, __VA_ARGS__);                                                     \
    } while (0)

int ul_runtime_default_dir(char *out, size_t outsz)
{
    if (geteuid() == 0) {
        snprintf(out, outsz, "/run/uvmlease");
        return 0;
    }
    const char *x = getenv("XDG_RUNTIME_DIR");
    if (!x || !*x)
        return -1;
    int n = snprintf(out, outsz, "%s/uvmlease", x);
    return n < 0 || (size_t)n >= outsz ? -1 : 0;
}

int ul_resolve_group(const char *name, gid_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(name, &end, 10);
    if (*name && !*end && !errno) {
        *out = (gid_t)v;
        return 0;
    }
    struct group gr, *res = NULL;
    char buf[16384];
    if (getgrnam_r(name, &gr, buf, sizeof buf, &res) != 0 || !res)
        return -1;
    *out = res->gr_gid;
    return 0;
}

/* Create (or check) a directory reachable only by the owner and a group. */
static int s_prepare_dir(const ul_runtime *rt, const char *dir, char *err, size_t errsz)
{
    bool created = false;
    if (mkdir(dir, 0750) == 0) {
        created = true;
    } else if (errno != EEXIST) {
        S_ERR("cannot create %s: %s", dir, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    /* Work on the directory itself, never on whatever a path resolves to
     * later: no symlink, and every change through the descriptor. */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        S_ERR("cannot open directory %s: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return UVMLEASE_ESYSTEM;
    }
    /* Whoever owns or may write into the directory can replace the socket
     * with their own and hand out leases: refuse rather than repair. */
    if (st.st_uid != geteuid()) {
        S_ERR("%s is owned by uid %u, not by the broker (uid %u)", dir, (unsigned)st.st_uid,
              (unsigned)geteuid());
        close(fd);
        errno = EPERM;
        return UVMLEASE_ESYSTEM;
    }
    if (!created && (st.st_mode & 0022)) {
        S_ERR("%s is writable by group or others (mode %04o): the broker's state must be its "
              "own",
              dir, (unsigned)(st.st_mode & 07777));
        close(fd);
        errno = EPERM;
        return UVMLEASE_ESYSTEM;
    }
    /* mkdir's mode went through the umask; set the intended one
     * explicitly. An existing directory only loses access for others,
     * unless a socket group is named: its members must be able to enter. */
    mode_t want = created || rt->have_group ? 0750 : (st.st_mode & 0770);
    int rc = 0;
    if ((st.st_mode & 07777) != want && fchmod(fd, want) < 0) {
        S_ERR("cannot chmod %s: %s", dir, strerror(errno));
        rc = UVMLEASE_ESYSTEM;
    } else if (rt->have_group && st.st_gid != rt->group && fchown(fd, (uid_t)-1, rt->group) < 0) {
        S_ERR("cannot set group of %s: %s", dir, strerror(errno));
        rc = UVMLEASE_ESYSTEM;
    }
    close(fd);
    return rc;
}

/* The directory of a socket placed with --endpoint: others must not be able
 * to replace the socket: owned by the broker or root, and writable by others
 * only with the sticky bit (like /tmp). Nothing else of the broker's lives
 * there. */
static int s_check_socket_dir(const char *sock_path, char *err, size_t errsz)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", sock_path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        S_ERR("socket directory %s: %s", dir, strerror(errno ? errno : ENOTDIR));
        return UVMLEASE_ESYSTEM;
    }
    if (st.st_uid != geteuid() && st.st_uid != 0) {
        S_ERR("socket directory %s is owned by uid %u", dir, (unsigned)st.st_uid);
        errno = EPERM;
        return UVMLEASE_ESYSTEM;
    }
    if ((st.st_mode & 0022) && !(st.st_mode & S_ISVTX)) {
        S_ERR("socket directory %s is writable by others without the sticky bit", dir);
        errno = EPERM;
        return UVMLEASE_ESYSTEM;
    }
    return 0;
}

/* A file of the broker's own: regular, its uid, not writable by group or
 * others, one link. Refused and named otherwise, never repaired. */
static int s_check_own_file(int fd, const char *path, char *err, size_t errsz)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        S_ERR("cannot stat %s: %s", path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022) || st.st_nlink != 1) {
        S_ERR("refusing %s: not a file of the broker's own (uid %u, mode %04o, %lu links)", path,
              (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777), (unsigned long)st.st_nlink);
        errno = EPERM;
        return UVMLEASE_ESYSTEM;
    }
    return 0;
}

/*
 * Binding an ipc endpoint unlinks whatever is at the path, so before that:
 * a live broker answering there is left alone (EBUSY, its pid from the
 * connection's peer credentials), and anything but a socket of the
 * broker's own uid is refused. A dead broker's socket is removed.
 */
static int s_claim_socket(ul_runtime *rt, pid_t *other_pid, char *err, size_t errsz)
{
    struct stat st;
    if (lstat(rt->sock_path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        S_ERR("cannot inspect %s: %s", rt->sock_path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid()) {
        S_ERR("%s exists and is not a socket of the broker's user (uid %u): refusing to replace "
              "it",
              rt->sock_path, (unsigned)st.st_uid);
        errno = EEXIST;
        return UVMLEASE_ESYSTEM;
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", rt->sock_path);
    if (s >= 0 && connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) {
        struct ucred cr = {0};
        socklen_t cl = sizeof cr;
        if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0 && other_pid)
            *other_pid = cr.pid;
        close(s);
        S_ERR("another broker (pid %d) is serving %s", (int)cr.pid, rt->endpoint);
        return UVMLEASE_EBUSY;
    }
    int e = errno;
    if (s >= 0)
        close(s);
    if (s < 0 || e != ECONNREFUSED) {
        S_ERR("cannot check %s for a live broker: %s", rt->sock_path, strerror(e));
        errno = e;
        return UVMLEASE_ESYSTEM;
    }
    if (unlink(rt->sock_path) < 0 && errno != ENOENT) {
        S_ERR("cannot remove stale socket %s: %s", rt->sock_path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    return 0;
}

/* Read the pid a running broker wrote into its lock file. */
static pid_t s_lock_owner(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    long v = strtol(buf, NULL, 10);
    return v > 0 ? (pid_t)v : 0;
}

/* Resolve the directory, socket, endpoint and lock paths. */
static int s_paths(ul_runtime *rt, const char *dir, const char *endpoint, char *err, size_t errsz)
{
    if (dir && *dir) {
        snprintf(rt->dir, sizeof rt->dir, "%s", dir);
    } else if (ul_runtime_default_dir(rt->dir, sizeof rt->dir) < 0) {
        S_ERR("no runtime directory: not root and XDG_RUNTIME_DIR is unset");
        errno = ENOENT;
        return UVMLEASE_ESYSTEM;
    }
    if (endpoint && *endpoint) {
        if (strncmp(endpoint, "ipc://", 6) != 0 || endpoint[6] == '\0') {
            S_ERR("endpoint must be ipc://PATH (other transports carry no peer credentials)");
            return UVMLEASE_EBADENDPOINT;
        }
        if (strlen(endpoint + 6) >= sizeof rt->sock_path) {
            S_ERR("socket path too long (max %zu bytes)", sizeof rt->sock_path - 1);
            return UVMLEASE_EBADENDPOINT;
        }
        snprintf(rt->sock_path, sizeof rt->sock_path, "%s", endpoint + 6);
    } else {
        int n = snprintf(rt->sock_path, sizeof rt->sock_path, "%s/broker.sock", rt->dir);
        if (n < 0 || (size_t)n >= sizeof rt->sock_path) {
            S_ERR("socket path too long (max %zu bytes)", sizeof rt->sock_path - 1);
            return UVMLEASE_EBADENDPOINT;
        }
    }
    snprintf(rt->endpoint, sizeof rt->endpoint, "ipc://%s", rt->sock_path);
    int ln = snprintf(rt->lock_path, sizeof rt->lock_path, "%.*s/broker.lock",
                      (int)(sizeof rt->lock_path - 13), rt->dir);
    if (ln < 0 || strlen(rt->dir) > sizeof rt->lock_path - 13) {
        S_ERR("runtime directory path too long");
        errno = ENAMETOOLONG;
        return UVMLEASE_ESYSTEM;
    }
    return 0;
}

/* Open the lock file (the broker's own) and take the single-instance lock:
 * an OFD lock belongs to this open file description, so it conflicts even
 * with a second broker embedded in the same process. */
static int s_take_lock(ul_runtime *rt, pid_t *other_pid, char *err, size_t errsz)
{
    int fd = open(rt->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        S_ERR("cannot open lock %s: %s", rt->lock_path,
              errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    int rc = s_check_own_file(fd, rt->lock_path, err, errsz);
    if (rc == 0 && ul_file_lock(fd) < 0) {
        int e = errno;
        rc = UVMLEASE_ESYSTEM;
        if (e == EAGAIN || e == EACCES) {
            pid_t p = s_lock_owner(fd);
            if (other_pid)
                *other_pid = p;
            S_ERR("another broker (pid %d) is serving %s", (int)p, rt->endpoint);
            rc = UVMLEASE_EBUSY;
        } else {
            S_ERR("cannot lock %s: %s", rt->lock_path, strerror(e));
        }
        errno = e;
    }
    if (rc) {
        close(fd);
        return rc;
    }
    char pidbuf[32];
    int n = snprintf(pidbuf, sizeof pidbuf, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pidbuf, (size_t)n, 0) != n) {
        /* Only the diagnostic of a second instance suffers. */
    }
    rt->lock_fd = fd;
    return 0;
}

int ul_runtime_open(ul_runtime *rt, const char *dir, const char *endpoint, const char *group,
                    pid_t *other_pid, char *err, size_t errsz)
{
    memset(rt, 0, sizeof *rt);
    rt->lock_fd = -1;
    if (other_pid)
        *other_pid = 0;
    if (group) {
        if (ul_resolve_group(group, &rt->group) < 0) {
            S_ERR("unknown group '%s'", group);
            errno = EINVAL;
            return UVMLEASE_ESYSTEM;
        }
        rt->have_group = true;
    }
    int rc = s_paths(rt, dir, endpoint, err, errsz);
    if (rc == 0)
        rc = s_prepare_dir(rt, rt->dir, err, errsz);
    if (rc == 0 && endpoint && *endpoint)
        rc = s_check_socket_dir(rt->sock_path, err, errsz);
    if (rc == 0)
        rc = s_take_lock(rt, other_pid, err, errsz);
    if (rc)
        return rc;
    rc = s_claim_socket(rt, other_pid, err, errsz);
    if (rc) {
        close(rt->lock_fd);
        rt->lock_fd = -1;
    }
    return rc;
}

int ul_runtime_secure_socket(const ul_runtime *rt, char *err, size_t errsz)
{
    if (chmod(rt->sock_path, 0660) < 0) {
        S_ERR("cannot chmod %s: %s", rt->sock_path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    if (rt->have_group && chown(rt->sock_path, (uid_t)-1, rt->group) < 0) {
        S_ERR("cannot set group of %s: %s", rt->sock_path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    return 0;
}

void ul_runtime_close(ul_runtime *rt)
{
    if (rt->lock_fd >= 0) {
        unlink(rt->sock_path);
        close(rt->lock_fd);
        rt->lock_fd = -1;
    }
}
