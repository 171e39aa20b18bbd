/*
 * fake_guest.c — a stand-in for one utility VM's guest, the oracle of the
 * bring-up model. It links nothing of uvmlease on purpose: it must judge the
 * broker from outside, the way the real guest does.
 *
 *   fake_guest [--confidential] [--uvm ID] [--verbose] SOCKET
 *
 * Listens on the Unix socket SOCKET. A container's bring-up is one
 * connection for its whole duration, one command per line, one reply line
 * per command:
 *
 *   begin <container-id> <fence>   ok | reset | error ...
 *   step <name> <duration-ms>      ok | reset | error ...   (after the duration)
 *   end                            ok | reset | error ...
 *   stats                          stats <counters>          (any connection)
 *   ping                           ok
 *   stop                           ok, then the guest exits
 *
 * Fence 0 means "no lease" (a shim running without the broker) and is not
 * checked. A bring-up is open from its begin until its end is acknowledged
 * or its client disconnects; but a step whose client disconnects keeps
 * running to the end of its duration first, because a host operation handed
 * to the VM worker outlives the process that started it.
 *
 * A confidential guest resets when a bring-up begins while another one is
 * open: every open bring-up fails (a step in flight is answered "reset" at
 * once, an idle one gets "reset" as the reply to its next command) and the
 * guest keeps serving, so one run can count several resets. A standard
 * guest never resets; it counts the overlaps.
 *
 * On "stop" or SIGTERM/SIGINT it prints one line on stdout and exits 0:
 *   GUEST uvm=ID confidential=0|1 begun=N completed=N aborted=N failed=N
 *         resets=N fence_errors=N overlaps=N max_open=N bad_input=N
 * Events go to stderr as human-readable lines.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define G_MAX_CONN 256    /* connections at once, bring-ups and control */
#define G_IN_MAX   1024   /* buffered input per connection */
#define G_LINE_MAX 300    /* one command line */
#define G_ID_MAX   128    /* container id */
#define G_STEP_MAX 64     /* step name (the broker's phase limit) */
#define G_UVM_MAX  256    /* UVM id */
#define G_DUR_MAX  600000 /* one step, ms */

typedef enum { B_NONE, B_OPEN, B_FAILED, B_DONE } bstate;

typedef struct slot {
    bool used;
    int fd;            /* -1 once the client has gone */
    char in[G_IN_MAX]; /* bytes received, not yet a complete handled line */
    size_t inlen;
    bstate st;
    char id[G_ID_MAX + 1];
    uint64_t fence;
    bool stepping;
    char step[G_STEP_MAX + 1];
    uint64_t step_due; /* monotonic ms */
} slot;

typedef struct guest {
    char uvm[G_UVM_MAX + 1];
    bool confidential;
    bool verbose;
    int lfd;
    slot slots[G_MAX_CONN];
    uint64_t t0;
    uint64_t begun, completed, aborted, failed, resets, fence_errors, overlaps, max_open, bad_input;
    uint64_t max_fence;
    bool stopping;
} guest;

static int s_sigpipe[2] = {-1, -1};

static uint64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

__attribute__((format(printf, 2, 3))) static void s_log(const guest *g, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%6" PRIu64 " ms] guest %s: %s\n", s_now_ms() - g->t0, g->uvm, msg);
}

static void s_on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    char c = 's';
    /* The pipe is non-blocking: a full pipe already says "stop". */
    ssize_t unused = write(s_sigpipe[1], &c, 1);
    (void)unused;
    errno = saved;
}

static size_t s_open_count(const guest *g)
{
    size_t n = 0;
    for (size_t i = 0; i < G_MAX_CONN; i++)
        if (g->slots[i].used && g->slots[i].st == B_OPEN)
            n++;
    return n;
}

static void s_free(slot *s)
{
    if (s->fd >= 0)
        close(s->fd);
    memset(s, 0, sizeof *s);
    s->fd = -1;
}

/* The client is gone (EOF, error, or we hung up on it). An open bring-up
 * with a step in flight stays open until the step has run out. */
static void s_drop(guest *g, slot *s)
{
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    s->inlen = 0;
    if (s->st == B_OPEN && s->stepping) {
        uint64_t now = s_now_ms();
        s_log(g, "bring-up %s: client gone during step %s; the step runs out in %" PRIu64 " ms",
              s->id, s->step, s->step_due > now ? s->step_due - now : 0);
        return;
    }
    if (s->st == B_OPEN) {
        g->aborted++;
        s_log(g, "bring-up %s: client gone between steps; bring-up aborted", s->id);
    }
    s_free(s);
}

/* Send one reply line. A client that cannot take a short reply at once is
 * not reading: drop it rather than block every other bring-up. */
