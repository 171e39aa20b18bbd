// ctest-timeout: 240
/*
 * test_daemon.c — uvmleased as a separate process: flags, single instance,
 * stop without release, permissions, and hostile peers (with its memory
 * measured from /proc, so only in the non-sanitized build).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

TestSuite(daemon, .timeout = 120);

#define UVM_C "ffff2a9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm"

typedef struct daemon_proc {
    pid_t pid;
    char dir[256];
    char ep[400];
    char log[400];
} daemon_proc;

/* Start uvmleased with extra args; stderr into dir/log. */
static pid_t s_spawn(const char *dir, const char *log, char *const extra[])
{
    char bin[512];
    ut_build_path("uvmleased", bin, sizeof bin);
    char *argv[32] = {bin, "--runtime-dir", (char *)dir};
    int n = 3;
    for (int i = 0; extra && extra[i] && n < 30; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = ut_fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0)
            dup2(fd, 2);
        execv(bin, argv);
        _exit(127);
    }
    return pid;
}

static void s_daemon_start(daemon_proc *d, char *const extra[])
{
    ut_tmpdir("daemon", d->dir, sizeof d->dir);
    snprintf(d->ep, sizeof d->ep, "ipc://%s/broker.sock", d->dir);
    snprintf(d->log, sizeof d->log, "%s/log", d->dir);
    d->pid = s_spawn(d->dir, d->log, extra);
    cr_assert(ut_ping_until(d->ep, 10000), "uvmleased did not answer");
}

static void s_daemon_stop(daemon_proc *d)
{
    kill(d->pid, SIGTERM);
    int code = ut_wait_code(d->pid, 10000);
    cr_assert_eq(code, 0, "uvmleased exit %d", code);
    ut_rmrf(d->dir);
}

static bool s_file_has(const char *path, const char *needle)
{
    char buf[65536];
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

static int s_run_daemon(char *const args[], const char *out)
{
    char bin[512];
    ut_build_path("uvmleased", bin, sizeof bin);
    char *argv[16] = {bin};
    int n = 1;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = ut_fork();
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(bin, argv);
        _exit(127);
    }
    return ut_wait_code(pid, 10000);
}

