// ctest-timeout: 300
/*
 * test_ctl.c — uvmleasectl's view and control commands (list, show, watch,
 * stats, drain, undrain, release --force) run as an operator runs them: the
 * built binary ($UL_BUILD_DIR/client/uvmleasectl) against an in-process
 * broker whose clients are forked children speaking the raw protocol. Exit
 * code, stdout and stderr are checked.
 *
 * Golden output is compared after masking what differs from run to run:
 *  - pids become the role of their process ("holder", "w1", ...), so they
 *    are checked rather than dropped; a uid equal to the test's is "<uid>";
 *  - lease ids and fence tokens become "<id>" (they start above the wall
 *    clock in microseconds);
 *  - times become "<t>": in JSON held_ms, phase_ms, waited_ms, duration_ms
 *    and every "at"; in text the IN-PHASE, HELD and WAITED columns, the
 *    values of "held", "for", "ago", "waited=", "held=", and timestamps
 *    ("<time>");
 *  - stats: the "processes" gauge (the CLI's own connections count) and
 *    the MEAN / percentile columns of histograms.
 * Text tables: the header line is compared as printed; every cell of every
 * row must start under its column title (left-aligned) or end under it
 * (right-aligned); rows are then compared as their cells joined by " | ".
 *
 * The log of grants (actors append their role when granted) shows the
 * order in which waiters were actually served.
 *
 * Nothing waits by sleeping: children report over pipes, and everything
 * else is polled against a deadline.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <poll.h>
#include <pwd.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl_output.h"
#include "testutil.h"
#include "ul_sys.h"
#include "uvmlease_broker.h"

#define HEXUVM    "8c1f2a9e0b7d4e3f8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef@vm"
#define NO_BROKER "ipc:///nonexistent-uvmlease-test/broker.sock"

/* One suite, and no per-test options: with either, Criterion 2.4's runner
 * leaks a few bytes when tests run in parallel, which fails the
 * LeakSanitizer build. */
TestSuite(ctl, .timeout = 120);

/* ------------------------------------------------ the test's own broker */

static char s_dir[256];
static uvmlease_broker *s_b;
static const char *s_ep;
static char s_log[320]; /* actors append their label here when granted */

/* One round trip from this process before any child talks to the broker.
 * In the sanitizer build, a child forked while the just-started broker's
 * thread is still busy sometimes never gets its first request answered
 * (threads of a forked child of a threaded process can stall); once the
 * broker has answered, its thread idles in poll when children are forked. */
static void s_ready(void)
{
    void *s = ut_dealer(s_ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_PING);
    memset(&r, 0, sizeof r);
    cr_assert_eq(ut_call(s, &q, &r, 10000), 0, "the broker does not answer");
    ul_reply_free(&r);
    ut_dealer_close(s);
}

static void s_start(const uvmlease_broker_config *cfg)
{
    s_b = ut_broker_start(cfg, s_dir);
    s_ep = uvmlease_broker_endpoint(s_b);
    snprintf(s_log, sizeof s_log, "%s/grants", s_dir);
    s_ready();
}

static void s_stop(void)
{
    ut_broker_stop(&s_b, s_dir);
}

/* ------------------------------------------------- pids and their roles */

typedef struct role {
    long pid;
    char name[32];
} role;

static role s_roles[64];
static int s_nroles;

static void s_role(long pid, const char *name)
{
    if (s_nroles < 64) {
        s_roles[s_nroles].pid = pid;
        snprintf(s_roles[s_nroles].name, sizeof s_roles[s_nroles].name, "%s", name);
        s_nroles++;
    }
}

static const char *s_role_of(long pid)
{
    for (int i = 0; i < s_nroles; i++)
        if (s_roles[i].pid == pid)
            return s_roles[i].name;
    static char unknown[48];
    snprintf(unknown, sizeof unknown, "<unknown pid %ld>", pid);
    return unknown;
}

/* ---------------------------------------------------------- running it */

typedef struct run {
    int code; /* exit code; 1000 + signal; -1 on timeout */
    char *out;
    char *err;
} run;

typedef struct creds {
    uid_t uid;
    gid_t gid;
    gid_t groups[4];
    int ngroups;
} creds;

/* Exit codes of the forked child before it becomes uvmleasectl. */
#define RUN_NOT_EXECUTABLE 92

static char *s_read_all(int fd)
{
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    char *buf = malloc((size_t)st.st_size + 1);
    cr_assert(buf);
    ssize_t n = st.st_size ? pread(fd, buf, (size_t)st.st_size, 0) : 0;
    buf[n > 0 ? n : 0] = '\0';
    close(fd);
    return buf;
}

static void s_bin(char *out, size_t outsz)
{
    ut_build_path("client/uvmleasectl", out, outsz);
}

/* Run uvmleasectl with args (NULL-terminated), as the test's user or as
 * another one. Output goes to memory files, so size is no concern. */
