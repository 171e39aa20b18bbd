// ctest-timeout: 180
/*
 * test_identity.c — identity belongs to the connection: a connection that
 * outlives the process that opened it is refused, a process that reuses a
 * pid inherits neither admin rights nor leases, admin needs uid 0 or the
 * configured group, and a flood of connections beyond the descriptor limit
 * leaves the daemon alive and serving.
 *
 * ZeroMQ sockets are not fork-safe, so the connections that are handed to a
 * child are raw AF_UNIX sockets speaking a minimal ZMTP 3.0 NULL DEALER
 * handshake (below).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

TestSuite(identity, .timeout = 120);

#define UVM_A "identity-a@vm"
#define UVM_B "identity-b@vm"

/* ---- a raw ZMTP 3.0 NULL DEALER ------------------------------------------- */

static int s_io_full(int fd, void *buf, size_t n, bool rd)
{
    for (size_t got = 0; got < n;) {
        /* MSG_NOSIGNAL: a connection the broker shut down must not kill
         * the test with SIGPIPE. */
        ssize_t k = rd ? read(fd, (char *)buf + got, n - got)
                       : send(fd, (const char *)buf + got, n - got, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    return 0;
}

/* The socket address of an ipc:// endpoint (paths here are short). */
static struct sockaddr_un s_sun(const char *ep)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(ep + 6);
    memcpy(sa.sun_path, ep + 6, n < sizeof sa.sun_path ? n : sizeof sa.sun_path - 1);
    return sa;
}

/* A blocking AF_UNIX connection to an ipc:// endpoint, 5 s I/O timeouts. */
static int s_raw_connect(const char *ep)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = s_sun(ep);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Read one frame: flags, then the body into *body (malloc'd). */
static int s_raw_frame(int fd, uint8_t *flags, char **body, size_t *len)
{
    uint8_t h[9];
    if (s_io_full(fd, h, 2, true) < 0)
        return -1;
    *flags = h[0];
    uint64_t n = h[1];
    if (h[0] & 0x02) {
        if (s_io_full(fd, h + 2, 7, true) < 0)
            return -1;
        n = 0;
        for (int i = 1; i < 9; i++)
            n = (n << 8) | h[i];
    }
    if (n > (1u << 20))
        return -1;
    *body = malloc(n + 1);
    *len = n;
    return s_io_full(fd, *body, n, true);
}

/* Greeting and READY both ways. 0 when the broker accepted the handshake,
 * -2 when it answered ERROR, -1 when the connection closed. */
static int s_raw_handshake(int fd)
{
    uint8_t g[64] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, 'N', 'U', 'L', 'L'};
    static const char ready[] = "\x05READY\x0bSocket-Type\x00\x00\x00\x06"
                                "DEALER";
    uint8_t cmd[2 + sizeof ready - 1] = {0x04, sizeof ready - 1};
    memcpy(cmd + 2, ready, sizeof ready - 1);
    uint8_t peer[64];
    if (s_io_full(fd, g, sizeof g, false) < 0 || s_io_full(fd, peer, sizeof peer, true) < 0 ||
        s_io_full(fd, cmd, sizeof cmd, false) < 0)
        return -1;
    uint8_t flags;
    char *body = NULL;
    size_t len = 0;
    int rc = s_raw_frame(fd, &flags, &body, &len);
    if (rc == 0)
        rc = len > 6 && memcmp(body, "\x05READY", 6) == 0 ? 0 : -2;
    free(body);
    return rc;
}

static int s_raw_call(int fd, const ul_request *q, ul_reply *r)
{
    ul_buf b = {0};
    if (ul_request_encode(q, &b) != 0)
        return -1;
    uint8_t h[9] = {0};
    size_t hl = 2;
    if (b.len < 256) {
        h[1] = (uint8_t)b.len;
    } else {
        h[0] = 0x02;
        for (int i = 0; i < 8; i++)
            h[1 + i] = (uint8_t)((uint64_t)b.len >> (56 - 8 * i));
        hl = 9;
    }
    int rc = s_io_full(fd, h, hl, false) || s_io_full(fd, b.data, b.len, false) ? -1 : 0;
    ul_buf_free(&b);
    while (rc == 0) {
        uint8_t flags;
        char *body = NULL;
        size_t len = 0;
        rc = s_raw_frame(fd, &flags, &body, &len);
        if (rc == 0 && !(flags & 0x04)) {
            rc = ul_reply_decode(body, len, r);
            bool mine = rc == 0 && r->rid == q->rid;
            free(body);
            if (rc || mine)
                return rc;
            ul_reply_free(r);
            continue;
        }
        free(body);
    }
    return rc;
}

/* Status of op (with uvm) sent on a raw connection, -1 without a reply. */
static int s_raw_op(int fd, ul_op op, const char *uvm, uint64_t lease)
{
    ul_request q;
    ul_reply r;
    memset(&r, 0, sizeof r);
    ut_req(&q, op);
    if (uvm)
        snprintf(q.uvm, sizeof q.uvm, "%s", uvm);
    q.lease = lease;
    q.mode = UL_FORCE_REVOKE;
    q.timeout_ms = 0;
    snprintf(q.reason, sizeof q.reason, "test");
    if (s_raw_call(fd, &q, &r) != 0)
        return -1;
    int err = (int)r.err;
    ul_reply_free(&r);
    return err;
}

/* ---- helpers ---------------------------------------------------------------- */

/* Become nobody with these supplementary groups. */
static bool s_become_nobody(const gid_t *groups, int n)
{
    struct passwd *pw = getpwnam("nobody");
    return pw && setgroups((size_t)n, groups) == 0 && setgid(pw->pw_gid) == 0 &&
           setuid(pw->pw_uid) == 0;
}

static gid_t s_gid(const char *name)
{
    struct group *gr = getgrnam(name);
    cr_assert(gr, "group '%s' is expected on Debian", name);
    return gr->gr_gid;
}

/* Pin by pidfd_open of the SO_PEERCRED pid (kernels before 6.5, Debian
 * 12's among them) instead of SO_PEERPIDFD: the *_by_pid tests. */
static bool s_pin_by_pid;

/* An in-process broker that nobody in group "users" may reach. */
static uvmlease_broker *s_start(char *parent, const char *admin_group)
{
    char dir[320];
    ut_tmpdir("ident", parent, 256);
    chmod(parent, 0755);
    snprintf(dir, sizeof dir, "%s/rt", parent);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.socket_group = "users";
    cfg.admin_group = admin_group;
    cfg.pin_by_pid = s_pin_by_pid;
    cfg.log_level = getenv("UL_TEST_VERBOSE") ? UL_LOG_DEBUG : UL_LOG_ERROR;
    uvmlease_broker *b = NULL;
    char err[256];
    int rc = uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err);
    if (rc)
        return NULL;
    ut_settle(uvmlease_broker_endpoint(b));
    return b;
}

