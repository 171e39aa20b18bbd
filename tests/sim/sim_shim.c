/*
 * sim_shim.c — a simulated container shim for the bring-up model.
 *
 * Brings up N containers in one UVM at once, one thread per container, all
 * sharing one libuvmlease connection as a real shim does. Each container:
 * acquire the UVM's bring-up lease (unless --no-broker), open one
 * connection to the fake guest, "begin <id> <fence>", then for every step
 * report the phase to the broker and perform the step against the guest,
 * "end", and only after the guest acknowledged it release the lease.
 *
 *   sim_shim --guest SOCK [--uvm ID] [--confidential] [--endpoint ipc://P]
 *            [--no-broker] [--containers 2xnanoserver,1xmount-host]
 *            [--step-ms MS] [--jitter-ms MS] [--step NAME=MS]... [--seed N]
 *            [--label-prefix P] [--die-in-step NAME [--die-after-ms MS]]
 *            [--acquire-timeout-ms MS] [--verbose]
 *
 * Prints one line on stdout:
 *   SHIM uvm=ID broker=0|1 confidential=0|1 containers=N completed=N reset=N
 *        failed=N elapsed_ms=N max_wait_ms=N
 * and exits 0 only if every container completed (1 otherwise, 2 on usage).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "uvmlease.h"

#define S_MAX_CONTAINERS 256
#define S_MAX_STEPS      8
#define S_MAX_OVERRIDES  16
#define S_GUEST_SLACK_MS 10000 /* beyond a step's duration, for a reply */

typedef enum { K_NANOSERVER, K_MOUNT_HOST } kind;

static const char *const s_kind_names[] = {"nanoserver", "mount-host"};

/* The host-side steps of a container create, in order. A container with a
 * host mount has one more (the mount into the UVM) before the combine. */
static const char *const s_steps_nanoserver[] = {"cim-mount", "scratch-attach", "combine-layers",
                                                 "guest-create"};
static const char *const s_steps_mount_host[] = {"cim-mount", "scratch-attach", "host-mount",
                                                 "combine-layers", "guest-create"};

typedef enum { R_NONE, R_COMPLETED, R_RESET, R_FAILED } result;

typedef struct container {
    pthread_t thread;
    int index;
    kind k;
    char id[160];
    uint64_t rng;
    result res;
    uint64_t wait_ms;
    char why[768];
} container;

typedef struct override {
    char name[UVMLEASE_PHASE_MAX + 1];
    unsigned ms;
} override;

typedef struct shim {
    const char *guest;
    const char *endpoint;
    const char *uvm;
    bool confidential;
    bool broker;
    bool verbose;
    unsigned step_ms;
    unsigned jitter_ms;
    override ov[S_MAX_OVERRIDES];
    int nov;
    const char *die_step;
    int die_after_ms; /* -1: half the step */
    int64_t acquire_timeout_ms;
    uvmlease *conn;
    pthread_barrier_t start;
    uint64_t t0;
    container *c;
    int n;
} shim;

static shim S;

static uint64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void s_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

__attribute__((format(printf, 2, 3))) static void s_log(const container *c, const char *fmt, ...)
{
    if (!S.verbose)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%6" PRIu64 " ms] shim %d %s: %s\n", s_now_ms() - S.t0, (int)getpid(), c->id,
            msg);
}