static void s_run_as(run *r, const creds *as, const char *const *args)
{
    char bin[512];
    s_bin(bin, sizeof bin);
    const char *argv[48];
    int n = 0;
    argv[n++] = "uvmleasectl";
    for (int i = 0; args[i] && n < 47; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    /* The environment without UVMLEASE_ENDPOINT, built before fork():
     * the child of a threaded process may only make async-signal-safe
     * calls until it execs. */
    size_t ne = 0;
    while (environ[ne])
        ne++;
    char **envp = calloc(ne + 1, sizeof *envp);
    cr_assert(envp);
    for (size_t i = 0, k = 0; i < ne; i++)
        if (strncmp(environ[i], "UVMLEASE_ENDPOINT=", 18) != 0)
            envp[k++] = environ[i];
    int fo = memfd_create("ctl-stdout", MFD_CLOEXEC);
    int fe = memfd_create("ctl-stderr", MFD_CLOEXEC);
    cr_assert(fo >= 0 && fe >= 0, "memfd_create: %s", strerror(errno));
    pid_t p = ut_fork();
    if (p == 0) {
        if (dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(90);
        if (as && (setgroups((size_t)as->ngroups, as->groups) < 0 || setgid(as->gid) < 0 ||
                   setuid(as->uid) < 0))
            _exit(91);
        if (access(bin, X_OK) != 0)
            _exit(RUN_NOT_EXECUTABLE);
        execve(bin, (char *const *)argv, envp);
        _exit(93);
    }
    free(envp);
    r->code = ut_wait_code(p, 30000);
    r->out = s_read_all(fo);
    r->err = s_read_all(fe);
    if (!as)
        cr_assert_neq(r->code, RUN_NOT_EXECUTABLE, "%s is not built", bin);
}

#define CTL(r, ...) s_run_as((r), NULL, (const char *const[]){__VA_ARGS__, NULL})
#define CTLE(r, ...)                                                                               \
    s_run_as((r), NULL, (const char *const[]){"--endpoint", s_ep, __VA_ARGS__, NULL})
#define CTL_AS(r, as, ...)                                                                         \
    s_run_as((r), (as), (const char *const[]){"--endpoint", s_ep, __VA_ARGS__, NULL})

static void s_run_free(run *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

static void s_expect(const run *r, int code, const char *what)
{
    cr_assert_eq(r->code, code, "%s: exit %d, expected %d\n--- stdout:\n%s--- stderr:\n%s", what,
                 r->code, code, r->out, r->err);
}

/* --------------------------------------------------------------- actors */

/*
 * A client process: acquires one UVM, reports its phases, then says 'G'
 * on up ('Q' first if it had to wait, 'F' if it failed) and obeys down:
 * 'r' releases, 'p' reports another phase; each answered on up with '0'
 * (ok), 'v' (revoked) or 'e' (another error).
 */
typedef struct actor {
    const char *role;
    const char *uvm;
    const char *label;
    bool conf;
    int64_t timeout_ms;
    const char *phases[3];
    bool ignore_term;
    pid_t pid;
    ut_chan up, down;
} actor;

static void s_put_q(void *ctx)
{
    ut_chan_put(ctx, 'Q');
}

static int s_phase_call(void *s, uint64_t lease, const char *phase)
{
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_PHASE);
    q.lease = lease;
    snprintf(q.phase, sizeof q.phase, "%s", phase);
    memset(&r, 0, sizeof r);
    int rc = ut_call(s, &q, &r, 5000);
    if (rc == 0)
        rc = (int)r.err;
    ul_reply_free(&r);
    return rc;
}

static int s_actor_main(actor *a)
{
    if (a->ignore_term)
        signal(SIGTERM, SIG_IGN);
    void *s = ut_dealer(s_ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    int rc = ut_acquire(s, a->uvm, a->conf, a->label, a->timeout_ms, &r, s_put_q, &a->up, 60000);
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    if (rc) {
        ut_chan_put(&a->up, 'F');
        return 10;
    }
    int fd = open(s_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) {
        dprintf(fd, "%s\n", a->role);
        close(fd);
    }
    for (int i = 0; i < 3 && a->phases[i]; i++)
        if (s_phase_call(s, lease, a->phases[i]) != 0) {
            ut_chan_put(&a->up, 'F');
            return 11;
        }
    ut_chan_put(&a->up, 'G');
    for (;;) {
        int c = ut_chan_get(&a->down, 120000);
        if (c != 'r' && c != 'p')
            return 0;
        rc = c == 'r' ? ut_release(s, lease) : s_phase_call(s, lease, "poke");
        ut_chan_put(&a->up, rc == 0 ? '0' : rc == UVMLEASE_EREVOKED ? 'v' : 'e');
        if (c == 'r')
            return 0;
    }
}

/* Start an actor and wait for its first report ('G' granted, 'Q' queued). */
static void s_spawn(actor *a, char expect)
{
    if (!a->label)
        a->label = a->role;
    if (!a->timeout_ms)
        a->timeout_ms = UL_TIMEOUT_FOREVER;
    ut_chan_open(&a->up);
    ut_chan_open(&a->down);
    a->pid = ut_fork();
    if (a->pid == 0)
        _exit(s_actor_main(a));
    s_role(a->pid, a->role);
    int c = ut_chan_get(&a->up, 10000);
    cr_assert_eq(c, expect, "%s: reported %c (%d), expected %c", a->role, c > 0 ? c : '?', c,
                 expect);
}

static int s_report(actor *a, int timeout_ms)
{
    return ut_chan_get(&a->up, timeout_ms);
}

static int s_tell(actor *a, char cmd)
{
    ut_chan_put(&a->down, cmd);
    return ut_chan_get(&a->up, 10000);
}

/* The roles in the grant log, in order, joined by spaces. */
static char *s_grant_log(void)
{
    FILE *f = fopen(s_log, "r");
    char *buf = calloc(1, 4096);
    cr_assert(buf);
    if (f) {
        size_t n = fread(buf, 1, 4095, f);
        buf[n] = '\0';
        fclose(f);
    }
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = p[1] ? ' ' : '\0';
    return buf;
}

static bool s_log_has(void *ctx)
{
    char *log = s_grant_log();
    size_t words = *log ? 1 : 0;
    for (char *p = log; *p; p++)
        words += *p == ' ';
    free(log);
    return words >= *(size_t *)ctx;
}

/* ------------------------------------------------------------- masking */

typedef const char *(*mask_fn)(const char *m);

static const char *m_t(const char *m)
{
    (void)m;
    return "<t>";
}

static const char *m_id(const char *m)
{
    (void)m;
    return "<id>";
}

static const char *m_time(const char *m)
{
    (void)m;
    return "<time>";
}

static const char *m_n(const char *m)
{
    (void)m;
    return "<n>";
}

static const char *m_pid(const char *m)
{
    return s_role_of(strtol(m, NULL, 10));
}

static const char *m_uid(const char *m)
{
    return strtol(m, NULL, 10) == (long)getuid() ? "<uid>" : m;
}

/* Replace group grp of every match of the extended regex re with fn(it).
 * Takes text, returns a new string. */
static char *s_sub(char *text, const char *re, int grp, mask_fn fn)
{
    regex_t rx;
    cr_assert_eq(regcomp(&rx, re, REG_EXTENDED | REG_NEWLINE), 0, "bad regex %s", re);
    char *buf = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&buf, &sz);
    cr_assert(f);
    const char *p = text;
    int flags = 0;
    regmatch_t m[8];
    while (*p && regexec(&rx, p, 8, m, flags) == 0 && m[grp].rm_so >= 0) {
        fwrite(p, 1, (size_t)m[grp].rm_so, f);
        char *hit = strndup(p + m[grp].rm_so, (size_t)(m[grp].rm_eo - m[grp].rm_so));
        fputs(fn(hit), f);
        free(hit);
        fwrite(p + m[grp].rm_eo, 1, (size_t)(m[0].rm_eo - m[grp].rm_eo), f);
        size_t adv = (size_t)m[0].rm_eo;
        if (m[0].rm_eo == m[0].rm_so) {
            if (!p[adv])
                break;
            fputc(p[adv], f);
            adv++;
        }
        p += adv;
        flags = REG_NOTBOL;
    }
    fputs(p, f);
    fclose(f);
    regfree(&rx);
    free(text);
    return buf;
}

#define TIME_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

typedef struct colmask {
    const char *title;
    mask_fn fn;
} colmask;

/* Rows are read by column: the one multi-byte character uvmleasectl adds
 * ("…", 3 bytes) stands in as one byte while they are cut into cells. */
#define ELLIPSIS "\xe2\x80\xa6"
#define ONE_COL  '\x01'

static char *s_ellipsis_to_byte(const char *s, size_t len)
{
    char *out = strndup(s, len);
    char *w = out;
    for (const char *p = out; *p;) {
        if (strncmp(p, ELLIPSIS, 3) == 0) {
            *w++ = ONE_COL;
            p += 3;
        } else {
            *w++ = *p++;
        }
    }
    *w = '\0';
    return out;
}

static void s_fputs_cell(FILE *f, const char *cell)
{
    for (; *cell; cell++)
        if (*cell == ONE_COL)
            fputs(ELLIPSIS, f);
        else
            fputc(*cell, f);
}

/* The cell of a row under a title at [ts, te): anchored at ts (left-
 * aligned) or at te (right-aligned); cells are two spaces apart. */
static char *s_cell_at(const char *row, size_t len, size_t ts, size_t te)
{
    if (ts < len && row[ts] != ' ' && (ts == 0 || row[ts - 1] == ' ')) {
        size_t j = ts;
        while (j < len && !(row[j] == ' ' && (j + 1 >= len || row[j + 1] == ' ')))
            j++;
        return strndup(row + ts, j - ts);
    }
    if (te <= len && te > 0 && row[te - 1] != ' ' && (te == len || row[te] == ' ')) {
        size_t j = te;
        while (j > 0 && !(row[j - 1] == ' ' && (j < 2 || row[j - 2] == ' ')))
            j--;
        return strndup(row + j, te - j);
    }
    return NULL;
}

/*
 * Normalize the table whose header's first title is first: the header
 * stays as printed; each row (up to a blank line) is checked against the
 * header's columns and becomes its cells joined by " | ", masked per
 * masks (a "-" cell is kept). Takes text, returns a new string.
 */
static char *s_table(char *text, const char *first, const colmask *masks)
{
    char *buf = NULL;
    size_t sz = 0;
    FILE *f = open_memstream(&buf, &sz);
    cr_assert(f);
    bool in = false, found = false;
    size_t ts[16], te[16];
    char titles[16][24];
    int nt = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (!in) {
            const char *q = p;
            while (q < p + len && *q == ' ')
                q++;
            size_t tl = strcspn(q, " \n");
            if (!found && tl == strlen(first) && strncmp(q, first, tl) == 0) {
                found = in = true;
                nt = 0;
                for (size_t i = 0; i < len && nt < 16;) {
                    if (p[i] == ' ') {
                        i++;
                        continue;
                    }
                    size_t j = i;
                    while (j < len && p[j] != ' ')
                        j++;
                    ts[nt] = i;
                    te[nt] = j;
                    snprintf(titles[nt], sizeof titles[nt], "%.*s", (int)(j - i), p + i);
                    nt++;
                    i = j;
                }
            }
            fwrite(p, 1, len, f);
        } else if (len == 0) {
            in = false;
        } else {
            char *row = s_ellipsis_to_byte(p, len);
            size_t rlen = strlen(row);
            for (int c = 0; c < nt; c++) {
                char *cell = s_cell_at(row, rlen, ts[c], te[c]);
                cr_assert(cell, "row not aligned under column %s:\n%.*s\n%s", titles[c], (int)len,
                          p, text);
                const char *shown = cell;
                for (const colmask *m = masks; m && m->title; m++)
                    if (strcmp(m->title, titles[c]) == 0 && strcmp(cell, "-") != 0)
                        shown = m->fn(cell);
                if (c)
                    fputs(" | ", f);
                s_fputs_cell(f, shown);
                free(cell);
            }
            free(row);
        }
        if (nl)
            fputc('\n', f);
        p = nl ? nl + 1 : p + len;
    }
    fclose(f);
    cr_assert(found, "no table headed %s in:\n%s", first, text);
    free(text);
    return buf;
}

static void s_text_golden(const char *got, const char *expected)
{
    cr_assert_str_eq(got, expected,
                     "text differs from the golden\n--- got (masked):\n%s"
                     "--- expected:\n%s",
                     got, expected);
}

static json_t *s_parse(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    cr_assert(v, "not JSON (%s, line %d):\n%s", e.text, e.line, text);
    return v;
}

static bool s_key_in(const char *k, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(k, *set) == 0)
            return true;
    return false;
}

static void s_mask_json(json_t *v)
{
    static const char *const pids[] = {"pid", "child_pid", NULL};
    static const char *const ids[] = {"lease", "fence", NULL};
    static const char *const times[] = {"held_ms",     "phase_ms", "waited_ms",
                                        "duration_ms", "at",       NULL};
    size_t i;
    json_t *x;
    if (json_is_array(v)) {
        json_array_foreach(v, i, x) s_mask_json(x);
        return;
    }
    if (!json_is_object(v))
        return;
    const char *k;
    void *tmp;
    json_object_foreach_safe(v, tmp, k, x)
    {
        if (!json_is_integer(x)) {
            s_mask_json(x);
            continue;
        }
        long n = (long)json_integer_value(x);
        if (s_key_in(k, pids) && n != 0)
            json_object_set_new(v, k, json_string(s_role_of(n)));
        else if (strcmp(k, "uid") == 0 && n == (long)getuid())
            json_object_set_new(v, k, json_string("<uid>"));
        else if (s_key_in(k, ids))
            json_object_set_new(v, k, json_string("<id>"));
        else if (s_key_in(k, times))
            json_object_set_new(v, k, json_string("<t>"));
    }
}