Test(daemon, flags)
{
    char dir[256], out[300];
    ut_tmpdir("flags", dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    cr_assert_eq(s_run_daemon((char *[]){"--version", NULL}, out), 0);
    cr_assert(s_file_has(out, "uvmleased "));
    cr_assert_eq(s_run_daemon((char *[]){"--help", NULL}, out), 0);
    cr_assert(s_file_has(out, "--quarantine-ms"));
    cr_assert_eq(s_run_daemon((char *[]){"--bogus", NULL}, out), 2);
    cr_assert(s_file_has(out, "--bogus"));
    cr_assert_eq(s_run_daemon((char *[]){"--serialize", "sometimes", NULL}, out), 2);
    cr_assert(s_file_has(out, "sometimes"));
    cr_assert_eq(s_run_daemon((char *[]){"--quarantine-ms", "-5", NULL}, out), 2);
    cr_assert_eq(s_run_daemon((char *[]){"--max-active", "12x", NULL}, out), 2);
    cr_assert_eq(s_run_daemon((char *[]){"--endpoint", "tcp://127.0.0.1:1", NULL}, out), 2);
    cr_assert(s_file_has(out, "ipc://"));
    cr_assert_eq(s_run_daemon((char *[]){"--log-level", "loud", NULL}, out), 2);
    ut_rmrf(dir);
}

Test(daemon, second_instance_refused)
{
    daemon_proc d;
    s_daemon_start(&d, NULL);
    char log2[400];
    snprintf(log2, sizeof log2, "%s/log2", d.dir);
    pid_t p2 = s_spawn(d.dir, log2, NULL);
    int code = ut_wait_code(p2, 10000);
    cr_assert_eq(code, 1, "second uvmleased exited %d", code);
    char want[64];
    snprintf(want, sizeof want, "pid %d", (int)d.pid);
    cr_assert(s_file_has(log2, want), "second instance does not name the first's pid");
    cr_assert(ut_ping_until(d.ep, 2000), "first instance stopped serving");
    s_daemon_stop(&d);
}

Test(daemon, stale_socket_is_cleaned_up)
{
    daemon_proc d;
    s_daemon_start(&d, NULL);
    kill(d.pid, SIGKILL);
    cr_assert_eq(ut_wait_code(d.pid, 10000), 1000 + SIGKILL);
    struct stat st;
    cr_assert_eq(stat(d.ep + 6, &st), 0, "expected a stale socket after kill -9");
    d.pid = s_spawn(d.dir, d.log, NULL);
    cr_assert(ut_ping_until(d.ep, 10000), "restart over a stale socket failed");
    s_daemon_stop(&d);
}

static void s_put_q(void *ctx)
{
    ut_chan_put(ctx, 'Q');
}

Test(daemon, sigterm_stops_without_handing_on)
{
    daemon_proc d;
    s_daemon_start(&d, NULL);
    ut_chan held, go;
    ut_chan_open(&held);
    ut_chan_open(&go);
    pid_t h = ut_fork();
    if (h == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "h", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        ut_chan_put(&held, 'G');
        ut_chan_get(&go, 20000);
        _exit(0);
    }
    cr_assert_eq(ut_chan_get(&held, 10000), 'G');
    ut_chan queued;
    ut_chan_open(&queued);
    pid_t w = ut_fork();
    if (w == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        int rc = ut_acquire(s, UVM_C, true, "w", UL_TIMEOUT_FOREVER, &r, s_put_q, &queued, 3000);
        /* -1: nothing arrived after "queued" — in particular no grant. */
        _exit(rc == -1 ? 0 : 10);
    }
    cr_assert_eq(ut_chan_get(&queued, 10000), 'Q');
    kill(d.pid, SIGTERM);
    cr_assert_eq(ut_wait_code(d.pid, 10000), 0);
    cr_assert(s_file_has(d.log, "msg=\"broker stopped\""));
    cr_assert(s_file_has(d.log, "holders=1"));
    cr_assert_eq(ut_wait_code(w, 10000), 0, "a waiter was granted because the broker stopped");
    ut_chan_put(&go, 'x');
    ut_wait(h, 5000);
    ut_rmrf(d.dir);
}

/* In a child: drop to nobody (with the given supplementary groups) and
 * connect(2) to the socket. Exit 0 if connected, 1 if EACCES, 2 other. */
static int s_connect_as_nobody(const char *path, const gid_t *groups, int ngroups)
{
    struct passwd *pw = getpwnam("nobody");
    if (!pw)
        return 3;
    if (setgroups((size_t)ngroups, groups) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0)
        return 4;
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return 0;
    return errno == EACCES ? 1 : 2;
}

Test(daemon, only_the_socket_group_may_connect)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch to nobody");
    struct group *gr = getgrnam("users");
    cr_assert(gr, "group 'users' missing");
    gid_t users = gr->gr_gid;
    char parent[256], dir[300], log[400], ep[420];
    ut_tmpdir("perm", parent, sizeof parent);
    chmod(parent, 0755);
    snprintf(dir, sizeof dir, "%s/rt", parent);
    snprintf(log, sizeof log, "%s/log", parent);
    snprintf(ep, sizeof ep, "ipc://%s/broker.sock", dir);
    pid_t d = s_spawn(dir, log, (char *[]){"--socket-group", "users", NULL});
    cr_assert(ut_ping_until(ep, 10000));
    struct stat st;
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0750, "dir mode %o", st.st_mode & 0777);
    cr_assert_eq(st.st_gid, users);
    cr_assert_eq(stat(ep + 6, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0660, "socket mode %o", st.st_mode & 0777);
    cr_assert_eq(st.st_gid, users);

    pid_t out = ut_fork();
    if (out == 0)
        _exit(s_connect_as_nobody(ep + 6, NULL, 0));
    cr_assert_eq(ut_wait_code(out, 5000), 1, "nobody outside the group could connect");
    pid_t in = ut_fork();
    if (in == 0)
        _exit(s_connect_as_nobody(ep + 6, &users, 1));
    cr_assert_eq(ut_wait_code(in, 5000), 0, "a member of the socket group could not connect");
    kill(d, SIGTERM);
    cr_assert_eq(ut_wait_code(d, 10000), 0);
    ut_rmrf(parent);
}