/* Codes a child reports: 'K' all refused as expected, others name what was
 * wrongly allowed or went wrong. */
static char s_refused_all(int fd, uint64_t victim_lease)
{
    if (victim_lease && s_raw_op(fd, UL_OP_RELEASE, NULL, victim_lease) != UVMLEASE_EPEER)
        return 'R';
    if (s_raw_op(fd, UL_OP_DRAIN, UVM_A, 0) != UVMLEASE_EPEER)
        return 'D';
    if (s_raw_op(fd, UL_OP_FORCE_RELEASE, UVM_A, 0) != UVMLEASE_EPEER)
        return 'F';
    if (s_raw_op(fd, UL_OP_ACQUIRE, UVM_B, 0) != UVMLEASE_EPEER)
        return 'A';
    if (s_raw_op(fd, UL_OP_PING, NULL, 0) != UVMLEASE_EPEER)
        return 'P';
    return 'K';
}

/* ---- a connection that outlives the process that opened it ------------------ */

/* Child A (root) connects and is served, forks C (which drops to nobody and
 * keeps the connection) and exits. C's requests on A's connection must all
 * be refused: before, C was served as uid 0, an administrator. */
static void s_outliving(void);

Test(identity, connection_outliving_its_creator_is_refused)
{
    s_outliving();
}

Test(identity, connection_outliving_its_creator_is_refused_by_pid)
{
    s_pin_by_pid = true;
    s_outliving();
}