static void s_json_golden(const char *text, const char *expected)
{
    json_t *got = s_parse(text);
    s_mask_json(got);
    json_t *exp = s_parse(expected);
    char *g = json_dumps(got, JSON_INDENT(2) | JSON_SORT_KEYS);
    char *x = json_dumps(exp, JSON_INDENT(2) | JSON_SORT_KEYS);
    cr_assert(json_equal(got, exp),
              "JSON differs from the golden\n--- got (masked):\n%s\n"
              "--- expected:\n%s",
              g, x);
    free(g);
    free(x);
    json_decref(got);
    json_decref(exp);
}

/* -------------------------------------------------------- text masking */

static const colmask s_list_masks[] = {
    {"PID", m_pid}, {"IN-PHASE", m_t}, {"HELD", m_t}, {"FENCE", m_id}, {NULL, NULL}};

static char *s_mask_list(const char *out)
{
    return s_table(strdup(out), "UVM", s_list_masks);
}

static char *s_mask_show(const char *out)
{
    static const colmask queue[] = {{"PID", m_pid}, {"WAITED", m_t}, {NULL, NULL}};
    char *t = strdup(out);
    t = s_sub(t, TIME_RE, 0, m_time);
    t = s_sub(t, "pid ([0-9]+)", 1, m_pid);
    t = s_sub(t, "uid ([0-9]+)", 1, m_uid);
    t = s_sub(t, "^  (lease|fence) +([0-9]+)$", 2, m_id);
    t = s_sub(t, "^  held +([^ ]+)$", 1, m_t);
    t = s_sub(t, " for ([^ ]+)$", 1, m_t);
    t = s_sub(t, "\\(([^ ]+) ago\\)$", 1, m_t);
    if (strstr(t, "\n   #"))
        t = s_table(t, "#", queue);
    return t;
}

static char *s_mask_watch_line(const char *line)
{
    char *t = strdup(line);
    t = s_sub(t, "^" TIME_RE, 0, m_time);
    t = s_sub(t, " pid=([0-9]+)", 1, m_pid);
    t = s_sub(t, " (lease|fence)=([0-9]+)", 2, m_id);
    t = s_sub(t, " (waited|held)=([^ ]+)", 2, m_t);
    return t;
}

/* ------------------------------------------------- watch as a process */

typedef struct reader {
    int fd;
    bool eof;
    size_t len;
    char buf[1 << 16];
} reader;

/* The next whole line before the deadline (monotonic ms), or NULL. */
static char *s_readline(reader *r, uint64_t deadline)
{
    for (;;) {
        char *nl = memchr(r->buf, '\n', r->len);
        if (nl) {
            size_t n = (size_t)(nl - r->buf);
            char *line = strndup(r->buf, n);
            memmove(r->buf, nl + 1, r->len - n - 1);
            r->len -= n + 1;
            return line;
        }
        uint64_t now = ul_now_ms();
        if (r->eof || now >= deadline || r->len + 1 >= sizeof r->buf)
            return NULL;
        struct pollfd p = {.fd = r->fd, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        ssize_t n = read(r->fd, r->buf + r->len, sizeof r->buf - r->len - 1);
        if (n <= 0)
            r->eof = true;
        else
            r->len += (size_t)n;
    }
}

typedef struct watcher {
    pid_t pid;
    int errfd;
    reader *out;
} watcher;

static void s_watch_start(watcher *w, bool json)
{
    char bin[512];
    s_bin(bin, sizeof bin);
    int p[2];
    cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
    w->errfd = memfd_create("watch-stderr", MFD_CLOEXEC);
    cr_assert(w->errfd >= 0);
    w->out = calloc(1, sizeof *w->out);
    cr_assert(w->out);
    w->pid = ut_fork();
    if (w->pid == 0) {
        if (dup2(p[1], 1) < 0 || dup2(w->errfd, 2) < 0)
            _exit(90);
        const char *argv[] = {"uvmleasectl",         "--endpoint", s_ep, json ? "--json" : "watch",
                              json ? "watch" : NULL, NULL};
        execv(bin, (char *const *)argv);
        _exit(93);
    }
    close(p[1]);
    w->out->fd = p[0];
}

/* Until the watcher prints events, take and give back a probe lease; then
 * consume the probe's lines up to its release. */
static void s_watch_ready(watcher *w)
{
    void *s = ut_dealer(s_ep);
    uint64_t deadline = ul_now_ms() + 10000;
    bool seen = false;
    while (!seen && ul_now_ms() < deadline) {
        ul_reply r;
        memset(&r, 0, sizeof r);
        cr_assert_eq(ut_acquire(s, "probe@vm", true, "probe", 0, &r, NULL, NULL, 5000), 0);
        uint64_t lease = r.lease;
        ul_reply_free(&r);
        cr_assert_eq(ut_release(s, lease), 0);
        char *line = s_readline(w->out, ul_now_ms() + 300);
        while (line) {
            bool probe = strstr(line, "probe@vm") != NULL;
            bool release = probe && strstr(line, "release") != NULL;
            seen = seen || probe;
            free(line);
            if (release)
                break;
            line = s_readline(w->out, ul_now_ms() + 2000);
        }
    }
    ut_dealer_close(s);
    cr_assert(seen, "watch printed no event within 10 s");
}

/* The lines that mention pid, until the one for which last() is true. */
static char **s_watch_lines(watcher *w, pid_t pid, bool (*last)(const char *), int *n)
{
    char **lines = calloc(16, sizeof *lines);
    char key[64];
    *n = 0;
    uint64_t deadline = ul_now_ms() + 10000;
    for (;;) {
        char *line = s_readline(w->out, deadline);
        cr_assert(line, "watch: no more lines (%d so far)", *n);
        snprintf(key, sizeof key, "pid=%d ", (int)pid);
        char jkey[64];
        snprintf(jkey, sizeof jkey, "\"pid\":%d,", (int)pid);
        if (!strstr(line, key) && !strstr(line, jkey)) {
            free(line);
            continue;
        }
        cr_assert_lt(*n, 16);
        lines[(*n)++] = line;
        if (last(line))
            return lines;
    }
}

static bool s_is_release(const char *line)
{
    return strstr(line, "  release ") || strstr(line, "\"type\":\"release\"");
}

/* Signal the watcher, read its output to the end; its exit code. */
static int s_watch_stop(watcher *w, int sig)
{
    kill(w->pid, sig);
    int code = ut_wait_code(w->pid, 10000);
    char *line;
    while ((line = s_readline(w->out, ul_now_ms() + 2000)))
        free(line);
    return code;
}

/* The watcher's stderr; the watcher is done with. */
static char *s_watch_end(watcher *w)
{
    close(w->out->fd);
    free(w->out);
    w->out = NULL;
    return s_read_all(w->errfd);
}

/* ================================================================ list */

Test(ctl, list_text_and_json_golden)
{
    s_start(NULL);
    actor h = {
        .role = "holder", .uvm = HEXUVM, .conf = true, .phases = {"cim-mount", "scratch-attach"}};
    actor w1 = {.role = "w1", .uvm = HEXUVM, .conf = true};
    actor w2 = {.role = "w2", .uvm = HEXUVM, .conf = true, .label = "q\"uote\\back"};
    actor s1 = {.role = "web1", .uvm = "std-0001@vm", .phases = {"guest-create"}};
    actor s2 = {.role = "web2", .uvm = "std-0001@vm"};
    actor l1 = {.role = "long", .uvm = "uvm-with-a-rather-long-name", .conf = true};
    s_spawn(&h, 'G');
    s_spawn(&w1, 'Q');
    s_spawn(&w2, 'Q');
    s_spawn(&s1, 'G');
    s_spawn(&s2, 'G');
    s_spawn(&l1, 'G');
    run r;
    CTLE(&r, "drain", "drained@vm", "--reason", "teardown");
    s_expect(&r, 0, "drain");
    s_run_free(&r);

    CTLE(&r, "list");
    s_expect(&r, 0, "list");
    cr_assert_str_empty(r.err);
    char *t = s_mask_list(r.out);
    s_text_golden(
        t,
        "UVM                   CLASS         STATE            PID  COMM             LABEL        "
        "         PHASE           IN-PHASE      HELD             FENCE  WAITERS\n"
        "8c1f2a9e0b7d4e3f…@vm | confidential | held | holder | test_ctl | holder | scratch-attach"
        " | <t> | <t> | <id> | 2\n"
        "drained@vm | - | draining | - | - | - | - | - | - | - | 0\n"
        "std-0001@vm | standard | held | web1 | test_ctl | web1 | guest-create | <t> | <t> | <id>"
        " | 0\n"
        "std-0001@vm | standard | held | web2 | test_ctl | web2 | - | - | <t> | <id> | 0\n"
        "uvm-with-a-rather-l… | confidential | held | long | test_ctl | long | - | - | <t> | <id> "
        "| 0\n");
    free(t);
    s_run_free(&r);

    CTLE(&r, "list", "--wide");
    s_expect(&r, 0, "list --wide");
    cr_assert(strstr(r.out, HEXUVM "  confidential"), "--wide shortened the ID:\n%s", r.out);
    cr_assert(strstr(r.out, "uvm-with-a-rather-long-name  confidential"));
    s_run_free(&r);

    /* The table escapes client text; JSON carries it as it is. */
    CTLE(&r, "show", HEXUVM);
    cr_assert(strstr(r.out, "q\\\"uote\\\\back"), "label not escaped:\n%s", r.out);
    s_run_free(&r);

    CTLE(&r, "list", "--json");
    s_expect(&r, 0, "list --json");
    const char *holder = "\"uid\":\"<uid>\",\"comm\":\"test_ctl\",\"lease\":\"<id>\","
                         "\"fence\":\"<id>\",\"held_ms\":\"<t>\",\"phase_ms\":\"<t>\","
                         "\"overdue\":false,\"child_pid\":0";
    char exp[4096];
    snprintf(exp, sizeof exp,
             "[{\"uvm\":\"" HEXUVM "\",\"class\":\"confidential\",\"holders\":["
             "{\"pid\":\"holder\",\"label\":\"holder\",\"phase\":\"scratch-attach\",%s}],"
             "\"waiter_count\":2,\"draining\":false,\"quarantine_ms_left\":0},"
             "{\"uvm\":\"drained@vm\",\"class\":\"standard\",\"holders\":[],\"waiter_count\":0,"
             "\"draining\":true,\"quarantine_ms_left\":0},"
             "{\"uvm\":\"std-0001@vm\",\"class\":\"standard\",\"holders\":["
             "{\"pid\":\"web1\",\"label\":\"web1\",\"phase\":\"guest-create\",%s},"
             "{\"pid\":\"web2\",\"label\":\"web2\",\"phase\":\"\",%s}],"
             "\"waiter_count\":0,\"draining\":false,\"quarantine_ms_left\":0},"
             "{\"uvm\":\"uvm-with-a-rather-long-name\",\"class\":\"confidential\",\"holders\":["
             "{\"pid\":\"long\",\"label\":\"long\",\"phase\":\"\",%s}],"
             "\"waiter_count\":0,\"draining\":false,\"quarantine_ms_left\":0}]",
             holder, holder, holder, holder);
    s_json_golden(r.out, exp);
    s_run_free(&r);
    s_stop();
}

static bool s_overdue_listed(void *ctx)
{
    (void)ctx;
    void *s = ut_dealer(s_ep);
    ul_request q;
    ul_reply r;
    ut_req(&q, UL_OP_LIST);
    memset(&r, 0, sizeof r);
    bool yes = false;
    if (ut_call(s, &q, &r, 5000) == 0)
        for (uint32_t i = 0; i < r.n_uvms; i++)
            if (!strcmp(r.uvms[i].uvm, "late@vm") && r.uvms[i].n_holders == 1)
                yes = r.uvms[i].holders[0].overdue;
    ul_reply_free(&r);
    ut_dealer_close(s);
    return yes;
}

Test(ctl, list_states_overdue_and_quarantined)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.hold_warn_ms = 100;
    cfg.quarantine_ms = 600000;
    s_start(&cfg);
    actor late = {.role = "late", .uvm = "late@vm", .conf = true, .phases = {"guest-create"}};
    actor dead = {.role = "dead", .uvm = "quar@vm", .conf = true};
    actor next = {.role = "next", .uvm = "quar@vm", .conf = true};
    s_spawn(&late, 'G');
    s_spawn(&dead, 'G');
    s_spawn(&next, 'Q');
    /* The holder dies: its lease ends ("holder-exit") and the UVM waits out
     * its quarantine before the next grant. */
    kill(dead.pid, SIGKILL);
    cr_assert_eq(ut_wait_code(dead.pid, 5000), 1000 + SIGKILL);
    cr_assert(ut_wait_until(s_overdue_listed, NULL, 10000), "late@vm never became overdue");
    run r;
    CTLE(&r, "list");
    s_expect(&r, 0, "list");
    char *t = s_mask_list(r.out);
    s_text_golden(t, "UVM                   CLASS         STATE            PID  COMM            "
                     " LABEL                 PHASE           IN-PHASE      HELD             FENCE"
                     "  WAITERS\n"
                     "late@vm | confidential | overdue | late | test_ctl | late | guest-create | "
                     "<t> | <t> | <id> | 0\n"
                     "quar@vm | confidential | quarantined | - | - | - | - | - | - | - | 1\n");
    free(t);
    s_run_free(&r);
    CTLE(&r, "--json", "show", "quar@vm");
    s_expect(&r, 0, "show");
    json_t *v = s_parse(r.out);
    cr_assert_gt(json_integer_value(json_object_get(v, "quarantine_ms_left")), 0);
    json_object_set_new(v, "quarantine_ms_left", json_string("<t>"));
    char *d = json_dumps(v, 0);
    s_json_golden(d, "{\"uvm\":\"quar@vm\",\"class\":\"confidential\",\"holders\":[],"
                     "\"waiter_count\":1,\"draining\":false,\"quarantine_ms_left\":\"<t>\","
                     "\"waiters\":[{\"pid\":\"next\",\"uid\":\"<uid>\",\"comm\":\"test_ctl\","
                     "\"label\":\"next\",\"waited_ms\":\"<t>\",\"timeout_ms\":-1}],"
                     "\"last_release\":{\"reason\":\"holder-exit\",\"pid\":\"dead\","
                     "\"at\":\"<t>\"}}");
    free(d);
    json_decref(v);
    s_run_free(&r);
    s_stop();
}

