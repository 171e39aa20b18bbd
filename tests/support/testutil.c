/*
 * testutil.c — see testutil.h.
 */
#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "uvmlease_broker.h"
#include "ul_sys.h"

/* Criterion's runner keeps a small allocation for the life of a parallel
 * (--jobs) run: the framework's leak, not ours. Read by LeakSanitizer in
 * the sanitizer build; an unused symbol otherwise. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libcriterion.so\n";
}

void ut_tmpdir(const char *tag, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "/tmp/ul-test-%s-XXXXXX", tag);
    if (n < 0 || (size_t)n >= outsz)
        cr_assert_fail("tmpdir name too long");
    if (!mkdtemp(out))
        cr_assert_fail("mkdtemp: %s", strerror(errno));
}

static int s_rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 ? 0 : 0;
}

void ut_rmrf(const char *path)
{
    if (path && *path)
        nftw(path, s_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static char s_settle_ep[512]; /* the in-process broker, while one runs */

pid_t ut_fork(void)
{
    /* See ut_settle(): fork while the broker's threads are idle. */
    if (s_settle_ep[0])
        ut_settle(s_settle_ep);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        cr_assert_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        if (!getenv("UL_TEST_KEEP_CHILDREN"))
            prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
    }
    return pid;
}

int ut_wait(pid_t pid, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0 && errno != EINTR)
            return -1;
        if (ul_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

int ut_wait_code(pid_t pid, int timeout_ms)
{
    int st = ut_wait(pid, timeout_ms);
    if (st == -1)
        return -1;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 1000 + WTERMSIG(st);
    return -1;
}

bool ut_wait_until(bool (*pred)(void *ctx), void *ctx, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (pred(ctx))
            return true;
        if (ul_now_ms() >= deadline)
            return false;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
}

long ut_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t flen = strlen(field);
    long v = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
            v = strtol(line + flen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

static void s_quiet_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)ctx;
    (void)level;
    (void)line;
}

uvmlease_broker *ut_broker_start(const uvmlease_broker_config *cfg, char *dir)
{
    uvmlease_broker_config c;
    if (cfg)
        c = *cfg;
    else
        uvmlease_broker_config_init(&c);
    ut_tmpdir("broker", dir, 256);
    c.runtime_dir = dir;
    if (!getenv("UL_TEST_VERBOSE") && !c.log_sink)
        c.log_sink = s_quiet_sink;
    else if (getenv("UL_TEST_VERBOSE") && strcmp(getenv("UL_TEST_VERBOSE"), "debug") == 0)
        c.log_level = UL_LOG_DEBUG;
    uvmlease_broker *b = NULL;
    char err[256] = "";
    int rc = uvmlease_broker_start(&c, &b, NULL, err, sizeof err);
    if (rc != 0)
        cr_assert_fail("broker start failed: %d %s", rc, err);
    ut_settle(uvmlease_broker_endpoint(b));
    return b;
}

/*
 * One ping round trip on a private context, torn down afterwards. Under
 * ASan (LLVM 14), a child forked while another thread of this process is
 * inside the sanitizer's allocator or thread bookkeeping can inherit its
 * lock taken, and the threads the child then starts (ZeroMQ's) never run.
 * Right after a round trip the broker's threads are started and idle, so
 * ut_fork() settles first while an in-process broker runs. This narrows the
 * window; it cannot close it (see deploy/test.sh).
 */
void ut_settle(const char *endpoint)
{
    if (endpoint != s_settle_ep)
        snprintf(s_settle_ep, sizeof s_settle_ep, "%s", endpoint);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(s, endpoint);
    ul_request q;
    ul_reply r;
    memset(&r, 0, sizeof r);
    ut_req(&q, UL_OP_PING);
    int rc = ut_call(s, &q, &r, 10000);
    ul_reply_free(&r);
    zmq_close(s);
    zmq_ctx_term(ctx);
    if (rc != 0)
        cr_assert_fail("the broker at %s does not answer a ping", endpoint);
}