static void s_outliving(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to nobody");
    gid_t users = s_gid("users");
    char parent[256];
    uvmlease_broker *b = s_start(parent, "staff");
    cr_assert(b);
    const char *ep = uvmlease_broker_endpoint(b);
    ut_chan go, res;
    ut_chan_open(&go);
    ut_chan_open(&res);
    pid_t a = ut_fork();
    if (a == 0) {
        int fd = s_raw_connect(ep);
        if (fd < 0 || s_raw_handshake(fd) != 0 || s_raw_op(fd, UL_OP_PING, NULL, 0) != 0)
            _exit(2);
        if (fork() == 0) { /* C: no parent-death signal, bounded by alarm */
            alarm(60);
            if (!s_become_nobody(&users, 1))
                _exit(3);
            if (ut_chan_get(&go, 30000) != 'G')
                _exit(4);
            ut_chan_put(&res, s_refused_all(fd, 0));
            _exit(0);
        }
        _exit(0);
    }
    cr_assert_eq(ut_wait_code(a, 10000), 0, "the creator could not connect");
    ut_chan_put(&go, 'G');
    int got = ut_chan_get(&res, 30000);
    cr_assert_eq(got, 'K', "request on a connection whose creator exited was served: %c", got);
    uvmlease_broker_stop(&b);
    ut_rmrf(parent);
}

/* ---- pid reuse ------------------------------------------------------------- */

/* Inside a private pid namespace (ns_last_pid makes reuse deterministic):
 * returns a child code, 0 when the reuser inherited nothing. */