Test(ctl, list_follows_every_page)
{
    s_start(NULL);
    ut_chan done;
    ut_chan_open(&done);
    pid_t p = ut_fork();
    if (p == 0) {
        void *s = ut_dealer(s_ep);
        for (int i = 0; i < 300; i++) {
            char id[32];
            snprintf(id, sizeof id, "page-%03d@vm", i);
            ul_reply r;
            memset(&r, 0, sizeof r);
            if (ut_acquire(s, id, true, "", 0, &r, NULL, NULL, 5000))
                _exit(10);
            ul_reply_free(&r);
        }
        ut_chan_put(&done, 'G');
        pause();
        _exit(0);
    }
    cr_assert_eq(ut_chan_get(&done, 30000), 'G');
    run r;
    CTLE(&r, "--json", "list");
    s_expect(&r, 0, "list --json");
    json_t *v = s_parse(r.out);
    cr_assert_eq(json_array_size(v), 300, "%zu UVMs listed, 300 held", json_array_size(v));
    for (size_t i = 0; i < 300; i++) {
        char id[32];
        snprintf(id, sizeof id, "page-%03zu@vm", i);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(v, i), "uvm")), id);
    }
    json_decref(v);
    s_run_free(&r);
    CTLE(&r, "list");
    s_expect(&r, 0, "list");
    size_t lines = 0;
    for (const char *c = r.out; *c; c++)
        lines += *c == '\n';
    cr_assert_eq(lines, 301, "header + 300 rows expected, got %zu lines", lines);
    s_run_free(&r);
    kill(p, SIGKILL);
    ut_wait(p, 5000);
    s_stop();
}

Test(ctl, global_options_before_or_after_the_command)
{
    s_start(NULL);
    actor h = {.role = "holder", .uvm = "g@vm", .conf = true};
    s_spawn(&h, 'G');
    char ep_eq[300];
    snprintf(ep_eq, sizeof ep_eq, "--endpoint=%s", s_ep);
    run a, b, c;
    CTL(&a, "--json", "--endpoint", s_ep, "list");
    CTL(&b, "list", "--json", "--endpoint", s_ep);
    CTL(&c, "list", ep_eq, "--json");
    s_expect(&a, 0, "--json --endpoint E list");
    s_expect(&b, 0, "list --json --endpoint E");
    s_expect(&c, 0, "list --endpoint=E --json");
    const char *exp = "[{\"uvm\":\"g@vm\",\"class\":\"confidential\",\"holders\":[{\"pid\":"
                      "\"holder\",\"uid\":\"<uid>\",\"comm\":\"test_ctl\",\"label\":\"holder\","
                      "\"lease\":\"<id>\",\"fence\":\"<id>\",\"held_ms\":\"<t>\",\"phase\":\"\","
                      "\"phase_ms\":\"<t>\",\"overdue\":false,\"child_pid\":0}],"
                      "\"waiter_count\":0,\"draining\":false,\"quarantine_ms_left\":0}]";
    s_json_golden(a.out, exp);
    s_json_golden(b.out, exp);
    s_json_golden(c.out, exp);
    s_run_free(&a);
    s_run_free(&b);
    s_run_free(&c);
    CTL(&a, "show", "g@vm", "--endpoint", s_ep, "--json");
    s_expect(&a, 0, "show UVM --endpoint E --json");
    json_t *v = s_parse(a.out);
    cr_assert_str_eq(json_string_value(json_object_get(v, "uvm")), "g@vm");
    json_decref(v);
    s_run_free(&a);
    s_stop();
}

/* ================================================================ show */

