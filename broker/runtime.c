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
#include <sys/stat.h>
#include <unistd.h>

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
    if (!created && (st.st_mode & 0002)) {
        S_ERR("%s is writable by others (mode %04o)", dir, (unsigned)(st.st_mode & 07777));
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

/* The directory of a socket placed with --endpoint: it also holds the lock
 * file. Others must not be able to replace either: owned by the broker or
 * root, and writable by others only with the sticky bit (like /tmp). */
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
    snprintf(rt->lock_path, sizeof rt->lock_path, "%s.lock", rt->sock_path);

    int rc = s_prepare_dir(rt, rt->dir, err, errsz);
    if (rc == 0 && endpoint && *endpoint)
        rc = s_check_socket_dir(rt->sock_path, err, errsz);
    if (rc)
        return rc;

    int fd = open(rt->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
    if (fd < 0) {
        S_ERR("cannot open lock %s: %s", rt->lock_path, strerror(errno));
        return UVMLEASE_ESYSTEM;
    }
    /* An OFD lock belongs to this open file description: it conflicts even
     * with a second broker embedded in the same process. */
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        if (e == EAGAIN || e == EACCES) {
            pid_t p = s_lock_owner(fd);
            if (other_pid)
                *other_pid = p;
            S_ERR("another broker (pid %d) is serving %s", (int)p, rt->endpoint);
            close(fd);
            return UVMLEASE_EBUSY;
        }
        S_ERR("cannot lock %s: %s", rt->lock_path, strerror(e));
        close(fd);
        errno = e;
        return UVMLEASE_ESYSTEM;
    }
    char pidbuf[32];
    int n = snprintf(pidbuf, sizeof pidbuf, "%d\n", (int)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pidbuf, (size_t)n, 0) != n) {
        /* Only the diagnostic of a second instance suffers. */
    }
    rt->lock_fd = fd;
    /* We hold the lock, so whatever socket file is there is a dead
     * broker's. */
    if (unlink(rt->sock_path) < 0 && errno != ENOENT) {
        S_ERR("cannot remove stale socket %s: %s", rt->sock_path, strerror(errno));
        ul_runtime_close(rt);
        return UVMLEASE_ESYSTEM;
    }
    return 0;
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