/* ---- hostile peers ------------------------------------------------------ */

static void s_check_memory(pid_t pid, const char *after)
{
    long rss = ut_status_kb(pid, "VmRSS"), peak = ut_status_kb(pid, "VmPeak");
    fprintf(stderr, "after %-28s VmRSS %6ld kB  VmPeak %8ld kB\n", after, rss, peak);
    cr_assert(rss > 0 && rss < 64 * 1024, "RSS %ld kB after %s", rss, after);
    cr_assert(peak > 0 && peak < 2L * 1024 * 1024, "VmPeak %ld kB after %s", peak, after);
}

static void s_still_serves(const daemon_proc *d, const char *after)
{
    cr_assert(ut_ping_until(d->ep, 5000), "broker stopped serving after %s", after);
    cr_assert_eq(kill(d->pid, 0), 0, "broker died after %s", after);
    s_check_memory(d->pid, after);
}

/* Send raw bytes as one frame; return the error code of the reply, or -1
 * when nothing came back within timeout_ms. */
static int s_raw(void *s, const void *bytes, size_t len, int timeout_ms)
{
    if (zmq_send(s, bytes, len, 0) < 0)
        return -2;
    ul_reply r;
    memset(&r, 0, sizeof r);
    int rc = ut_recv(s, &r, timeout_ms);
    if (rc)
        return -1;
    int e = (int)r.err;
    ul_reply_free(&r);
    return e;
}