Test(ctl, show_golden_and_queue_order_is_grant_order)
{
    s_start(NULL);
    actor h0 = {.role = "first", .uvm = HEXUVM, .conf = true};
    actor h = {
        .role = "holder", .uvm = HEXUVM, .conf = true, .phases = {"cim-mount", "scratch-attach"}};
    actor w[3] = {
        {.role = "w1", .uvm = HEXUVM, .conf = true},
        {.role = "w2", .uvm = HEXUVM, .conf = true, .timeout_ms = 600000},
        {.role = "w3", .uvm = HEXUVM, .conf = true, .label = ""},
    };
    s_spawn(&h0, 'G');
    s_spawn(&h, 'Q');
    for (int i = 0; i < 3; i++)
        s_spawn(&w[i], 'Q');
    /* first releases: holder is granted, and "first" becomes the last
     * release. */
    cr_assert_eq(s_tell(&h0, 'r'), '0');
    cr_assert_eq(s_report(&h, 10000), 'G');

    run r;
    CTLE(&r, "show", HEXUVM);
    s_expect(&r, 0, "show");
    cr_assert_str_empty(r.err);
    char *t = s_mask_show(r.out);
    s_text_golden(t, "uvm           " HEXUVM "\n"
                     "class         confidential\n"
                     "state         held\n"
                     "draining      no\n"
                     "quarantine    none\n"
                     "holders       1\n"
                     "waiters       3\n"
                     "\n"
                     "holder        pid holder, uid <uid>, comm test_ctl\n"
                     "  label       \"holder\"\n"
                     "  lease       <id>\n"
                     "  fence       <id>\n"
                     "  held        <t>\n"
                     "  phase       \"scratch-attach\" for <t>\n"
                     "  overdue     no\n"
                     "  history     <time>  \"cim-mount\"\n"
                     "              <time>  \"scratch-attach\"\n"
                     "\n"
                     "queue         in grant order\n"
                     "   #      PID  COMM             LABEL                               WAITED"
                     "   TIMEOUT\n"
                     "1 | w1 | test_ctl | w1 | <t> | forever\n"
                     "2 | w2 | test_ctl | w2 | <t> | 10m00s\n"
                     "3 | w3 | test_ctl | - | <t> | forever\n"
                     "\n"
                     "last release  released by pid first at <time> (<t> ago)\n");
    free(t);
    s_run_free(&r);

    CTLE(&r, "--json", "show", HEXUVM);
    s_expect(&r, 0, "show --json");
    json_t *v = s_parse(r.out);
    /* The phase history is in order, with times. */
    json_t *ph = json_object_get(json_array_get(json_object_get(v, "holders"), 0), "phases");
    cr_assert_eq(json_array_size(ph), 2);
    cr_assert_leq(json_integer_value(json_object_get(json_array_get(ph, 0), "at")),
                  json_integer_value(json_object_get(json_array_get(ph, 1), "at")));
    json_decref(v);
    s_json_golden(
        r.out,
        "{\"uvm\":\"" HEXUVM "\",\"class\":\"confidential\",\"holders\":[{\"pid\":\"holder\","
        "\"uid\":\"<uid>\",\"comm\":\"test_ctl\",\"label\":\"holder\",\"lease\":\"<id>\","
        "\"fence\":\"<id>\",\"held_ms\":\"<t>\",\"phase\":\"scratch-attach\",\"phase_ms\":"
        "\"<t>\",\"overdue\":false,\"child_pid\":0,\"phases\":[{\"phase\":\"cim-mount\",\"at\":"
        "\"<t>\"},{\"phase\":\"scratch-attach\",\"at\":\"<t>\"}]}],\"waiter_count\":3,"
        "\"draining\":false,\"quarantine_ms_left\":0,\"waiters\":["
        "{\"pid\":\"w1\",\"uid\":\"<uid>\",\"comm\":\"test_ctl\",\"label\":\"w1\","
        "\"waited_ms\":\"<t>\",\"timeout_ms\":-1},"
        "{\"pid\":\"w2\",\"uid\":\"<uid>\",\"comm\":\"test_ctl\",\"label\":\"w2\","
        "\"waited_ms\":\"<t>\",\"timeout_ms\":600000},"
        "{\"pid\":\"w3\",\"uid\":\"<uid>\",\"comm\":\"test_ctl\",\"label\":\"\","
        "\"waited_ms\":\"<t>\",\"timeout_ms\":-1}],"
        "\"last_release\":{\"reason\":\"released\",\"pid\":\"first\",\"at\":\"<t>\"}}");
    s_run_free(&r);

    /* Release one holder after the other: the grants follow the queue as
     * show printed it. */
    actor *by_role[] = {&h, &w[0], &w[1], &w[2]};
    for (size_t n = 3; n <= 6; n++) {
        char *log = s_grant_log();
        const char *last = strrchr(log, ' ') ? strrchr(log, ' ') + 1 : log;
        actor *cur = NULL;
        for (int i = 0; i < 4; i++)
            if (!strcmp(by_role[i]->role, last))
                cur = by_role[i];
        cr_assert(cur, "unknown last grant '%s'", last);
        free(log);
        if (cur != &h)
            cr_assert_eq(s_report(cur, 10000), 'G', "%s did not report its grant", cur->role);
        int said = s_tell(cur, 'r');
        cr_assert_eq(said, '0', "%s: release answered %c (%d)", cur->role, said > 0 ? said : '?',
                     said);
        if (n < 6)
            cr_assert(ut_wait_until(s_log_has, &n, 10000), "no grant after a release");
    }
    char *log = s_grant_log();
    cr_assert_str_eq(log, "first holder w1 w2 w3", "grant order differs from show's queue");
    free(log);
    s_stop();
}

Test(ctl, show_unknown_uvm_fails)
{
    s_start(NULL);
    run r;
    CTLE(&r, "show", "nothing@vm");
    s_expect(&r, 1, "show unknown");
    cr_assert_str_empty(r.out);
    cr_assert_str_eq(r.err, "uvmleasectl: show nothing@vm: the broker has no lease, waiter or "
                            "drain for that UVM\n");
    s_run_free(&r);
    s_stop();
}

/* =============================================================== watch */

Test(ctl, watch_sees_grant_phase_release_and_stops_on_sigint)
{
    s_start(NULL);
    watcher w;
    s_watch_start(&w, false);
    s_watch_ready(&w);
    actor a = {
        .role = "shim", .uvm = "watch@vm", .conf = true, .label = "ctr-1", .phases = {"cim-mount"}};
    s_spawn(&a, 'G');
    cr_assert_eq(s_tell(&a, 'r'), '0');
    int n;
    char **lines = s_watch_lines(&w, a.pid, s_is_release, &n);
    char *all = calloc(1, 4096);
    for (int i = 0; i < n; i++) {
        char *m = s_mask_watch_line(lines[i]);
        strcat(all, m);
        strcat(all, "\n");
        free(m);
        free(lines[i]);
    }
    free(lines);
    s_text_golden(all, "<time>  grant          uvm=watch@vm pid=shim label=\"ctr-1\" lease=<id> "
                       "fence=<id> waited=<t>\n"
                       "<time>  phase          uvm=watch@vm pid=shim label=\"ctr-1\" "
                       "phase=\"cim-mount\" lease=<id> fence=<id>\n"
                       "<time>  release        uvm=watch@vm pid=shim label=\"ctr-1\" "
                       "phase=\"cim-mount\" reason=\"released\" lease=<id> fence=<id> held=<t>\n");
    free(all);
    cr_assert_eq(s_watch_stop(&w, SIGINT), 0, "watch did not exit 0 on SIGINT");
    char *err = s_watch_end(&w);
    cr_assert_str_empty(err);
    free(err);
    s_stop();
}

Test(ctl, watch_json_lines_and_stops_on_sigterm)
{
    s_start(NULL);
    watcher w;
    s_watch_start(&w, true);
    s_watch_ready(&w);
    actor a = {.role = "shim",
               .uvm = "watch@vm",
               .conf = true,
               .label = "ctr-2",
               .phases = {"guest-create"}};
    s_spawn(&a, 'G');
    cr_assert_eq(s_tell(&a, 'r'), '0');
    int n;
    char **lines = s_watch_lines(&w, a.pid, s_is_release, &n);
    cr_assert_eq(n, 3);
    const char *exp[3] = {
        "{\"type\":\"grant\",\"at\":\"<t>\",\"uvm\":\"watch@vm\",\"pid\":\"shim\",\"label\":"
        "\"ctr-2\",\"lease\":\"<id>\",\"fence\":\"<id>\",\"duration_ms\":\"<t>\"}",
        "{\"type\":\"phase\",\"at\":\"<t>\",\"uvm\":\"watch@vm\",\"pid\":\"shim\",\"label\":"
        "\"ctr-2\",\"phase\":\"guest-create\",\"lease\":\"<id>\",\"fence\":\"<id>\"}",
        "{\"type\":\"release\",\"at\":\"<t>\",\"uvm\":\"watch@vm\",\"pid\":\"shim\",\"label\":"
        "\"ctr-2\",\"phase\":\"guest-create\",\"reason\":\"released\",\"lease\":\"<id>\","
        "\"fence\":\"<id>\",\"duration_ms\":\"<t>\"}",
    };
    for (int i = 0; i < n; i++) {
        cr_assert_null(strchr(lines[i], '\n'));
        s_json_golden(lines[i], exp[i]);
        free(lines[i]);
    }
    free(lines);
    cr_assert_eq(s_watch_stop(&w, SIGTERM), 0, "watch did not exit 0 on SIGTERM");
    free(s_watch_end(&w));
    s_stop();
}

Test(ctl, watch_exits_1_when_the_broker_goes_away)
{
    s_start(NULL);
    watcher w;
    s_watch_start(&w, false);
    s_watch_ready(&w);
    ut_broker_stop(&s_b, s_dir);
    int code = ut_wait_code(w.pid, 15000);
    cr_assert_eq(code, 1, "watch exit %d after the broker stopped", code);
    char *err = s_watch_end(&w);
    cr_assert(strstr(err, "watch: the broker stopped answering"), "stderr: %s", err);
    free(err);
}

/* =============================================================== stats */