static bool s_reply(guest *g, slot *s, const char *text)
{
    if (s->fd < 0)
        return false;
    char line[1024];
    int n = snprintf(line, sizeof line, "%s\n", text);
    if (n < 0 || (size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    ssize_t w;
    do {
        w = send(s->fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
    if (w != n) {
        s_drop(g, s);
        return false;
    }
    return true;
}

static void s_stats_line(const guest *g, char *out, size_t outsz, const char *tag)
{
    snprintf(out, outsz,
             "%s uvm=%s confidential=%d begun=%" PRIu64 " completed=%" PRIu64 " aborted=%" PRIu64
             " failed=%" PRIu64 " resets=%" PRIu64 " fence_errors=%" PRIu64 " overlaps=%" PRIu64
             " max_open=%" PRIu64 " bad_input=%" PRIu64 " open=%zu",
             tag, g->uvm, g->confidential ? 1 : 0, g->begun, g->completed, g->aborted, g->failed,
             g->resets, g->fence_errors, g->overlaps, g->max_open, g->bad_input, s_open_count(g));
}

/* The guest crashes and comes back: every open bring-up fails. */
static void s_reset(guest *g, slot *trigger)
{
    char who[512];
    size_t off = 0;
    who[0] = '\0';
    for (size_t i = 0; i < G_MAX_CONN; i++) {
        slot *s = &g->slots[i];
        if (!s->used || s->st != B_OPEN || s == trigger)
            continue;
        int n = snprintf(who + off, sizeof who - off, "%s%s (%s%s)", off ? ", " : "", s->id,
                         s->stepping ? s->step : "between steps",
                         s->fd < 0 ? ", client already dead" : "");
        if (n < 0 || (size_t)n >= sizeof who - off)
            break;
        off += (size_t)n;
    }
    g->resets++;
    s_log(g, "RESET #%" PRIu64 ": bring-up %s began while open: %s", g->resets, trigger->id, who);
    for (size_t i = 0; i < G_MAX_CONN; i++) {
        slot *s = &g->slots[i];
        if (!s->used || s->st != B_OPEN)
            continue;
        g->failed++;
        s->st = B_FAILED;
        if (s->fd < 0) {
            s_free(s); /* an orphaned step dies with the guest */
        } else if (s->stepping || s == trigger) {
            s->stepping = false;
            s_reply(g, s, "reset");
            s_drop(g, s);
        }
        /* An idle one learns it from the reply to its next command. */
    }
}

static bool s_token_ok(const char *t, size_t max)
{
    size_t n = strlen(t);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
            return false;
    return true;
}

static bool s_parse_u64(const char *t, uint64_t max, uint64_t *out)
{
    if (!*t || strlen(t) > 20)
        return false;
    uint64_t v = 0;
    for (const char *p = t; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static void s_bad(guest *g, slot *s, const char *why)
{
    g->bad_input++;
    char r[128];
    snprintf(r, sizeof r, "error %s", why);
    s_reply(g, s, r);
}

static void s_begin(guest *g, slot *s, char **tok, int ntok)
{
    uint64_t fence;
    if (ntok != 3 || !s_token_ok(tok[1], G_ID_MAX) || !s_parse_u64(tok[2], UINT64_MAX, &fence)) {
        s_bad(g, s, "usage: begin <container-id> <fence>");
        return;
    }
    if (s->st != B_NONE) {
        s_bad(g, s, "one bring-up per connection");
        return;
    }
    snprintf(s->id, sizeof s->id, "%s", tok[1]);
    s->fence = fence;
    g->begun++;
    /* The real VM worker cannot check fences; the model flags what a
     * correct broker must never hand out. */
    if (g->confidential && fence != 0) {
        if (fence <= g->max_fence) {
            g->fence_errors++;
            s_log(g, "FENCE ERROR: bring-up %s has fence %" PRIu64 ", already saw %" PRIu64, s->id,
                  fence, g->max_fence);
        } else {
            g->max_fence = fence;
        }
    }
    size_t open = s_open_count(g);
    s->st = B_OPEN;
    if (open + 1 > g->max_open)
        g->max_open = open + 1;
    if (open > 0)
        g->overlaps++;
    if (g->verbose || (open > 0 && !g->confidential))
        s_log(g, "begin %s fence=%" PRIu64 " (%zu other bring-up(s) open)", s->id, fence, open);
    if (open > 0 && g->confidential) {
        s_reset(g, s);
        return;
    }
    s_reply(g, s, "ok");
}

static void s_step(guest *g, slot *s, char **tok, int ntok)
{
    uint64_t ms;
    if (ntok != 3 || !s_token_ok(tok[1], G_STEP_MAX) || !s_parse_u64(tok[2], G_DUR_MAX, &ms)) {
        s_bad(g, s, "usage: step <name> <duration-ms>");
        return;
    }
    if (s->st != B_OPEN) {
        s_bad(g, s, "no open bring-up on this connection");
        return;
    }
    snprintf(s->step, sizeof s->step, "%s", tok[1]);
    s->stepping = true;
    s->step_due = s_now_ms() + ms;
    if (g->verbose)
        s_log(g, "bring-up %s: step %s (%" PRIu64 " ms)", s->id, s->step, ms);
}

static void s_end(guest *g, slot *s, int ntok)
{
    if (ntok != 1) {
        s_bad(g, s, "usage: end");
        return;
    }
    if (s->st != B_OPEN) {
        s_bad(g, s, "no open bring-up on this connection");
        return;
    }
    s->st = B_DONE;
    g->completed++;
    if (g->verbose)
        s_log(g, "bring-up %s completed", s->id);
    s_reply(g, s, "ok");
}

/* One complete line from a client. Returns false when the slot is gone. */
static bool s_line(guest *g, slot *s, char *line)
{
    size_t n = strlen(line);
    if (n && line[n - 1] == '\r')
        line[--n] = '\0';
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] >= 0x7f) {
            s_bad(g, s, "control or non-ASCII byte in command");
            return s->fd >= 0;
        }
    }
    char *tok[4];
    int ntok = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (ntok == 4) {
            s_bad(g, s, "too many words");
            return s->fd >= 0;
        }
        tok[ntok++] = t;
    }
    if (ntok == 0) {
        s_bad(g, s, "empty command");
        return s->fd >= 0;
    }
    if (s->st == B_FAILED) {
        s_reply(g, s, "reset");
        s_drop(g, s);
        return false;
    }
    if (strcmp(tok[0], "begin") == 0) {
        s_begin(g, s, tok, ntok);
    } else if (strcmp(tok[0], "step") == 0) {
        s_step(g, s, tok, ntok);
    } else if (strcmp(tok[0], "end") == 0) {
        s_end(g, s, ntok);
    } else if (strcmp(tok[0], "stats") == 0) {
        char r[900];
        s_stats_line(g, r, sizeof r, "stats");
        s_reply(g, s, r);
    } else if (strcmp(tok[0], "ping") == 0) {
        s_reply(g, s, "ok");
    } else if (strcmp(tok[0], "stop") == 0) {
        s_reply(g, s, "ok");
        g->stopping = true;
    } else {
        s_bad(g, s, "unknown command");
    }
    return s->used && s->fd >= 0;
}

/* Handle buffered lines until a step is in flight (its reply is due first),
 * the input runs out, or the connection goes. */
static void s_process(guest *g, slot *s)
{
    while (s->used && s->fd >= 0 && !s->stepping && !g->stopping) {
        char *nl = memchr(s->in, '\n', s->inlen);
        if (!nl) {
            if (s->inlen >= G_LINE_MAX) {
                s_bad(g, s, "line too long");
                s_drop(g, s);
            }
            return;
        }
        size_t len = (size_t)(nl - s->in);
        char line[G_IN_MAX];
        if (len >= G_LINE_MAX) {
            s_bad(g, s, "line too long");
            s_drop(g, s);
            return;
        }
        memcpy(line, s->in, len);
        line[len] = '\0';
        memmove(s->in, nl + 1, s->inlen - len - 1);
        s->inlen -= len + 1;
        /* A NUL would hide the rest of the line from the checks below;
         * make it a control byte they reject. */
        for (size_t i = 0; i < len; i++)
            if (line[i] == '\0')
                line[i] = '\x01';
        if (!s_line(g, s, line))
            return;
    }
}

static void s_read(guest *g, slot *s)
{
    if (s->inlen == sizeof s->in) {
        /* A client piling commands behind a step without reading replies. */
        s_bad(g, s, "too much unread input");
        s_drop(g, s);
        return;
    }
    ssize_t r;
    do {
        r = read(s->fd, s->in + s->inlen, sizeof s->in - s->inlen);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (r <= 0) {
        s_drop(g, s);
        return;
    }
    s->inlen += (size_t)r;
    s_process(g, s);
}

static void s_step_done(guest *g, slot *s)
{
    s->stepping = false;
    if (s->fd < 0) {
        g->aborted++;
        s_log(g, "bring-up %s: orphaned step %s ran out; bring-up aborted", s->id, s->step);
        s_free(s);
        return;
    }
    if (s_reply(g, s, "ok"))
        s_process(g, s);
}

static void s_accept(guest *g)
{
    for (;;) {
        int fd = accept(g->lfd, NULL, NULL);
        if (fd < 0)
            return;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        slot *free_slot = NULL;
        for (size_t i = 0; i < G_MAX_CONN && !free_slot; i++)
            if (!g->slots[i].used)
                free_slot = &g->slots[i];
        if (!free_slot) {
            static const char msg[] = "error too many connections\n";
            ssize_t unused = send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)unused; /* best effort: the connection is closed either way */
            close(fd);
            g->bad_input++;
            continue;
        }
        memset(free_slot, 0, sizeof *free_slot);
        free_slot->used = true;
        free_slot->fd = fd;
    }
}

/* Bind under a temporary name and rename into place, so the socket path
 * appears only once connects to it succeed: waiting for the file is then a
 * readiness check. */
static int s_listen(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char tmp[sizeof a.sun_path];
    if (snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof tmp) {
        fprintf(stderr, "fake_guest: socket path too long: %s\n", path);
        return -1;
    }
    memcpy(a.sun_path, tmp, strlen(tmp) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("fake_guest: socket");
        return -1;
    }
    unlink(tmp);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0 ||
        rename(tmp, path) < 0) {
        fprintf(stderr, "fake_guest: cannot listen on %s: %s\n", path, strerror(errno));
        unlink(tmp);
        close(fd);
        return -1;
    }
    return fd;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: fake_guest [--confidential] [--uvm ID] [--verbose] SOCKET\n"
               "A model of one UVM's guest for bring-up tests; see the source for the "
               "protocol.\n");
}