Test(daemon, hostile_peers)
{
#ifdef UL_SANITIZED
    cr_skip_test("memory figures are meaningless under ASan (shadow memory, quarantine)");
#endif
    daemon_proc d;
    s_daemon_start(&d, (char *[]){"--log-level", "error", NULL});
    s_check_memory(d.pid, "start");
    void *s = ut_dealer(d.ep);

    static const struct {
        const char *name;
        const char *bytes;
        size_t len;
    } bombs[] = {
        {"array32 16M", "\xdd\x00\xff\xff\xff", 5}, {"array32 268M", "\xdd\x0f\xff\xff\xff", 5},
        {"array32 4G", "\xdd\xff\xff\xff\xff", 5},  {"map32 16M", "\xdf\x00\xff\xff\xff", 5},
        {"str32 4GiB", "\xdb\xff\xff\xff\xff", 5},
    };
    for (size_t i = 0; i < sizeof bombs / sizeof bombs[0]; i++) {
        int e = s_raw(s, bombs[i].bytes, bombs[i].len, 5000);
        cr_assert(e > 0, "%s: no error reply (%d)", bombs[i].name, e);
    }
    unsigned char nested[31 * 5];
    for (int i = 0; i < 31; i++)
        memcpy(nested + i * 5, "\xdd\x00\x00\x00\x01", 5);
    cr_assert(s_raw(s, nested, sizeof nested, 5000) > 0);
    s_still_serves(&d, "msgpack bombs");

    /* 10 MB frame: above ZMQ_MAXMSGSIZE, libzmq drops the connection. */
    size_t big = 10u << 20;
    char *buf = calloc(1, big);
    cr_assert(buf);
    memset(buf, 0x91, big);
    zmq_send(s, buf, big, 0);
    free(buf);
    s_still_serves(&d, "a 10 MB frame");
    ut_dealer_close(s);

    /* 1,000 frames in one message. */
    s = ut_dealer(d.ep);
    for (int i = 0; i < 999; i++)
        zmq_send(s, "\x80", 1, ZMQ_SNDMORE);
    zmq_send(s, "\x80", 1, 0);
    ul_reply r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(ut_recv(s, &r, 5000), 0);
    cr_assert_eq(r.err, UVMLEASE_EMULTIPART);
    ul_reply_free(&r);
    s_still_serves(&d, "a 1000-frame message");

    /* Garbage. */
    unsigned seed = 12345;
    char junk[4096];
    for (int i = 0; i < 2000; i++) {
        size_t n = (size_t)(rand_r(&seed) % sizeof junk);
        for (size_t k = 0; k < n; k++)
            junk[k] = (char)rand_r(&seed);
        zmq_send(s, junk, n, 0);
    }
    s_still_serves(&d, "2000 garbage messages");
    ut_dealer_close(s);

    /* A flood of 10,000 requests from one peer that does not read replies,
     * then 10,000 try-acquires of distinct UVMs (bounded per process). */
    s = ut_dealer(d.ep);
    ul_request q;
    for (int i = 0; i < 10000; i++) {
        ut_req(&q, UL_OP_PING);
        ut_send(s, &q);
    }
    s_still_serves(&d, "10,000 unread pings");
    ut_dealer_close(s);

    pid_t flooder = ut_fork();
    if (flooder == 0) {
        void *fs = ut_dealer(d.ep);
        int granted = 0, limited = 0;
        for (int i = 0; i < 10000; i++) {
            ul_request a;
            ut_req(&a, UL_OP_ACQUIRE);
            snprintf(a.uvm, sizeof a.uvm, "flood-%05d@vm", i);
            a.confidential = true;
            a.timeout_ms = 0;
            ul_reply ar;
            memset(&ar, 0, sizeof ar);
            if (ut_call(fs, &a, &ar, 5000))
                _exit(10);
            if (ar.err == 0)
                granted++;
            else if (ar.err == UVMLEASE_ERESOURCE)
                limited++;
            ul_reply_free(&ar);
        }
        fprintf(stderr, "flood: granted %d, refused by the per-process limit %d\n", granted,
                limited);
        _exit(granted == 1024 && limited == 10000 - 1024 ? 0 : 11);
    }
    cr_assert_eq(ut_wait_code(flooder, 60000), 0);
    s_still_serves(&d, "10,000 acquires from one peer");
    s_daemon_stop(&d);
}

/* A broker in its own pid namespace cannot see a client outside it: the
 * kernel reports the peer's pid as 0, and such a peer is refused. */
Test(daemon, peer_from_another_pid_namespace_refused)
{
    if (geteuid() != 0 || access("/usr/bin/unshare", X_OK) != 0)
        cr_skip_test("needs root and unshare(1) to make a pid namespace");
    char dir[256], log[300], ep[300], bin[512];
    ut_tmpdir("pidns", dir, sizeof dir);
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(ep, sizeof ep, "ipc://%s/broker.sock", dir);
    ut_build_path("uvmleased", bin, sizeof bin);
    pid_t d = ut_fork();
    if (d == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 2);
        execl("/usr/bin/unshare", "unshare", "--pid", "--fork", "--kill-child", bin,
              "--runtime-dir", dir, (char *)NULL);
        _exit(127);
    }
    /* Ping until a reply arrives: it must be the refusal. */
    int got = -1;
    uint64_t deadline = ul_now_ms() + 10000;
    while (got < 0 && ul_now_ms() < deadline) {
        struct stat st;
        if (stat(ep + 6, &st) == 0) {
            void *s = ut_dealer(ep);
            ul_request q;
            ul_reply r;
            memset(&r, 0, sizeof r);
            ut_req(&q, UL_OP_PING);
            if (ut_call(s, &q, &r, 500) == 0)
                got = (int)r.err;
            ut_dealer_close(s);
        }
        if (got < 0)
            usleep(2000);
    }
    cr_assert_eq(got, UVMLEASE_EPEER, "expected peer-refused, got %d", got);
    kill(d, SIGTERM);
    ut_wait(d, 10000);
    ut_rmrf(dir);
}