/* One lease with two phases, and one try-once acquire refused meanwhile. */
static void s_stats_activity(void)
{
    actor a = {
        .role = "a", .uvm = "stats@vm", .conf = true, .phases = {"cim-mount", "scratch-attach"}};
    s_spawn(&a, 'G');
    void *s = ut_dealer(s_ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(ut_acquire(s, "stats@vm", true, "", 0, &r, NULL, NULL, 5000), UVMLEASE_EBUSY);
    ul_reply_free(&r);
    ut_dealer_close(s);
    cr_assert_eq(s_tell(&a, 'r'), '0');
    cr_assert_eq(ut_wait_code(a.pid, 5000), 0);
}

Test(ctl, stats_text_and_json)
{
    s_start(NULL);
    s_stats_activity();
    run r;
    CTLE(&r, "stats");
    s_expect(&r, 0, "stats");
    static const colmask hist[] = {
        {"MEAN", m_t}, {"P50", m_t}, {"P90", m_t}, {"P99", m_t}, {NULL, NULL}};
    char *t = s_table(strdup(r.out), "COUNTER", NULL);
    t = s_table(t, "GAUGE", NULL);
    t = s_table(t, "HISTOGRAM", hist);
    t = s_sub(t, "^processes \\| ([0-9]+)$", 1, m_n);
    s_text_golden(
        t, "COUNTER                                                  VALUE\n"
           "grants_total | 1\n"
           "releases_total{reason=\"released\"} | 1\n"
           "releases_total{reason=\"holder-exit\"} | 0\n"
           "releases_total{reason=\"revoked\"} | 0\n"
           "releases_total{reason=\"killed\"} | 0\n"
           "releases_total{reason=\"undeliverable\"} | 0\n"
           "timeouts_total | 0\n"
           "cancels_total | 0\n"
           "drained_waiters_total | 0\n"
           "overdue_total | 0\n"
           "busy_refusals_total | 1\n"
           "undelivered_total{kind=\"reply\"} | 0\n"
           "undelivered_total{kind=\"grant\"} | 0\n"
           "undelivered_total{kind=\"acquire-failed\"} | 0\n"
           "undelivered_total{kind=\"revoked\"} | 0\n"
           "undelivered_total{kind=\"event\"} | 0\n"
           "journal_write_failures_total | 0\n"
           "grants_held_back_total | 0\n"
           "\n"
           "GAUGE                                                    VALUE\n"
           "holders | 0\n"
           "waiters | 0\n"
           "uvms | 0\n"
           "processes | <n>\n"
           "journal_healthy | 1\n"
           "journal_slots | 16385\n"
           "journal_slots_used | 0\n"
           "\n"
           "HISTOGRAM                                                COUNT      MEAN       P50"
           "       P90       P99\n"
           "wait_seconds | 1 | <t> | <t> | <t> | <t>\n"
           "hold_seconds | 1 | <t> | <t> | <t> | <t>\n"
           "handoff_seconds | 0 | - | - | - | -\n"
           "phase_seconds{phase=\"cim-mount\"} | 1 | <t> | <t> | <t> | <t>\n"
           "phase_seconds{phase=\"scratch-attach\"} | 1 | <t> | <t> | <t> | <t>\n"
           "phase_seconds{phase=\"combine-layers\"} | 0 | - | - | - | -\n"
           "phase_seconds{phase=\"guest-create\"} | 0 | - | - | - | -\n"
           "phase_seconds{phase=\"other\"} | 0 | - | - | - | -\n");
    free(t);
    s_run_free(&r);

    CTLE(&r, "stats", "--json");
    s_expect(&r, 0, "stats --json");
    json_t *v = s_parse(r.out);
    json_t *x;
    size_t i;
    uint64_t grants = 0, busy = 0;
    json_array_foreach(json_object_get(v, "counters"), i, x)
    {
        const char *name = json_string_value(json_object_get(x, "name"));
        if (!strcmp(name, "grants_total"))
            grants = (uint64_t)json_integer_value(json_object_get(x, "value"));
        if (!strcmp(name, "busy_refusals_total"))
            busy = (uint64_t)json_integer_value(json_object_get(x, "value"));
        cr_assert(json_is_object(json_object_get(x, "labels")));
    }
    cr_assert_eq(grants, 1);
    cr_assert_eq(busy, 1);
    bool gauges = false;
    json_array_foreach(json_object_get(v, "gauges"), i, x)
    {
        gauges |= !strcmp(json_string_value(json_object_get(x, "name")), "holders");
    }
    cr_assert(gauges, "no holders gauge");
    bool hold = false;
    json_array_foreach(json_object_get(v, "histograms"), i, x)
    {
        if (strcmp(json_string_value(json_object_get(x, "name")), "hold_seconds") != 0)
            continue;
        hold = true;
        cr_assert_eq(json_integer_value(json_object_get(x, "count")), 1);
        json_t *b = json_object_get(x, "buckets");
        cr_assert_eq(json_array_size(b), 18);
        cr_assert_eq(json_integer_value(json_object_get(json_array_get(b, 0), "le_us")), 1000);
        json_int_t sum = 0;
        size_t k;
        json_t *bk;
        json_array_foreach(b, k, bk) sum += json_integer_value(json_object_get(bk, "count"));
        cr_assert_eq(sum, 1, "per-bucket counts add up to the count");
    }
    cr_assert(hold);
    json_decref(v);
    s_run_free(&r);
    s_stop();
}

Test(ctl, stats_prometheus_passes_promtool)
{
    s_start(NULL);
    s_stats_activity();
    run r;
    CTLE(&r, "stats", "--prometheus");
    s_expect(&r, 0, "stats --prometheus");
    const char *must[] = {
        "# HELP uvmlease_grants_total ",
        "# TYPE uvmlease_grants_total counter\nuvmlease_grants_total 1\n",
        "uvmlease_releases_total{reason=\"released\"} 1\n",
        "# TYPE uvmlease_holders gauge\nuvmlease_holders 0\n",
        "# TYPE uvmlease_hold_seconds histogram\n",
        "uvmlease_hold_seconds_bucket{le=\"0.001\"} ",
        "uvmlease_hold_seconds_bucket{le=\"+Inf\"} 1\nuvmlease_hold_seconds_sum ",
        "uvmlease_hold_seconds_count 1\n",
        "uvmlease_phase_seconds_bucket{phase=\"cim-mount\",le=\"600\"} 1\n",
    };
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        cr_assert(strstr(r.out, must[i]), "missing %s in:\n%s", must[i], r.out);
    /* Buckets are cumulative: never decreasing along a series. */
    char prev_series[128] = "";
    long prev = -1;
    for (const char *line = r.out; *line;) {
        const char *nl = strchr(line, '\n');
        const char *b = strstr(line, "_bucket{");
        if (b && b < nl) {
            const char *le = strstr(line, "le=\"");
            char series[128];
            snprintf(series, sizeof series, "%.*s", (int)(le - line), line);
            long v = strtol(strrchr(line, ' ') + 1, NULL, 10);
            if (!strcmp(series, prev_series))
                cr_assert_geq(v, prev, "bucket count goes down: %.*s", (int)(nl - line), line);
            snprintf(prev_series, sizeof prev_series, "%s", series);
            prev = v;
        }
        line = nl ? nl + 1 : line + strlen(line);
    }

    const char *promtool = "/usr/bin/promtool";
    if (access(promtool, X_OK) != 0) {
        s_run_free(&r);
        s_stop();
        cr_skip_test("promtool (Debian package prometheus) is not installed: the exposition "
                     "format was checked only by the assertions above");
    }
    int in = memfd_create("prom", MFD_CLOEXEC), out = memfd_create("promtool", MFD_CLOEXEC);
    cr_assert(in >= 0 && out >= 0);
    cr_assert_eq(write(in, r.out, strlen(r.out)), (ssize_t)strlen(r.out));
    lseek(in, 0, SEEK_SET);
    pid_t p = ut_fork();
    if (p == 0) {
        if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
            _exit(90);
        execl(promtool, "promtool", "check", "metrics", (char *)NULL);
        _exit(93);
    }
    int code = ut_wait_code(p, 60000);
    char *said = s_read_all(out);
    close(in);
    cr_assert_eq(code, 0, "promtool check metrics failed (%d):\n%s\n--- input:\n%s", code, said,
                 r.out);
    cr_assert_str_empty(said, "promtool complained:\n%s", said);
    free(said);
    s_run_free(&r);
    s_stop();
}

/* ===================================================== admin: as root */

Test(ctl, drain_and_undrain_golden)
{
    s_start(NULL);
    actor h = {.role = "holder", .uvm = "d@vm", .conf = true};
    actor w = {.role = "waiter", .uvm = "d@vm", .conf = true};
    s_spawn(&h, 'G');
    s_spawn(&w, 'Q');
    run r;
    CTLE(&r, "drain", "d@vm", "--reason", "host maintenance");
    s_expect(&r, 0, "drain");
    cr_assert_str_eq(r.out, "drained d@vm: no new grants; its waiters fail, current holders "
                            "finish\n");
    cr_assert_str_empty(r.err);
    s_run_free(&r);
    cr_assert_eq(s_report(&w, 10000), 'F', "the waiter did not fail on the drain");
    CTLE(&r, "list");
    char *t = s_mask_list(r.out);
    s_text_golden(t, "UVM                   CLASS         STATE            PID  COMM            "
                     " LABEL                 PHASE           IN-PHASE      HELD             FENCE"
                     "  WAITERS\n"
                     "d@vm | confidential | draining | holder | test_ctl | holder | - | - | <t> | "
                     "<id> | 0\n");
    free(t);
    s_run_free(&r);
    cr_assert_eq(s_tell(&h, 'r'), '0', "the holder could not finish");

    CTLE(&r, "--json", "undrain", "d@vm", "--reason", "done");
    s_expect(&r, 0, "undrain --json");
    s_json_golden(r.out, "{\"action\":\"undrain\",\"uvm\":\"d@vm\",\"ok\":true,"
                         "\"reason\":\"done\",\"detail\":\"\"}");
    s_run_free(&r);
    CTLE(&r, "--json", "list");
    s_json_golden(r.out, "[]");
    s_run_free(&r);
    CTLE(&r, "drain", "idle@vm");
    s_expect(&r, 0, "drain of an idle UVM");
    s_run_free(&r);
    CTLE(&r, "--json", "drain", "idle@vm");
    s_json_golden(r.out, "{\"action\":\"drain\",\"uvm\":\"idle@vm\",\"ok\":true,"
                         "\"reason\":\"\",\"detail\":\"\"}");
    s_run_free(&r);
    CTLE(&r, "undrain", "idle@vm");
    cr_assert_str_eq(r.out, "undrained idle@vm: grants resume\n");
    s_run_free(&r);
    s_stop();
}

Test(ctl, revoke_grants_the_next_waiter_and_the_holder_learns)
{
    s_start(NULL);
    actor h = {.role = "wedged", .uvm = "rv@vm", .conf = true, .phases = {"guest-create"}};
    actor w = {.role = "next", .uvm = "rv@vm", .conf = true};
    s_spawn(&h, 'G');
    s_spawn(&w, 'Q');
    run r;
    CTLE(&r, "release", "--force", "rv@vm", "--mode", "revoke", "--reason",
         "wedged in guest-create");
    s_expect(&r, 0, "release --force --mode revoke");
    cr_assert_str_eq(r.out, "revoked the lease of rv@vm (every holder)\n");
    s_run_free(&r);
    cr_assert_eq(s_report(&w, 5000), 'G', "the next waiter was not granted");
    cr_assert_eq(s_tell(&h, 'p'), 'v', "the revoked holder's next call did not report it");
    CTLE(&r, "--json", "show", "rv@vm");
    json_t *v = s_parse(r.out);
    json_t *last = json_object_get(v, "last_release");
    char *d = json_dumps(last, 0);
    s_json_golden(d, "{\"reason\":\"revoked\",\"pid\":\"wedged\",\"at\":\"<t>\"}");
    free(d);
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(v, "holders"), 0), "label")),
                     "next");
    json_decref(v);
    s_run_free(&r);
    s_stop();
}