void ut_broker_stop(uvmlease_broker **b, const char *dir)
{
    s_settle_ep[0] = '\0';
    uvmlease_broker_stop(b);
    ut_rmrf(dir);
}

void ut_build_path(const char *rel, char *out, size_t outsz)
{
    const char *bd = getenv("UL_BUILD_DIR");
    snprintf(out, outsz, "%s/%s", bd ? bd : ".", rel);
}

/* ---- raw protocol client ------------------------------------------------ */

#include <poll.h>
#include <zmq.h>

static void *s_zctx;
static pid_t s_zctx_pid;

void *ut_dealer(const char *endpoint)
{
    /* A ZeroMQ context must not cross fork(): one per process. */
    if (!s_zctx || s_zctx_pid != getpid()) {
        s_zctx = zmq_ctx_new();
        s_zctx_pid = getpid();
    }
    void *s = zmq_socket(s_zctx, ZMQ_DEALER);
    int linger = 0;
    if (!s || zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) < 0 ||
        zmq_connect(s, endpoint) < 0)
        cr_assert_fail("dealer: %s", zmq_strerror(zmq_errno()));
    return s;
}

void ut_dealer_close(void *sock)
{
    zmq_close(sock);
}

void ut_req(ul_request *r, ul_op op)
{
    static uint64_t next_rid;
    memset(r, 0, sizeof *r);
    r->version = UL_PROTO_VERSION;
    r->op = op;
    r->rid = ++next_rid + ((uint64_t)getpid() << 32);
    r->timeout_ms = UL_TIMEOUT_FOREVER;
}

int ut_send(void *sock, const ul_request *r)
{
    ul_buf b = {0};
    int rc = ul_request_encode(r, &b);
    if (rc == 0 && zmq_send(sock, b.data, b.len, 0) < 0)
        rc = UVMLEASE_ESYSTEM;
    ul_buf_free(&b);
    return rc;
}

int ut_recv(void *sock, ul_reply *rep, int timeout_ms)
{
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return -1;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    int rc = ul_reply_decode(zmq_msg_data(&m), zmq_msg_size(&m), rep);
    zmq_msg_close(&m);
    return rc;
}

int ut_call(void *sock, const ul_request *r, ul_reply *rep, int timeout_ms)
{
    int rc = ut_send(sock, r);
    if (rc)
        return rc;
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = ul_now_ms();
        if (now >= deadline)
            return -1;
        rc = ut_recv(sock, rep, (int)(deadline - now));
        if (rc)
            return rc;
        if (rep->kind == UL_MSG_REPLY && rep->rid == r->rid)
            return 0;
        ul_reply_free(rep);
    }
}

int ut_acquire(void *sock, const char *uvm, bool conf, const char *label, int64_t timeout_ms,
               ul_reply *rep, void (*on_queued)(void *), void *ctx, int wait_ms)
{
    ul_request r;
    ut_req(&r, UL_OP_ACQUIRE);
    snprintf(r.uvm, sizeof r.uvm, "%s", uvm);
    snprintf(r.label, sizeof r.label, "%s", label ? label : "");
    r.confidential = conf;
    r.timeout_ms = timeout_ms;
    int rc = ut_call(sock, &r, rep, wait_ms);
    if (rc)
        return rc;
    if (rep->err || !rep->queued)
        return (int)rep->err;
    if (on_queued)
        on_queued(ctx);
    uint64_t deadline = ul_now_ms() + (uint64_t)wait_ms;
    for (;;) {
        ul_reply_free(rep);
        uint64_t now = ul_now_ms();
        if (now >= deadline)
            return -1;
        rc = ut_recv(sock, rep, (int)(deadline - now));
        if (rc)
            return rc;
        if ((rep->kind == UL_MSG_GRANT || rep->kind == UL_MSG_ACQUIRE_FAILED) && rep->rid == r.rid)
            return rep->kind == UL_MSG_GRANT ? 0 : (int)rep->err;
    }
}

int ut_release(void *sock, uint64_t lease)
{
    ul_request r;
    ul_reply rep;
    ut_req(&r, UL_OP_RELEASE);
    r.lease = lease;
    memset(&rep, 0, sizeof rep);
    int rc = ut_call(sock, &r, &rep, 5000);
    if (rc == 0)
        rc = (int)rep.err;
    ul_reply_free(&rep);
    return rc;
}