/* kill -9 of the broker loses nothing that matters: a holder that still
 * runs keeps its lease in the next instance (others are refused, naming it),
 * its release works there, fences keep going up, and a lease whose holder
 * died while no broker ran is not restored. */
Test(daemon, restart_keeps_live_leases)
{
    daemon_proc d;
    s_daemon_start(&d, NULL);
    ut_chan held, go, gone_held;
    ut_chan_open(&held);
    ut_chan_open(&go);
    ut_chan_open(&gone_held);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t h = ut_fork();
    if (h == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "survivor", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        uint64_t lease = r.lease, fence = r.fence;
        if (write(fds[1], &fence, sizeof fence) != sizeof fence)
            _exit(11);
        ut_chan_put(&held, 'G');
        if (ut_chan_get(&go, 30000) < 0)
            _exit(12);
        /* A new socket: the old connection went with the old broker. */
        ut_dealer_close(s);
        s = ut_dealer(d.ep);
        _exit(ut_release(s, lease) == 0 ? 0 : 13);
    }
    cr_assert_eq(ut_chan_get(&held, 30000), 'G');
    uint64_t fence1 = 0;
    cr_assert_eq(read(fds[0], &fence1, sizeof fence1), (ssize_t)sizeof fence1);
    /* A second holder, on another UVM, that dies while no broker runs. */
    pid_t g = ut_fork();
    if (g == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, "gone-while-down@vm", true, "gone", UL_TIMEOUT_FOREVER, &r, NULL, NULL,
                       5000))
            _exit(10);
        ut_chan_put(&gone_held, 'G');
        pause();
        _exit(0);
    }
    cr_assert_eq(ut_chan_get(&gone_held, 30000), 'G');

    kill(d.pid, SIGKILL);
    cr_assert_eq(ut_wait_code(d.pid, 10000), 1000 + SIGKILL);
    kill(g, SIGKILL);
    cr_assert_eq(ut_wait_code(g, 10000), 1000 + SIGKILL);
    d.pid = s_spawn(d.dir, d.log, NULL);
    cr_assert(ut_ping_until(d.ep, 10000), "restarted uvmleased did not answer");

    pid_t t = ut_fork();
    if (t == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "intruder", 0, &r, NULL, NULL, 5000) != UVMLEASE_EBUSY)
            _exit(10);
        if (!r.has_holder || r.holder.pid != (uint32_t)h || strcmp(r.holder.label, "survivor"))
            _exit(11);
        ul_reply_free(&r);
        /* The dead holder's UVM is free again. */
        if (ut_acquire(s, "gone-while-down@vm", true, "next", 0, &r, NULL, NULL, 5000) != 0)
            _exit(12);
        ut_release(s, r.lease);
        _exit(0);
    }
    cr_assert_eq(ut_wait_code(t, 10000), 0, "the restarted broker lost or invented a lease");
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(h, 10000), 0, "the holder could not release after the restart");
    pid_t n = ut_fork();
    if (n == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "next", 0, &r, NULL, NULL, 5000))
            _exit(10);
        _exit(r.fence > fence1 ? 0 : 11);
    }
    cr_assert_eq(ut_wait_code(n, 10000), 0, "not free after release, or the fence went back");
    cr_assert(s_file_has(d.log, "restored=1"), "no journal summary in the log");
    s_daemon_stop(&d);
}

/* A holder is the same process after a restart when its pid and start
 * time are: a shim that drops root after taking the lease still holds it
 * (releasing it would let another bring-up overlap its own). */