Test(ctl, kill_ends_the_holder_and_only_then_grants)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.kill_grace_ms = 200;
    s_start(&cfg);
    actor h = {.role = "stuck", .uvm = "kill@vm", .conf = true, .ignore_term = true};
    actor w = {.role = "next", .uvm = "kill@vm", .conf = true};
    s_spawn(&h, 'G');
    s_spawn(&w, 'Q');
    run r;
    CTLE(&r, "release", "--force", "kill@vm", "--mode", "kill", "--reason", "stuck");
    s_expect(&r, 0, "release --force --mode kill");
    cr_assert_str_eq(r.out, "killing the holder of kill@vm (every holder): signalled 1 "
                            "process(es); the lease is handed on once they are dead\n");
    s_run_free(&r);
    cr_assert_eq(s_report(&w, 10000), 'G', "the next waiter was not granted after the kill");
    /* The grant came after the holder's death: it is a zombie now. */
    siginfo_t si;
    memset(&si, 0, sizeof si);
    cr_assert_eq(waitid(P_PID, (id_t)h.pid, &si, WEXITED | WNOHANG | WNOWAIT), 0);
    cr_assert_eq(si.si_pid, h.pid, "the holder was still alive when the next one was granted");
    cr_assert_eq(ut_wait_code(h.pid, 5000), 1000 + SIGKILL, "it ignored SIGTERM: SIGKILL");
    CTLE(&r, "--json", "show", "kill@vm");
    json_t *v = s_parse(r.out);
    char *d = json_dumps(json_object_get(v, "last_release"), 0);
    s_json_golden(d, "{\"reason\":\"killed\",\"pid\":\"stuck\",\"at\":\"<t>\"}");
    free(d);
    json_decref(v);
    s_run_free(&r);
    s_stop();
}

Test(ctl, release_pid_picks_one_holder_of_a_standard_uvm)
{
    s_start(NULL);
    actor a = {.role = "a", .uvm = "std@vm"};
    actor b = {.role = "b", .uvm = "std@vm"};
    s_spawn(&a, 'G');
    s_spawn(&b, 'G');
    char pid[16];
    snprintf(pid, sizeof pid, "%d", (int)a.pid);
    run r;
    CTLE(&r, "--json", "release", "--force", "std@vm", "--mode", "revoke", "--pid", pid, "--reason",
         "r");
    s_expect(&r, 0, "release --pid");
    s_json_golden(r.out, "{\"action\":\"force-release\",\"uvm\":\"std@vm\",\"ok\":true,"
                         "\"mode\":\"revoke\",\"pid\":\"a\",\"reason\":\"r\",\"detail\":\"\"}");
    s_run_free(&r);
    cr_assert_eq(s_tell(&a, 'p'), 'v');
    cr_assert_eq(s_tell(&b, 'p'), '0', "the other holder lost its lease too");
    /* A pid that holds nothing there: the broker's refusal, exit 1. */
    CTLE(&r, "release", "--force", "std@vm", "--mode", "revoke", "--pid", pid, "--reason", "r");
    s_expect(&r, 1, "release --pid of a non-holder");
    cr_assert_str_empty(r.out);
    cr_assert(strstr(r.err, "release std@vm: no such lease"), "stderr: %s", r.err);
    s_run_free(&r);
    s_stop();
}

/* ======================================================= authorization */

static bool s_nobody(creds *c, const char *const *groups, int ngroups)
{
    struct passwd *pw = getpwnam("nobody");
    if (!pw)
        return false;
    memset(c, 0, sizeof *c);
    c->uid = pw->pw_uid;
    c->gid = pw->pw_gid;
    for (int i = 0; i < ngroups; i++) {
        /* getgrnam() returns a static buffer: take the gid at once. */
        struct group *g = getgrnam(groups[i]);
        if (!g)
            return false;
        c->groups[c->ngroups++] = g->gr_gid;
    }
    return true;
}

Test(ctl, auth_admin_commands_need_root_or_the_admin_group)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to run commands as nobody");
    creds plain, admin;
    const char *g_plain[] = {"users"};
    const char *g_admin[] = {"users", "staff"};
    if (!s_nobody(&plain, g_plain, 1) || !s_nobody(&admin, g_admin, 2))
        cr_skip_test("needs user nobody and groups users and staff (as on Debian)");
    /* Only the socket group may enter the 0750 runtime directory. */
    char parent[256], rt[300];
    ut_tmpdir("ctl-auth", parent, sizeof parent);
    chmod(parent, 0755);
    snprintf(rt, sizeof rt, "%s/rt", parent);
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.runtime_dir = rt;
    cfg.socket_group = "users";
    cfg.admin_group = "staff";
    cfg.log_level = UL_LOG_ERROR;
    char err[256];
    cr_assert_eq(uvmlease_broker_start(&cfg, &s_b, NULL, err, sizeof err), 0, "%s", err);
    s_ep = uvmlease_broker_endpoint(s_b);
    snprintf(s_log, sizeof s_log, "%s/grants", parent);
    s_ready();

    actor h = {.role = "holder", .uvm = "auth@vm", .conf = true};
    actor w = {.role = "waiter", .uvm = "auth@vm", .conf = true};
    s_spawn(&h, 'G');
    s_spawn(&w, 'Q');
    run before, r;
    CTLE(&before, "--json", "list");
    s_expect(&before, 0, "list as root");

    /* Read-only commands are open to anyone who can connect. */
    CTL_AS(&r, &plain, "--json", "list");
    if (r.code == RUN_NOT_EXECUTABLE)
        cr_skip_test("uvmleasectl is not executable by nobody (build directory permissions)");
    s_expect(&r, 0, "list as nobody");
    s_run_free(&r);

    /* Refused, with the broker's words, and nothing changes. */
    const char *need =
        "refused (permission): needs uid 0 or membership in the broker's admin group\n";
    char msg[512];
    CTL_AS(&r, &plain, "drain", "auth@vm", "--reason", "x");
    s_expect(&r, 1, "drain as nobody");
    cr_assert_str_empty(r.out);
    snprintf(msg, sizeof msg, "uvmleasectl: drain auth@vm: %s", need);
    cr_assert_str_eq(r.err, msg);
    s_run_free(&r);
    CTL_AS(&r, &plain, "release", "--force", "auth@vm", "--mode", "revoke", "--reason", "x");
    s_expect(&r, 1, "revoke as nobody");
    snprintf(msg, sizeof msg, "uvmleasectl: release auth@vm: %s", need);
    cr_assert_str_eq(r.err, msg);
    s_run_free(&r);
    CTL_AS(&r, &plain, "release", "--force", "auth@vm", "--mode", "kill", "--reason", "x");
    s_expect(&r, 1, "kill as nobody");
    s_run_free(&r);
    CTL_AS(&r, &plain, "undrain", "auth@vm");
    s_expect(&r, 1, "undrain as nobody");
    s_run_free(&r);
    CTLE(&r, "--json", "list");
    json_t *x = s_parse(before.out), *y = s_parse(r.out);
    s_mask_json(x);
    s_mask_json(y);
    cr_assert(json_equal(x, y), "a refused command changed something:\n%s\n%s", before.out, r.out);
    json_decref(x);
    json_decref(y);
    s_run_free(&r);
    cr_assert_eq(s_tell(&h, 'p'), '0', "the holder lost its lease");
    cr_assert_eq(s_report(&w, 0), -1, "the waiter moved");

    /* A member of the admin group through a supplementary group may. */
    CTL_AS(&r, &admin, "drain", "auth@vm", "--reason", "x");
    s_expect(&r, 0, "drain as nobody + staff");
    s_run_free(&r);
    cr_assert_eq(s_report(&w, 10000), 'F', "the drain did not fail the waiter");
    CTL_AS(&r, &admin, "undrain", "auth@vm");
    s_expect(&r, 0, "undrain as nobody + staff");
    s_run_free(&r);

    /* So may root. */
    CTLE(&r, "release", "--force", "auth@vm", "--mode", "revoke", "--reason", "x");
    s_expect(&r, 0, "revoke as root");
    s_run_free(&r);
    cr_assert_eq(s_tell(&h, 'p'), 'v', "root's revoke did not take the lease");
    s_run_free(&before);
    uvmlease_broker_stop(&s_b);
    ut_rmrf(parent);
}