static int s_reuse_scenario(const char *parent)
{
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        return 20;
    gid_t users = s_gid("users"), staff = s_gid("staff");
    char dir[320];
    snprintf(dir, sizeof dir, "%s/rt", parent);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = dir;
    cfg.socket_group = "users";
    cfg.admin_group = "staff";
    cfg.pin_by_pid = s_pin_by_pid;
    cfg.log_level = UL_LOG_ERROR;
    uvmlease_broker *b = NULL;
    char err[256];
    if (uvmlease_broker_start(&cfg, &b, NULL, err, sizeof err) != 0)
        return 21;
    const char *ep = uvmlease_broker_endpoint(b);
    ut_settle(ep);
    ut_chan go, res, lease;
    ut_chan_open(&go);
    ut_chan_open(&res);
    ut_chan_open(&lease);
    /* A: an unprivileged process connects, hands the connection to C, exits. */
    pid_t a = fork();
    if (a == 0) {
        int fd = -1;
        if (!s_become_nobody(&users, 1) || (fd = s_raw_connect(ep)) < 0 ||
            s_raw_handshake(fd) != 0 || s_raw_op(fd, UL_OP_PING, NULL, 0) != 0)
            _exit(2);
        if (fork() == 0) {
            alarm(60);
            if (ut_chan_get(&go, 30000) != 'G')
                _exit(4);
            uint64_t victim = 0;
            if (read(lease.fd[0], &victim, sizeof victim) != sizeof victim)
                _exit(5);
            ut_chan_put(&res, s_refused_all(fd, victim));
            _exit(0);
        }
        _exit(0);
    }
    int st = 0;
    if (waitpid(a, &st, 0) != a || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return 22;
    /* R: the next process gets A's pid; it is in the admin group and holds
     * a lease on UVM_A. */
    FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
    if (!f || fprintf(f, "%d", (int)a - 1) < 0 || fclose(f) != 0)
        return 23;
    ut_chan held, done;
    ut_chan_open(&held);
    ut_chan_open(&done);
    pid_t r = fork();
    if (r == 0) {
        gid_t both[2] = {users, staff};
        if (!s_become_nobody(both, 2))
            _exit(2);
        void *s = ut_dealer(ep);
        ul_reply rep;
        memset(&rep, 0, sizeof rep);
        if (ut_acquire(s, UVM_A, true, "reuser", 0, &rep, NULL, NULL, 10000) != 0)
            _exit(3);
        uint64_t l = rep.lease;
        ul_reply_free(&rep);
        if (write(lease.fd[1], &l, sizeof l) != sizeof l)
            _exit(4);
        ut_chan_put(&held, 'H');
        if (ut_chan_get(&done, 30000) != 'D')
            _exit(5);
        _exit(ut_release(s, l) == 0 ? 0 : 6); /* still its lease */
    }
    if (r != a)
        return 24; /* the pid was not reused: cannot tell */
    if (ut_chan_get(&held, 20000) != 'H')
        return 25;
    ut_chan_put(&go, 'G');
    int got = ut_chan_get(&res, 30000);
    if (got != 'K')
        return got > 0 ? got : 26; /* 'D', 'F', 'R', 'A', 'P': allowed */
    ut_chan_put(&done, 'D');
    if (waitpid(r, &st, 0) != r || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        return 27;
    uvmlease_broker_stop(&b);
    return 0;
}

/* A process that gets the pid of a connection's exited creator (here:
 * deterministic with ns_last_pid in a private pid namespace) must inherit
 * neither its admin group (drain, force-release) nor its leases (release of
 * the reuser's lease over the old connection). */
static void s_reused(void);

Test(identity, reused_pid_inherits_neither_rights_nor_leases)
{
    s_reused();
}

Test(identity, reused_pid_inherits_neither_rights_nor_leases_by_pid)
{
    s_pin_by_pid = true;
    s_reused();
}

static void s_reused(void)
{
    if (geteuid() != 0)
        cr_skip_test("needs root for a pid namespace and ns_last_pid");
    char parent[256];
    ut_tmpdir("reuse", parent, sizeof parent);
    chmod(parent, 0755);
    pid_t y = ut_fork();
    if (y == 0) {
        if (unshare(CLONE_NEWPID | CLONE_NEWNS) < 0)
            _exit(10);
        pid_t z = fork();
        if (z == 0)
            _exit(s_reuse_scenario(parent));
        int st = 0;
        waitpid(z, &st, 0);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 11);
    }
    int code = ut_wait_code(y, 90000);
    if (code == 10 || code == 20)
        cr_skip_test("cannot make a pid and mount namespace here (%d)", code);
    cr_assert_neq(code, 24, "the pid was not reused");
    cr_assert_eq(code, 0,
                 "reuser's rights or lease reachable over the old connection: code %d (%c)", code,
                 code > 32 ? code : '?');
    ut_rmrf(parent);
}

/* ---- admin without an admin group ------------------------------------------ */

/* No admin group configured: only uid 0 administers. nobody (who may
 * connect: socket group) is refused drain, undrain and force-release. */
Test(identity, no_admin_group_means_root_only)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to nobody");
    gid_t users = s_gid("users");
    char parent[256];
    uvmlease_broker *b = s_start(parent, NULL);
    cr_assert(b);
    const char *ep = uvmlease_broker_endpoint(b);
    pid_t p = ut_fork();
    if (p == 0) {
        gid_t groups[2] = {users, 0}; /* even in group root */
        if (!s_become_nobody(groups, 2))
            _exit(2);
        void *s = ut_dealer(ep);
        static const ul_op ops[] = {UL_OP_DRAIN, UL_OP_UNDRAIN, UL_OP_FORCE_RELEASE};
        for (int i = 0; i < 3; i++) {
            ul_request q;
            ul_reply r;
            memset(&r, 0, sizeof r);
            ut_req(&q, ops[i]);
            snprintf(q.uvm, sizeof q.uvm, UVM_A);
            q.mode = UL_FORCE_REVOKE;
            snprintf(q.reason, sizeof q.reason, "test");
            if (ut_call(s, &q, &r, 5000) != 0)
                _exit(3);
            if (r.err != UVMLEASE_EPERM)
                _exit(10 + i);
            ul_reply_free(&r);
        }
        _exit(0);
    }
    int code = ut_wait_code(p, 20000);
    cr_assert_eq(code, 0, "a non-root peer was not refused (code %d)", code);
    /* root still may. */
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    memset(&r, 0, sizeof r);
    ut_req(&q, UL_OP_DRAIN);
    snprintf(q.uvm, sizeof q.uvm, UVM_A);
    cr_assert_eq(ut_call(s, &q, &r, 5000), 0);
    cr_assert_eq(r.err, 0, "root refused: %u", r.err);
    ul_reply_free(&r);
    ut_dealer_close(s);
    uvmlease_broker_stop(&b);
    ut_rmrf(parent);
}

/* ---- half-open connections ------------------------------------------------- */

/* A connection that never sends its greeting is dropped after the
 * handshake interval (2 s), not after libzmq's default 30 s. */
Test(identity, half_open_connection_is_dropped)
{
    char parent[256];
    uvmlease_broker *b = s_start(parent, NULL);
    cr_assert(b);
    int fd = s_raw_connect(uvmlease_broker_endpoint(b));
    cr_assert_geq(fd, 0);
    uint64_t t0 = ul_now_ms();
    char buf[128];
    ssize_t n;
    /* The broker sends its greeting, then closes: read until the end. */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (poll(&p, 1, 10000) > 0 && (n = read(fd, buf, sizeof buf)) > 0) {
    }
    uint64_t waited = ul_now_ms() - t0;
    cr_log_info("half-open connection dropped after %llu ms", (unsigned long long)waited);
    cr_assert_lt(waited, 9000, "a silent connection was kept %llu ms", (unsigned long long)waited);
    close(fd);
    uvmlease_broker_stop(&b);
    ut_rmrf(parent);
}