void ut_chan_open(ut_chan *c)
{
    if (pipe2(c->fd, O_CLOEXEC) < 0)
        cr_assert_fail("pipe: %s", strerror(errno));
}

void ut_chan_put(ut_chan *c, char v)
{
    if (write(c->fd[1], &v, 1) != 1)
        _exit(98);
}

int ut_chan_get(ut_chan *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->fd[0], .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    char v;
    return read(c->fd[0], &v, 1) == 1 ? (unsigned char)v : -1;
}

/* ---- golden vectors ------------------------------------------------------ */

char *ut_protocol_md(void)
{
    char path[4096];
    const char *src = getenv("UL_SOURCE_DIR");
    if (src && *src) {
        snprintf(path, sizeof path, "%s/common/PROTOCOL.md", src);
    } else {
        /* Run by hand: find the document from this source file. */
        snprintf(path, sizeof path, "%s", __FILE__);
        char *slash = strrchr(path, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(path, ".");
        strncat(path, "/../../common/PROTOCOL.md", sizeof path - strlen(path) - 1);
    }
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s (set UL_SOURCE_DIR)", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long sz = ftell(f);
    cr_assert_gt(sz, 0);
    rewind(f);
    char *text = malloc((size_t)sz + 1);
    cr_assert_not_null(text);
    cr_assert_eq(fread(text, 1, (size_t)sz, f), (size_t)sz);
    text[sz] = '\0';
    fclose(f);
    return text;
}

static int s_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t ut_golden_parse(char *text, ut_golden *out, size_t max)
{
    size_t n = 0;
    char *save = NULL;
    ut_golden *cur = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (!cur) {
            if (strncmp(line, "```golden ", 10) != 0)
                continue;
            cr_assert_lt(n, max, "too many golden vectors");
            cur = &out[n++];
            memset(cur, 0, sizeof *cur);
            char *nm = strstr(line, "name="), *kd = strstr(line, "kind=");
            cr_assert(nm && kd, "golden block without name/kind: %s", line);
            cr_assert_eq(sscanf(nm, "name=%63s", cur->name), 1);
            cr_assert_eq(sscanf(kd, "kind=%15s", cur->kind), 1);
            cur->bytes = malloc(UL_MAX_REPLY);
            cr_assert_not_null(cur->bytes);
            continue;
        }
        if (strncmp(line, "```", 3) == 0) {
            cur = NULL;
            continue;
        }
        for (const char *p = line; *p && *p != '#'; p++) {
            if (*p == ' ' || *p == '\t' || *p == '\r')
                continue;
            int hi = s_hexval(p[0]), lo = s_hexval(p[1]);
            cr_assert(hi >= 0 && lo >= 0, "%s: bad hex near '%s'", cur->name, p);
            cr_assert_lt(cur->len, (size_t)UL_MAX_REPLY);
            cur->bytes[cur->len++] = (unsigned char)(hi << 4 | lo);
            p++;
        }
    }
    cr_assert_null(cur, "unterminated golden block");
    return n;
}

const ut_golden *ut_golden_find(const ut_golden *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return &v[i];
    return NULL;
}

void ut_golden_free(ut_golden *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].bytes);
}

bool ut_ping_until(const char *ep, int timeout_ms)
{
    uint64_t deadline = ul_now_ms() + (uint64_t)timeout_ms;
    while (ul_now_ms() < deadline) {
        struct stat st;
        if (stat(ep + 6, &st) == 0) {
            void *s = ut_dealer(ep);
            ul_request q;
            ul_reply r;
            memset(&r, 0, sizeof r);
            ut_req(&q, UL_OP_PING);
            int rc = ut_call(s, &q, &r, 200);
            ut_dealer_close(s);
            if (rc == 0 && r.err == 0)
                return true;
        }
        /* Bounded poll: the daemon is another process that says nothing
         * before its socket answers. */
        usleep(1000);
    }
    return false;
}