Test(daemon, restart_keeps_a_holder_that_changed_uid)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to switch the holder to nobody");
    daemon_proc d;
    s_daemon_start(&d, NULL);
    ut_chan held, go;
    ut_chan_open(&held);
    ut_chan_open(&go);
    pid_t h = ut_fork();
    if (h == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "dropped-root", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        if (setresgid(65534, 65534, 65534) != 0 || setresuid(65534, 65534, 65534) != 0)
            _exit(11);
        ut_chan_put(&held, 'G');
        ut_chan_get(&go, 30000);
        _exit(0);
    }
    cr_assert_eq(ut_chan_get(&held, 30000), 'G');
    kill(d.pid, SIGKILL);
    cr_assert_eq(ut_wait_code(d.pid, 10000), 1000 + SIGKILL);
    d.pid = s_spawn(d.dir, d.log, NULL);
    cr_assert(ut_ping_until(d.ep, 10000), "restarted uvmleased did not answer");
    pid_t t = ut_fork();
    if (t == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "intruder", 0, &r, NULL, NULL, 5000) != UVMLEASE_EBUSY)
            _exit(10);
        _exit(r.has_holder && r.holder.pid == (uint32_t)h ? 0 : 11);
    }
    cr_assert_eq(ut_wait_code(t, 10000), 0, "the restarted broker dropped a live holder's lease");
    ut_chan_put(&go, 'x');
    cr_assert_eq(ut_wait_code(h, 10000), 0);
    s_daemon_stop(&d);
}

/* A holder that dies while no broker runs is an abnormal release: with a
 * quarantine configured, the restarted broker keeps its UVM locked. */
Test(daemon, holder_dead_during_restart_is_quarantined)
{
    daemon_proc d;
    s_daemon_start(&d, (char *[]){"--quarantine-ms", "60000", NULL});
    ut_chan held;
    ut_chan_open(&held);
    pid_t g = ut_fork();
    if (g == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "dies", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        ut_chan_put(&held, 'G');
        pause();
        _exit(0);
    }
    cr_assert_eq(ut_chan_get(&held, 30000), 'G');
    kill(d.pid, SIGKILL);
    cr_assert_eq(ut_wait_code(d.pid, 10000), 1000 + SIGKILL);
    kill(g, SIGKILL);
    cr_assert_eq(ut_wait_code(g, 10000), 1000 + SIGKILL);
    d.pid = s_spawn(d.dir, d.log, (char *[]){"--quarantine-ms", "60000", NULL});
    cr_assert(ut_ping_until(d.ep, 10000), "restarted uvmleased did not answer");
    pid_t t = ut_fork();
    if (t == 0) {
        void *s = ut_dealer(d.ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "next", 0, &r, NULL, NULL, 5000) != UVMLEASE_EBUSY)
            _exit(10);
        ul_request q;
        ut_req(&q, UL_OP_LIST);
        if (ut_call(s, &q, &r, 5000) || r.err || r.n_uvms != 1 || r.uvms[0].n_holders != 0 ||
            r.uvms[0].quarantine_ms_left == 0)
            _exit(11);
        _exit(0);
    }
    cr_assert_eq(ut_wait_code(t, 10000), 0, "the dead holder's UVM was not quarantined");
    s_daemon_stop(&d);
}

/* ---- a real pid reuse across a restart --------------------------------- */

static bool s_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text);
}

/* Runs as pid 1 of a private pid namespace (with its own /proc), so the
 * next pid can be chosen through ns_last_pid. Exit codes: 0 ok, 77 the
 * namespace cannot pick pids, 20+ a step failed (see below). */