/* ---- descriptor exhaustion ------------------------------------------------- */

/* uvmleased with a descriptor limit of nofile (soft = hard), stderr into
 * log; NULL-terminated extra args. */
static pid_t s_spawn_daemon(const char *dir, const char *log, rlim_t nofile)
{
    char bin[512];
    ut_build_path("uvmleased", bin, sizeof bin);
    pid_t pid = ut_fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        struct rlimit rl = {.rlim_cur = nofile, .rlim_max = nofile};
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            _exit(126);
        execl(bin, bin, "--runtime-dir", dir, "--socket-group", "users", "--log-level", "warn",
              (char *)NULL);
        _exit(127);
    }
    return pid;
}

static bool s_ping_once(const char *ep)
{
    void *s = ut_dealer(ep);
    ul_request q;
    ul_reply r;
    memset(&r, 0, sizeof r);
    ut_req(&q, UL_OP_PING);
    int rc = ut_call(s, &q, &r, 2000);
    ut_dealer_close(s);
    ul_reply_free(&r);
    return rc == 0 && r.err == 0;
}

/* A uvmleased of its own for one test: runtime directory under a parent
 * others may enter (the socket group's members connect), its log beside. */
typedef struct idaemon {
    char parent[256], dir[320], log[340], ep[400];
    pid_t pid;
} idaemon;

/* Start it; it may not be listening yet. */
static void s_daemon(idaemon *x, const char *tag, rlim_t nofile)
{
    ut_tmpdir(tag, x->parent, sizeof x->parent);
    chmod(x->parent, 0755);
    snprintf(x->dir, sizeof x->dir, "%s/rt", x->parent);
    snprintf(x->log, sizeof x->log, "%s/log", x->parent);
    snprintf(x->ep, sizeof x->ep, "ipc://%s/broker.sock", x->dir);
    x->pid = s_spawn_daemon(x->dir, x->log, nofile);
}

/* Stop it (SIGTERM, a clean exit) and remove its files. */
static void s_daemon_stop(idaemon *x)
{
    kill(x->pid, SIGTERM);
    cr_assert_eq(ut_wait_code(x->pid, 10000), 0);
    ut_rmrf(x->parent);
}

/* A burst child: n non-blocking connects as fast as the kernel takes them,
 * held until the flood child exits. */
static void s_burst(const char *ep, int n, ut_chan *done)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct sockaddr_un sa = s_sun(ep);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            close(fd);
    }
    ut_chan_put(done, 'B');
    pause();
    _exit(0);
}

/* In a child, as nobody: S_BURSTS processes burst-connect S_BURST_N each
 * (libzmq accepts them faster than the broker's thread can shut them down),
 * then n blocking connections, every other one with a handshake. Reports
 * 'F' then the counts; holds everything until go. */
#define S_BURSTS  6
#define S_BURST_N 1000
static void s_flood(const char *ep, int n, ut_chan *rep, ut_chan *go)
{
    gid_t users = s_gid("users");
    struct rlimit rl = {.rlim_cur = 4096, .rlim_max = 4096};
    if (!s_become_nobody(&users, 1) || setrlimit(RLIMIT_NOFILE, &rl) < 0)
        _exit(2);
    ut_chan done;
    ut_chan_open(&done);
    for (int k = 0; k < S_BURSTS; k++)
        if (fork() == 0)
            s_burst(ep, S_BURST_N, &done);
    for (int k = 0; k < S_BURSTS; k++)
        if (ut_chan_get(&done, 60000) != 'B')
            _exit(4);
    int opened = 0, served = 0;
    for (int i = 0; i < n; i++) {
        int fd = s_raw_connect(ep);
        if (fd < 0)
            continue;
        opened++;
        if (i % 2 == 0 && s_raw_handshake(fd) == 0)
            served++;
    }
    int counts[2] = {opened, served};
    ut_chan_put(rep, 'F');
    if (write(rep->fd[1], counts, sizeof counts) != sizeof counts)
        _exit(3);
    ut_chan_get(go, 60000);
    _exit(0);
}