/* splitmix64: a reproducible per-container stream from --seed. */
static uint64_t s_rand(uint64_t *st)
{
    uint64_t z = (*st += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static unsigned s_step_duration(container *c, const char *step)
{
    for (int i = 0; i < S.nov; i++)
        if (strcmp(S.ov[i].name, step) == 0)
            return S.ov[i].ms;
    unsigned ms = S.step_ms;
    /* The host mount is a second block-device attach: slower. */
    if (strcmp(step, "host-mount") == 0)
        ms *= 2;
    if (S.jitter_ms)
        ms += (unsigned)(s_rand(&c->rng) % (S.jitter_ms + 1u));
    return ms;
}

static int s_guest_connect(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(a.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Send one command and read the one-line reply within timeout_ms. The
 * guest is another process and its bytes are checked like any peer's:
 * a reply must be a short line of printable ASCII. Returns 0 with the
 * reply in out, or -1 with a reason in out. */
static int s_guest_call(int fd, const char *cmd, unsigned timeout_ms, char *out, size_t outsz)
{
    char line[256];
    int n = snprintf(line, sizeof line, "%s\n", cmd);
    if (n < 0 || (size_t)n >= sizeof line) {
        snprintf(out, outsz, "command too long");
        return -1;
    }
    for (ssize_t off = 0; off < n;) {
        ssize_t w = send(fd, line + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(out, outsz, "guest connection: %s", strerror(errno));
            return -1;
        }
        off += w;
    }
    size_t got = 0;
    uint64_t deadline = s_now_ms() + timeout_ms;
    for (;;) {
        uint64_t now = s_now_ms();
        if (now >= deadline) {
            snprintf(out, outsz, "guest did not answer '%s' in time", cmd);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        /* One byte at a time: replies are short and a byte past the newline
         * would belong to no one. */
        char ch;
        ssize_t rd = read(fd, &ch, 1);
        if (rd < 0 && errno == EINTR)
            continue;
        if (rd <= 0) {
            snprintf(out, outsz, "guest closed the connection");
            return -1;
        }
        if (ch == '\n') {
            line[got] = '\0';
            snprintf(out, outsz, "%s", line);
            return 0;
        }
        if ((unsigned char)ch < 0x20 || (unsigned char)ch >= 0x7f || got + 1 >= sizeof line) {
            snprintf(out, outsz, "malformed reply from the guest");
            return -1;
        }
        line[got++] = ch;
    }
}

static void s_die_now(container *c, const char *step)
{
    s_log(c, "dying (SIGKILL) in the middle of step %s", step);
    /* Every thread, the lease and the guest connection go with the
     * process, as when a shim crashes. */
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

/* Outcome of a guest exchange: completed step, guest reset, or failure. */
static result s_guest_result(container *c, int rc, const char *reply, const char *what)
{
    if (rc == 0 && strcmp(reply, "ok") == 0)
        return R_COMPLETED;
    if (rc == 0 && strcmp(reply, "reset") == 0) {
        snprintf(c->why, sizeof c->why, "guest reset during %s", what);
        return R_RESET;
    }
    snprintf(c->why, sizeof c->why, "%s: %s", what, reply);
    return R_FAILED;
}

static result s_bringup(container *c)
{
    const char *const *steps;
    size_t nsteps;
    if (c->k == K_MOUNT_HOST) {
        steps = s_steps_mount_host;
        nsteps = sizeof s_steps_mount_host / sizeof *s_steps_mount_host;
    } else {
        steps = s_steps_nanoserver;
        nsteps = sizeof s_steps_nanoserver / sizeof *s_steps_nanoserver;
    }

    uvmlease_lease *lease = NULL;
    uint64_t fence = 0;
    if (S.broker) {
        uvmlease_holder who;
        uint64_t t = s_now_ms();
        int rc = uvmlease_acquire(S.conn, S.uvm, S.confidential ? UVMLEASE_CONFIDENTIAL : 0, c->id,
                                  S.acquire_timeout_ms, NULL, &who, &lease);
        c->wait_ms = s_now_ms() - t;
        if (rc != UVMLEASE_OK) {
            snprintf(c->why, sizeof c->why, "acquire: %s (holder pid %d label %s phase %s)",
                     uvmlease_strerror(rc), (int)who.pid, who.label, who.phase);
            return R_FAILED;
        }
        fence = uvmlease_lease_fence(lease);
        s_log(c, "lease granted after %" PRIu64 " ms, fence %" PRIu64, c->wait_ms, fence);
    }

    result res = R_FAILED;
    char cmd[256], reply[256];
    int fd = s_guest_connect(S.guest);
    if (fd < 0) {
        snprintf(c->why, sizeof c->why, "cannot connect to the guest at %s: %s", S.guest,
                 strerror(errno));
        goto out;
    }
    snprintf(cmd, sizeof cmd, "begin %s %" PRIu64, c->id, fence);
    res = s_guest_result(c, s_guest_call(fd, cmd, S_GUEST_SLACK_MS, reply, sizeof reply), reply,
                         "begin");
    for (size_t i = 0; i < nsteps && res == R_COMPLETED; i++) {
        const char *step = steps[i];
        if (lease) {
            int rc = uvmlease_phase(lease, step);
            if (rc != UVMLEASE_OK) {
                snprintf(c->why, sizeof c->why, "phase %s: %s", step, uvmlease_strerror(rc));
                res = R_FAILED;
                break;
            }
        }
        unsigned ms = s_step_duration(c, step);
        s_log(c, "step %s (%u ms)", step, ms);
        snprintf(cmd, sizeof cmd, "step %s %u", step, ms);
        if (S.die_step && strcmp(S.die_step, step) == 0) {
            char line[128];
            int n = snprintf(line, sizeof line, "%s\n", cmd);
            if (send(fd, line, (size_t)n, MSG_NOSIGNAL) == n)
                s_sleep_ms(S.die_after_ms >= 0 ? (unsigned)S.die_after_ms : ms / 2);
            s_die_now(c, step);
        }
        res = s_guest_result(c, s_guest_call(fd, cmd, ms + S_GUEST_SLACK_MS, reply, sizeof reply),
                             reply, step);
    }
    if (res == R_COMPLETED)
        res = s_guest_result(c, s_guest_call(fd, "end", S_GUEST_SLACK_MS, reply, sizeof reply),
                             reply, "end");
    close(fd);

out:
    /* Only now, with the guest's acknowledgement of the end (or the
     * bring-up over for good), may the next bring-up start. */
    if (lease) {
        int rc = uvmlease_release(lease);
        if (rc != UVMLEASE_OK && res == R_COMPLETED) {
            snprintf(c->why, sizeof c->why, "release: %s", uvmlease_strerror(rc));
            res = R_FAILED;
        }
    }
    return res;
}

static void *s_container_main(void *arg)
{
    container *c = arg;
    pthread_barrier_wait(&S.start);
    c->res = s_bringup(c);
    if (c->res == R_COMPLETED)
        s_log(c, "completed");
    else
        fprintf(stderr, "sim_shim %d: container %s: %s\n", (int)getpid(), c->id, c->why);
    return NULL;
}

static bool s_parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    if (!*s || *s == '-' || *s == '+')
        return false;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > max)
        return false;
    *out = v;
    return true;
}

static bool s_printable_word(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* "2xnanoserver,1xmount-host" (a bare kind counts once). */
static int s_parse_containers(const char *spec, kind *kinds, int max)
{
    char buf[512];
    if (snprintf(buf, sizeof buf, "%s", spec) >= (int)sizeof buf)
        return -1;
    int n = 0;
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        unsigned long count = 1;
        char *x = strchr(item, 'x');
        const char *name = item;
        if (x && x != item && strspn(item, "0123456789") == (size_t)(x - item)) {
            *x = '\0';
            if (!s_parse_uint(item, (unsigned long)max, &count))
                return -1;
            name = x + 1;
        }
        kind k;
        if (strcmp(name, "nanoserver") == 0)
            k = K_NANOSERVER;
        else if (strcmp(name, "mount-host") == 0)
            k = K_MOUNT_HOST;
        else
            return -1;
        for (unsigned long i = 0; i < count; i++) {
            if (n >= max)
                return -1;
            kinds[n++] = k;
        }
    }
    return n;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: sim_shim --guest SOCK [options]\n"
               "Brings up containers in one UVM concurrently against a fake guest.\n"
               "  --guest SOCK            the fake guest's socket (required)\n"
               "  --uvm ID                UVM id (default sim-uvm@vm)\n"
               "  --confidential          ask for an exclusive lease\n"
               "  --endpoint ipc://PATH   the broker (default: as libuvmlease finds it)\n"
               "  --no-broker             take no lease at all (the crash reproduction)\n"
               "  --containers SPEC       e.g. 2xnanoserver,1xmount-host (default 2xnanoserver)\n"
               "  --step-ms MS            duration of each step (default 20; host-mount 2x)\n"
               "  --jitter-ms MS          add 0..MS at random to each step (default 0)\n"
               "  --step NAME=MS          fixed duration for one step (repeatable)\n"
               "  --seed N                jitter seed (default 1)\n"
               "  --label-prefix P        container ids are P-<kind>-<n> (default shim<pid>)\n"
               "  --die-in-step NAME      SIGKILL this process in the middle of that step\n"
               "  --die-after-ms MS       ... this long after sending it (default: half)\n"
               "  --acquire-timeout-ms MS give up waiting for the lease (default 60000)\n"
               "  --verbose               log every step on stderr\n");
}

int main(int argc, char **argv)
{
    enum {
        O_GUEST = 1,
        O_UVM,
        O_CONF,
        O_ENDPOINT,
        O_NOBROKER,
        O_CONTAINERS,
        O_STEPMS,
        O_JITTER,
        O_STEP,
        O_SEED,
        O_PREFIX,
        O_DIE,
        O_DIEAFTER,
        O_ATIMEOUT,
        O_VERBOSE,
        O_HELP
    };
    static const struct option opts[] = {
        {"guest", required_argument, NULL, O_GUEST},
        {"uvm", required_argument, NULL, O_UVM},
        {"confidential", no_argument, NULL, O_CONF},
        {"endpoint", required_argument, NULL, O_ENDPOINT},
        {"no-broker", no_argument, NULL, O_NOBROKER},
        {"containers", required_argument, NULL, O_CONTAINERS},
        {"step-ms", required_argument, NULL, O_STEPMS},
        {"jitter-ms", required_argument, NULL, O_JITTER},
        {"step", required_argument, NULL, O_STEP},
        {"seed", required_argument, NULL, O_SEED},
        {"label-prefix", required_argument, NULL, O_PREFIX},
        {"die-in-step", required_argument, NULL, O_DIE},
        {"die-after-ms", required_argument, NULL, O_DIEAFTER},
        {"acquire-timeout-ms", required_argument, NULL, O_ATIMEOUT},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    static kind kinds[S_MAX_CONTAINERS];
    int n = 2;
    kinds[0] = kinds[1] = K_NANOSERVER;
    uint64_t seed = 1;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "shim%d", (int)getpid());
    S.uvm = "sim-uvm@vm";
    S.broker = true;
    S.step_ms = 20;
    S.die_after_ms = -1;
    S.acquire_timeout_ms = 60000;

    int o;
    unsigned long v;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_GUEST:
            S.guest = optarg;
            break;
        case O_UVM:
            S.uvm = optarg;
            break;
        case O_CONF:
            S.confidential = true;
            break;
        case O_ENDPOINT:
            S.endpoint = optarg;
            break;
        case O_NOBROKER:
            S.broker = false;
            break;
        case O_CONTAINERS:
            n = s_parse_containers(optarg, kinds, S_MAX_CONTAINERS);
            if (n <= 0) {
                fprintf(stderr, "sim_shim: bad --containers '%s'\n", optarg);
                return 2;
            }
            break;
        case O_STEPMS:
        case O_JITTER:
            if (!s_parse_uint(optarg, 60000, &v)) {
                fprintf(stderr, "sim_shim: bad duration '%s'\n", optarg);
                return 2;
            }
            if (o == O_STEPMS)
                S.step_ms = (unsigned)v;
            else
                S.jitter_ms = (unsigned)v;
            break;
        case O_STEP: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || (size_t)(eq - optarg) > UVMLEASE_PHASE_MAX ||
                !s_parse_uint(eq + 1, 60000, &v) || S.nov == S_MAX_OVERRIDES) {
                fprintf(stderr, "sim_shim: bad --step '%s' (NAME=MS)\n", optarg);
                return 2;
            }
            memcpy(S.ov[S.nov].name, optarg, (size_t)(eq - optarg));
            S.ov[S.nov].name[eq - optarg] = '\0';
            S.ov[S.nov++].ms = (unsigned)v;
            break;
        }
        case O_SEED: {
            char *end;
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "sim_shim: bad --seed '%s'\n", optarg);
                return 2;
            }
            break;
        }
        case O_PREFIX:
            /* Container ids go into the guest's one-line protocol as one
             * word: printable ASCII, no spaces. */
            if (snprintf(prefix, sizeof prefix, "%s", optarg) >= (int)sizeof prefix || !*optarg ||
                !s_printable_word(optarg)) {
                fprintf(stderr, "sim_shim: bad --label-prefix '%s'\n", optarg);
                return 2;
            }
            break;
        case O_DIE:
            S.die_step = optarg;
            break;
        case O_DIEAFTER:
            if (!s_parse_uint(optarg, 60000, &v)) {
                fprintf(stderr, "sim_shim: bad --die-after-ms '%s'\n", optarg);
                return 2;
            }
            S.die_after_ms = (int)v;
            break;
        case O_ATIMEOUT:
            if (!s_parse_uint(optarg, 86400000, &v)) {
                fprintf(stderr, "sim_shim: bad --acquire-timeout-ms '%s'\n", optarg);
                return 2;
            }
            S.acquire_timeout_ms = (int64_t)v;
            break;
        case O_VERBOSE:
            S.verbose = true;
            break;
        case O_HELP:
            s_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "sim_shim: unknown or incomplete option '%s'\n", argv[optind - 1]);
            s_usage(stderr);
            return 2;
        }
    }
    if (!S.guest || optind != argc) {
        s_usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    S.t0 = s_now_ms();

    if (S.broker) {
        int rc = uvmlease_connect(S.endpoint, &S.conn);
        if (rc != UVMLEASE_OK) {
            fprintf(stderr, "sim_shim: cannot reach the broker: %s\n", uvmlease_strerror(rc));
            return 1;
        }
    }

    static container cs[S_MAX_CONTAINERS];
    S.c = cs;
    S.n = n;
    int count[2] = {0, 0};
    pthread_barrier_init(&S.start, NULL, (unsigned)n);
    int started = 0;
    for (int i = 0; i < n; i++) {
        container *c = &cs[i];
        c->index = i;
        c->k = kinds[i];
        c->rng = seed ^ ((uint64_t)(i + 1) * UINT64_C(0x2545F4914F6CDD1D));
        snprintf(c->id, sizeof c->id, "%s-%s-%d", prefix, s_kind_names[c->k], ++count[c->k]);
        if (pthread_create(&c->thread, NULL, s_container_main, c) != 0) {
            /* The barrier counts on every thread: without them all, none
             * would start. Fail loudly instead. */
            fprintf(stderr, "sim_shim: cannot start thread %d\n", i);
            _exit(1);
        }
        started++;
    }
    for (int i = 0; i < started; i++)
        pthread_join(cs[i].thread, NULL);
    pthread_barrier_destroy(&S.start);

    int completed = 0, resets = 0, failed = 0;
    uint64_t max_wait = 0;
    for (int i = 0; i < n; i++) {
        completed += cs[i].res == R_COMPLETED;
        resets += cs[i].res == R_RESET;
        failed += cs[i].res == R_FAILED || cs[i].res == R_NONE;
        if (cs[i].wait_ms > max_wait)
            max_wait = cs[i].wait_ms;
    }
    uvmlease_close(S.conn);
    printf("SHIM uvm=%s broker=%d confidential=%d containers=%d completed=%d reset=%d "
           "failed=%d elapsed_ms=%" PRIu64 " max_wait_ms=%" PRIu64 "\n",
           S.uvm, S.broker ? 1 : 0, S.confidential ? 1 : 0, n, completed, resets, failed,
           s_now_ms() - S.t0, max_wait);
    fflush(stdout);
    return completed == n ? 0 : 1;
}