static int s_pid_reuse_scenario(const char *dir)
{
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        return 77;
    char ep[400], log[400];
    snprintf(ep, sizeof ep, "ipc://%s/broker.sock", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    pid_t d = s_spawn(dir, log, NULL);
    if (!ut_ping_until(ep, 10000))
        return 20;
    ut_chan held;
    ut_chan_open(&held);
    pid_t h = ut_fork();
    if (h == 0) {
        void *s = ut_dealer(ep);
        ul_reply r;
        memset(&r, 0, sizeof r);
        if (ut_acquire(s, UVM_C, true, "original", UL_TIMEOUT_FOREVER, &r, NULL, NULL, 5000))
            _exit(10);
        ut_chan_put(&held, 'G');
        pause();
        _exit(0);
    }
    if (ut_chan_get(&held, 10000) != 'G')
        return 21;
    uint64_t h_start = ul_proc_start_time(h);
    if (h_start == 0)
        return 22;
    kill(d, SIGKILL);
    if (ut_wait_code(d, 10000) != 1000 + SIGKILL)
        return 23;
    kill(h, SIGKILL);
    if (ut_wait_code(h, 10000) != 1000 + SIGKILL)
        return 24;

    /* The impostor: pid h again, started later. Start times count clock
     * ticks, so one forked in h's tick would look the same: try again
     * until the tick has moved on. */
    pid_t imp = -1;
    for (int tries = 0; tries < 10000; tries++) {
        char last[32];
        snprintf(last, sizeof last, "%d", (int)h - 1);
        if (!s_write_file("/proc/sys/kernel/ns_last_pid", last))
            return 77;
        imp = fork();
        if (imp == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;)
                pause();
        }
        if (imp != h) {
            kill(imp, SIGKILL);
            waitpid(imp, NULL, 0);
            return 25;
        }
        uint64_t st = ul_proc_start_time(imp);
        if (st != 0 && st != h_start)
            break;
        kill(imp, SIGKILL);
        waitpid(imp, NULL, 0);
        imp = -1;
    }
    if (imp < 0)
        return 26;

    d = s_spawn(dir, log, NULL);
    if (!ut_ping_until(ep, 10000))
        return 27;
    /* The journalled holder's pid runs, but it is another process: the
     * lease is not restored, so the UVM is free. */
    void *s = ut_dealer(ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    int rc = ut_acquire(s, UVM_C, true, "next", 0, &r, NULL, NULL, 5000);
    if (rc != 0)
        return 28;
    if (ut_release(s, r.lease) != 0)
        return 29;
    ut_dealer_close(s);
    if (!s_file_has(log, "holder_gone=1"))
        return 30;
    kill(imp, SIGKILL);
    waitpid(imp, NULL, 0);
    kill(d, SIGTERM);
    return ut_wait_code(d, 10000) == 0 ? 0 : 31;
}

/* A lease whose holder's pid is alive at restart but belongs to another
 * process (other start time) is not restored. The pid is really reused:
 * the test runs in a private pid namespace where the next pid can be set. */
Test(daemon, restart_ignores_a_reused_holder_pid)
{
    char dir[256];
    ut_tmpdir("pidreuse", dir, sizeof dir);
    uid_t uid = geteuid();
    gid_t gid = getegid();
    pid_t mid = ut_fork();
    if (mid == 0) {
        int flags = CLONE_NEWPID | CLONE_NEWNS | (uid != 0 ? CLONE_NEWUSER : 0);
        if (unshare(flags) != 0)
            _exit(77);
        if (uid != 0) {
            char map[64];
            snprintf(map, sizeof map, "0 %u 1", (unsigned)uid);
            if (!s_write_file("/proc/self/setgroups", "deny") ||
                !s_write_file("/proc/self/uid_map", map))
                _exit(77);
            snprintf(map, sizeof map, "0 %u 1", (unsigned)gid);
            if (!s_write_file("/proc/self/gid_map", map))
                _exit(77);
        }
        pid_t init = fork(); /* pid 1 in the new namespace */
        if (init == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            _exit(s_pid_reuse_scenario(dir));
        }
        if (init < 0)
            _exit(77);
        int st;
        while (waitpid(init, &st, 0) < 0 && errno == EINTR)
            ;
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 100);
    }
    int code = ut_wait_code(mid, 60000);
    ut_rmrf(dir);
    if (code == 77)
        cr_skip_test("no private pid namespace with a settable next pid here");
    cr_assert_eq(code, 0,
                 "step %d failed (28: the lease was restored to the process that reused the "
                 "holder's pid)",
                 code);
}