/* The daemon listens: a connection is accepted (bound is not enough:
 * libzmq binds, then listens). */
static bool s_listening(void *ep)
{
    int fd = s_raw_connect(ep);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* Right after the start, before any client has completed a handshake,
 * connections over one uid's share are refused at accept, not left to the
 * handshake timeout (the monitor's events must wake the loop from the
 * first one on). */
Test(identity, connections_over_the_limit_refused_from_the_start, .timeout = 60)
{
    if (geteuid() != 0)
        cr_skip_test("the daemon's socket group needs root");
    idaemon x;
    s_daemon(&x, "limit0", 128); /* about 7 connections a uid */
    cr_assert(ut_wait_until(s_listening, x.ep, 15000), "the daemon did not listen");
    enum { N = 24 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = s_raw_connect(x.ep);
        cr_assert_geq(fds[i], 0);
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
    }
    /* Count the connections the daemon closes within 1 s: half of the 2 s
     * a silent connection is given for its handshake. */
    uint64_t t0 = ul_now_ms();
    int closed = 0;
    bool open[N];
    for (int i = 0; i < N; i++)
        open[i] = true;
    while (ul_now_ms() - t0 < 1000) {
        struct pollfd p[N];
        for (int i = 0; i < N; i++)
            p[i] = (struct pollfd){.fd = open[i] ? fds[i] : -1, .events = POLLIN};
        if (poll(p, N, 50) <= 0)
            continue;
        for (int i = 0; i < N; i++) {
            if (!open[i] || !p[i].revents)
                continue;
            char buf[256];
            ssize_t n;
            while ((n = read(fds[i], buf, sizeof buf)) > 0) {
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                open[i] = false;
                closed++;
            }
        }
    }
    for (int i = 0; i < N; i++)
        close(fds[i]);
    cr_log_info("%d of %d idle connections refused within 1 s of the start", closed, N);
    cr_assert_geq(closed, N / 2, "only %d of %d connections over the limit were refused", closed,
                  N);
    s_daemon_stop(&x);
}

static int s_try(const char *ep, const char *uvm);

static bool s_free_a(void *ep)
{
    return s_try(ep, UVM_A) == 0 && s_try(ep, UVM_B) == 0;
}

/* Try to take uvm from this (root) process: the status. */
static int s_try(const char *ep, const char *uvm)
{
    void *s = ut_dealer(ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    int rc = ut_acquire(s, uvm, true, "probe", 0, &r, NULL, NULL, 5000);
    if (rc == 0)
        ut_release(s, r.lease);
    ul_reply_free(&r);
    ut_dealer_close(s);
    return rc;
}

/* A restarted broker finds the same process in two records under two
 * uids: as the watched child of a root holder's lease (recorded with the
 * holder's uid) and as the holder, under its own uid, of a lease of its
 * own. Both leases come back: a process is the same by pid and start time,
 * and neither record may drop it. */
Test(identity, restore_keeps_a_watched_child_that_holds_its_own_lease, .timeout = 90)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to nobody");
    idaemon x;
    s_daemon(&x, "twouids", 1024);
    cr_assert(ut_ping_until(x.ep, 15000), "the daemon did not start");
    gid_t users = s_gid("users");
    ut_chan crep, hrep;
    ut_chan_open(&crep);
    ut_chan_open(&hrep);
    int cpid[2], life[2];
    cr_assert_eq(pipe(cpid), 0);
    /* Holder and child wait on life: when this test ends, failed or not,
     * they see its end and exit (the child outlives the holder). */
    cr_assert_eq(pipe(life), 0);
    pid_t h = ut_fork();
    if (h == 0) {
        close(life[1]);
        char byte;
        void *s = ut_dealer(x.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_A, true, "parent", 0, &r, NULL, NULL, 5000))
            _exit(10);
        uint64_t lease = r.lease;
        ul_reply_free(&r);
        pid_t c = fork();
        if (c == 0) {
            prctl(PR_SET_PDEATHSIG, 0);
            if (!s_become_nobody(&users, 1))
                _exit(20);
            void *cs = ut_dealer(x.ep);
            ul_reply cr;
            memset(&cr, 0, sizeof cr);
            if (ut_acquire(cs, UVM_B, true, "child", 0, &cr, NULL, NULL, 5000))
                _exit(21);
            ut_chan_put(&crep, 'C');
            _exit(read(life[0], &byte, 1) < 0 ? 1 : 0);
        }
        if (c < 0 || ut_chan_get(&crep, 30000) != 'C')
            _exit(11);
        ul_request q;
        ut_req(&q, UL_OP_WATCH_CHILD);
        q.lease = lease;
        q.pid = (uint32_t)c;
        memset(&r, 0, sizeof r);
        if (ut_call(s, &q, &r, 5000) != 0 || r.err != 0)
            _exit(12);
        if (write(cpid[1], &c, sizeof c) != sizeof c)
            _exit(13);
        ut_chan_put(&hrep, 'W');
        _exit(read(life[0], &byte, 1) < 0 ? 1 : 0);
    }
    close(life[0]);
    cr_assert_eq(ut_chan_get(&hrep, 30000), 'W', "holder setup failed");
    pid_t c = 0;
    cr_assert_eq(read(cpid[0], &c, sizeof c), (ssize_t)sizeof c);

    kill(x.pid, SIGKILL);
    cr_assert_eq(ut_wait_code(x.pid, 10000), 1000 + SIGKILL);
    x.pid = s_spawn_daemon(x.dir, x.log, 1024);
    cr_assert(ut_ping_until(x.ep, 15000), "the restarted daemon did not answer");
    /* The parent goes: its lease stays with the child it watches. */
    kill(h, SIGKILL);
    cr_assert_eq(ut_wait_code(h, 10000), 1000 + SIGKILL);
    cr_assert_eq(s_try(x.ep, UVM_B), UVMLEASE_EBUSY, "the child's own lease was not restored");
    cr_assert_eq(s_try(x.ep, UVM_A), UVMLEASE_EBUSY,
                 "the parent's lease was not kept for its watched child");
    kill(c, SIGKILL);
    cr_assert(ut_wait_until(s_free_a, x.ep, 10000), "the child's death freed nothing");
    s_daemon_stop(&x);
}