int main(int argc, char **argv)
{
    static guest g; /* large: keep it off the stack */
    static const struct option opts[] = {
        {"confidential", no_argument, NULL, 'c'},
        {"uvm", required_argument, NULL, 'u'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    snprintf(g.uvm, sizeof g.uvm, "uvm");
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            g.confidential = true;
            break;
        case 'u':
            if (!s_token_ok(optarg, G_UVM_MAX)) {
                fprintf(stderr, "fake_guest: --uvm: 1-%d printable characters, no spaces\n",
                        G_UVM_MAX);
                return 2;
            }
            snprintf(g.uvm, sizeof g.uvm, "%s", optarg);
            break;
        case 'v':
            g.verbose = true;
            break;
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            s_usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        s_usage(stderr);
        return 2;
    }
    const char *path = argv[optind];
    for (size_t i = 0; i < G_MAX_CONN; i++)
        g.slots[i].fd = -1;
    g.t0 = s_now_ms();

    if (pipe(s_sigpipe) < 0) {
        perror("fake_guest: pipe");
        return 1;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(s_sigpipe[i], F_SETFL, fcntl(s_sigpipe[i], F_GETFL) | O_NONBLOCK);
        fcntl(s_sigpipe[i], F_SETFD, FD_CLOEXEC);
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    g.lfd = s_listen(path);
    if (g.lfd < 0)
        return 1;
    s_log(&g, "listening on %s (%s)", path, g.confidential ? "confidential" : "standard");

    struct pollfd pfd[G_MAX_CONN + 2];
    slot *owner[G_MAX_CONN + 2];
    while (!g.stopping) {
        size_t n = 0;
        pfd[n++] = (struct pollfd){.fd = s_sigpipe[0], .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = g.lfd, .events = POLLIN};
        uint64_t now = s_now_ms();
        int timeout = -1;
        for (size_t i = 0; i < G_MAX_CONN; i++) {
            slot *s = &g.slots[i];
            if (!s->used)
                continue;
            if (s->stepping) {
                uint64_t left = s->step_due > now ? s->step_due - now : 0;
                if (timeout < 0 || left < (uint64_t)timeout)
                    timeout = (int)left;
            }
            if (s->fd >= 0) {
                owner[n] = s;
                pfd[n++] = (struct pollfd){.fd = s->fd, .events = POLLIN};
            }
        }
        int r = poll(pfd, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) {
            perror("fake_guest: poll");
            break;
        }
        if (r > 0 && (pfd[0].revents & POLLIN))
            break;
        /* Steps that ran out are answered before new input is read, so a
         * begin arriving in the same instant sees the step already over. */
        now = s_now_ms();
        for (size_t i = 0; i < G_MAX_CONN && !g.stopping; i++) {
            slot *s = &g.slots[i];
            if (s->used && s->stepping && s->step_due <= now)
                s_step_done(&g, s);
        }
        if (r <= 0)
            continue;
        for (size_t k = 2; k < n && !g.stopping; k++) {
            if (!pfd[k].revents)
                continue;
            slot *s = owner[k];
            /* The slot may have been dropped by a reset handled above. */
            if (s->used && s->fd == pfd[k].fd)
                s_read(&g, s);
        }
        if (pfd[1].revents & POLLIN)
            s_accept(&g);
    }

    char line[900];
    s_stats_line(&g, line, sizeof line, "GUEST");
    printf("%s\n", line);
    fflush(stdout);
    s_log(&g, "stopped: %s", line + 6);
    for (size_t i = 0; i < G_MAX_CONN; i++)
        if (g.slots[i].used)
            s_free(&g.slots[i]);
    close(g.lfd);
    unlink(path);
    return 0;
}