/* ====================================================== formatting */

static const char *s_us(uint64_t us)
{
    static char b[32];
    ctl_fmt_us(us, b, sizeof b);
    return b;
}

Test(ctl, format_durations_times_seconds_and_short_ids)
{
    cr_assert_str_eq(s_us(0), "0us");
    cr_assert_str_eq(s_us(999), "999us");
    cr_assert_str_eq(s_us(850000), "850ms");
    cr_assert_str_eq(s_us(1299000), "1.2s", "tenths are cut, not rounded");
    cr_assert_str_eq(s_us(59999000), "59.9s");
    cr_assert_str_eq(s_us(184000000), "3m04s");
    cr_assert_str_eq(s_us(7500000000ULL), "2h05m");
    cr_assert_str_eq(s_us(273600000000ULL), "3d04h");
    char b[64];
    ctl_fmt_ms(0, b, sizeof b);
    cr_assert_str_eq(b, "0ms");
    ctl_fmt_ms(1200, b, sizeof b);
    cr_assert_str_eq(b, "1.2s");
    ctl_fmt_ms(93900000, b, sizeof b);
    cr_assert_str_eq(b, "1d02h", "one format everywhere, run's refusal included");
    ctl_fmt_time(1795773635422ULL, b, sizeof b);
    cr_assert_str_eq(b, "2026-11-27T10:00:35.422Z");
    ctl_fmt_seconds(1000, b, sizeof b);
    cr_assert_str_eq(b, "0.001");
    ctl_fmt_seconds(2500000, b, sizeof b);
    cr_assert_str_eq(b, "2.5");
    ctl_fmt_seconds(600000000, b, sizeof b);
    cr_assert_str_eq(b, "600");
    ctl_fmt_seconds(10092000, b, sizeof b);
    cr_assert_str_eq(b, "10.092");
    char id[300];
    ctl_short_uvm(HEXUVM, id, sizeof id);
    cr_assert_str_eq(id, "8c1f2a9e0b7d4e3f\xe2\x80\xa6@vm");
    ctl_short_uvm("uvm-with-a-rather-long-name", id, sizeof id);
    cr_assert_str_eq(id, "uvm-with-a-rather-l\xe2\x80\xa6");
    ctl_short_uvm("exactly-20-chars@abc", id, sizeof id);
    cr_assert_str_eq(id, "exactly-20-chars@abc");
    ctl_short_uvm("a-long-id-with-a-long-suffix@verylongsuffix", id, sizeof id);
    cr_assert_str_eq(id, "a-long-id-with-a-lo\xe2\x80\xa6", "a long suffix is not kept");
}

/* ============================================== usage, missing broker */

Test(ctl, usage_errors_exit_2_before_connecting)
{
    static const char *const cases[][10] = {
        {"list", "extra"},
        {"list", "--bogus"},
        {"show"},
        {"show", "a@vm", "b@vm"},
        {"show", "has space"},
        {"watch", "extra"},
        {"stats", "--prometheus", "--json"},
        {"stats", "-x"},
        {"drain"},
        {"drain", "x@vm", "--reason"},
        {"undrain", "x@vm", "y@vm"},
        {"release", "x@vm", "--mode", "revoke", "--reason", "r"},
        {"release", "--force", "x@vm", "--reason", "r"},
        {"release", "--force", "x@vm", "--mode", "nuke", "--reason", "r"},
        {"release", "--force", "x@vm", "--mode", "kill"},
        {"release", "--force", "x@vm", "--mode", "kill", "--reason", ""},
        {"release", "--force", "x@vm", "--mode", "kill", "--reason", "r", "--pid", "0"},
        {"release", "--force", "x@vm", "--mode", "kill", "--reason", "r", "--pid", "12ab"},
        {"release", "--force", "--mode", "kill", "--reason", "r"},
        {"nosuchcommand"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[14] = {"--endpoint", NO_BROKER};
        int n = 2;
        for (int k = 0; k < 10 && cases[i][k]; k++)
            args[n++] = cases[i][k];
        args[n] = NULL;
        run r;
        s_run_as(&r, NULL, args);
        cr_assert_eq(r.code, 2, "case %zu (%s %s ...): exit %d, stderr: %s", i, cases[i][0],
                     cases[i][1] ? cases[i][1] : "", r.code, r.err);
        cr_assert_str_empty(r.out, "case %zu wrote to stdout", i);
        cr_assert(strstr(r.err, "usage: uvmleasectl"), "case %zu: no usage line: %s", i, r.err);
        s_run_free(&r);
    }
    run r;
    CTL(&r, "list", "--help");
    s_expect(&r, 0, "list --help");
    cr_assert(strstr(r.out, "usage: uvmleasectl"));
    s_run_free(&r);
    CTL(&r, "release", "-h");
    s_expect(&r, 0, "release -h");
    s_run_free(&r);
}

Test(ctl, a_missing_broker_exits_1)
{
    static const char *const cases[][8] = {
        {"list"},
        {"--json", "list"},
        {"show", "x@vm"},
        {"watch"},
        {"stats"},
        {"stats", "--prometheus"},
        {"drain", "x@vm"},
        {"undrain", "x@vm"},
        {"release", "--force", "x@vm", "--mode", "revoke", "--reason", "r"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[12] = {"--endpoint", NO_BROKER};
        int n = 2;
        for (int k = 0; k < 8 && cases[i][k]; k++)
            args[n++] = cases[i][k];
        args[n] = NULL;
        run r;
        s_run_as(&r, NULL, args);
        cr_assert_eq(r.code, 1, "case %zu (%s): exit %d, stderr: %s", i, cases[i][0], r.code,
                     r.err);
        cr_assert_str_empty(r.out, "case %zu wrote to stdout", i);
        cr_assert(strstr(r.err, "cannot reach the broker at " NO_BROKER
                                ": no broker answered at the endpoint"),
                  "case %zu: %s", i, r.err);
        s_run_free(&r);
    }
}

/* ---------------------------------------------- a journal that fails */

static atomic_int s_jfail;

static ssize_t s_jwrite(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
    (void)ctx;
    if (atomic_load(&s_jfail)) {
        errno = EIO;
        return -1;
    }
    return pwrite(fd, buf, n, off);
}

Test(ctl, journal_failure_shown_in_ping_list_and_stats)
{
    uvmlease_broker_config cfg;
    uvmlease_broker_config_init(&cfg);
    cfg.journal_write = s_jwrite;
    s_start(&cfg);
    void *s = ut_dealer(s_ep);
    ul_reply r;
    memset(&r, 0, sizeof r);
    cr_assert_eq(ut_acquire(s, "jf@vm", true, "", 0, &r, NULL, NULL, 5000), 0);
    uint64_t lease = r.lease;
    ul_reply_free(&r);
    atomic_store(&s_jfail, 1);
    cr_assert_eq(ut_release(s, lease), 0);
    ut_dealer_close(s);

    run x;
    CTLE(&x, "ping");
    s_expect(&x, 0, "ping answers");
    cr_assert(strstr(x.out, "journal FAILING"), "%s", x.out);
    cr_assert(strstr(x.err, "exclusive grants are suspended"), "%s", x.err);
    s_run_free(&x);
    CTLE(&x, "ping", "--json");
    cr_assert(strstr(x.out, "\"journal\":\"failing\""), "%s", x.out);
    s_run_free(&x);
    CTLE(&x, "list");
    s_expect(&x, 0, "list");
    cr_assert(!strncmp(x.out, "JOURNAL FAILING", 15), "line above the table: %s", x.out);
    s_run_free(&x);
    CTLE(&x, "stats", "--prometheus");
    cr_assert(strstr(x.out, "uvmlease_journal_healthy 0"), "%s", x.out);
    cr_assert(strstr(x.out, "uvmlease_journal_write_failures_total "), "%s", x.out);
    s_run_free(&x);

    atomic_store(&s_jfail, 0);
    /* The broker retries by itself; ping until it says so (bounded). */
    bool ok = false;
    for (int i = 0; i < 100 && !ok; i++) {
        CTLE(&x, "ping");
        ok = strstr(x.out, "journal ok") != NULL;
        s_run_free(&x);
    }
    cr_assert(ok, "the journal never recovered");
    CTLE(&x, "list");
    cr_assert(strncmp(x.out, "JOURNAL FAILING", 15) != 0, "%s", x.out);
    s_run_free(&x);
    s_stop();
}