/* One uid opens more connections than the daemon has descriptors. The
 * daemon must stay up (libzmq 4.3.4 aborts on EMFILE in accept without the
 * guard), keep a holder's lease and connection working, and serve another
 * uid. */
Test(identity, descriptor_exhaustion_keeps_the_daemon_serving, .timeout = 160)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to nobody");
    idaemon x;
    s_daemon(&x, "nofile", 128);
    cr_assert(ut_ping_until(x.ep, 15000), "the daemon did not start");
    void *holder = ut_dealer(x.ep);
    ul_reply rep;
    memset(&rep, 0, sizeof rep);
    cr_assert_eq(ut_acquire(holder, UVM_A, true, "holder", 0, &rep, NULL, NULL, 5000), 0);
    uint64_t lease = rep.lease;
    ul_reply_free(&rep);

    ut_chan frep, fgo;
    ut_chan_open(&frep);
    ut_chan_open(&fgo);
    uint64_t t0 = ul_now_ms();
    pid_t f = ut_fork();
    if (f == 0)
        s_flood(x.ep, 600, &frep, &fgo);
    int counts[2] = {0, 0};
    int fl = ut_chan_get(&frep, 100000);
    cr_assert_eq(fl, 'F', "the flood did not finish (%d)", fl == 'F' ? 0 : ut_wait_code(f, 1000));
    cr_assert_eq(read(frep.fd[0], counts, sizeof counts), (ssize_t)sizeof counts);
    cr_log_info("flood: %d burst connects, then 600 connects: %d connected, %d handshakes "
                "accepted, %llu ms",
                S_BURSTS * S_BURST_N, counts[0], counts[1], (unsigned long long)(ul_now_ms() - t0));
    cr_assert_eq(waitpid(x.pid, NULL, WNOHANG), 0, "the daemon died during the flood (see %s)",
                 x.log);
    cr_assert(s_ping_once(x.ep), "another uid is not served while the flood holds its connections");
    cr_assert_eq(ut_release(holder, lease), 0, "the holder's connection no longer works");
    ut_chan_put(&fgo, 'G');
    cr_assert_eq(ut_wait_code(f, 30000), 0);
    cr_assert(s_ping_once(x.ep));
    cr_assert_eq(waitpid(x.pid, NULL, WNOHANG), 0, "the daemon died after the flood");
    ut_dealer_close(holder);
    s_daemon_stop(&x);
}
