/*
 * test_log.c — log lines: held lines (ul_log_hold) keep their order and
 * their values, are written on flush, at the cap and before any warning,
 * and only on the thread that holds them.
 */
// ctest-timeout: 30
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"
#include "ul_log.h"

typedef struct cap {
    char lines[400][128];
    int n;
    pthread_mutex_t mu;
} cap;

static cap s_cap = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void s_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)level;
    cap *c = ctx;
    pthread_mutex_lock(&c->mu);
    if (c->n < 400) {
        /* Keep what follows "msg=": the time differs from run to run. */
        const char *m = strstr(line, "msg=");
        snprintf(c->lines[c->n++], sizeof c->lines[0], "%s", m ? m : line);
    }
    pthread_mutex_unlock(&c->mu);
}

static int s_count(void)
{
    pthread_mutex_lock(&s_cap.mu);
    int n = s_cap.n;
    pthread_mutex_unlock(&s_cap.mu);
    return n;
}

/* Keeps the whole line (ctx: a buffer of 5000 bytes). */
static void s_whole_sink(void *ctx, ul_log_level level, const char *line)
{
    (void)level;
    snprintf(ctx, 5000, "%s", line);
}

static ul_logger s_lg = {.min_level = UL_LOG_DEBUG, .sink = s_sink, .ctx = &s_cap};

static void s_reset(void)
{
    s_cap.n = 0;
}

static void s_teardown(void)
{
    ul_log_hold_free();
}

TestSuite(log, .init = s_reset, .fini = s_teardown, .timeout = 20);

Test(log, held_lines_wait_for_the_flush_in_order)
{
    cr_assert(ul_log_hold());
    cr_assert_eq(ul_log_held_since_ms(), 0);
    ul_log(&s_lg, UL_LOG_INFO, "one", "k", "a", NULL);
    ul_log(&s_lg, UL_LOG_DEBUG, "two", "k", "b c", NULL);
    cr_assert_eq(s_count(), 0, "a held line was written before the flush");
    cr_assert_neq(ul_log_held_since_ms(), 0);
    ul_log_flush();
    cr_assert_eq(s_count(), 2);
    cr_assert_str_eq(s_cap.lines[0], "msg=one k=a");
    cr_assert_str_eq(s_cap.lines[1], "msg=two k=\"b c\"");
    cr_assert_eq(ul_log_held_since_ms(), 0);
    /* Still holding after a flush; a release writes and stops holding. */
    ul_log(&s_lg, UL_LOG_INFO, "three", NULL);
    cr_assert_eq(s_count(), 2);
    ul_log_release();
    cr_assert_eq(s_count(), 3);
    ul_log(&s_lg, UL_LOG_INFO, "four", NULL);
    cr_assert_eq(s_count(), 4, "a line was held after the release");
}

Test(log, values_are_copied_at_the_call)
{
    cr_assert(ul_log_hold());
    char v[16] = "before";
    ul_log(&s_lg, UL_LOG_INFO, "m", "v", v, "null", NULL, NULL);
    strcpy(v, "after");
    ul_log_flush();
    cr_assert_eq(s_count(), 1);
    cr_assert_str_eq(s_cap.lines[0], "msg=m v=before null=\"\"");
}

Test(log, warnings_are_never_held_and_follow_what_is)
{
    cr_assert(ul_log_hold());
    ul_log(&s_lg, UL_LOG_INFO, "first", NULL);
    ul_log(&s_lg, UL_LOG_WARN, "second", NULL);
    cr_assert_eq(s_count(), 2);
    cr_assert_str_eq(s_cap.lines[0], "msg=first");
    cr_assert_str_eq(s_cap.lines[1], "msg=second");
    ul_log(&s_lg, UL_LOG_ERROR, "third", NULL);
    cr_assert_eq(s_count(), 3);
    cr_assert_eq(ul_log_held_since_ms(), 0);
}

Test(log, below_the_level_is_not_kept)
{
    ul_logger lg = s_lg;
    lg.min_level = UL_LOG_INFO;
    cr_assert(ul_log_hold());
    ul_log(&lg, UL_LOG_DEBUG, "quiet", NULL);
    cr_assert_eq(ul_log_held_since_ms(), 0);
    ul_log_flush();
    cr_assert_eq(s_count(), 0);
}

/* At the cap the held lines are written, none lost, order kept. */
Test(log, the_cap_writes_what_is_held)
{
    cr_assert(ul_log_hold());
    char big[1001];
    memset(big, 'x', 1000);
    big[1000] = '\0';
    char idx[16];
    int n = 150; /* about 150 KiB kept: more than the cap */
    for (int i = 0; i < n; i++) {
        snprintf(idx, sizeof idx, "%d", i);
        ul_log(&s_lg, UL_LOG_INFO, "big", "i", idx, "v", big, NULL);
    }
    int before = s_count();
    cr_assert_gt(before, 0, "nothing was written at the cap");
    cr_assert_lt(before, n);
    ul_log_flush();
    cr_assert_eq(s_count(), n);
    for (int i = 0; i < n; i++) {
        char want[32];
        snprintf(want, sizeof want, "msg=big i=%d v=", i);
        cr_assert(strncmp(s_cap.lines[i], want, strlen(want)) == 0, "line %d: %s", i,
                  s_cap.lines[i]);
    }
}

static void *s_other(void *arg)
{
    (void)arg;
    ul_log(&s_lg, UL_LOG_INFO, "other thread", NULL);
    return NULL;
}

Test(log, only_the_holding_thread_holds)
{
    cr_assert(ul_log_hold());
    ul_log(&s_lg, UL_LOG_INFO, "mine", NULL);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, s_other, NULL), 0);
    pthread_join(t, NULL);
    cr_assert_eq(s_count(), 1);
    cr_assert_str_eq(s_cap.lines[0], "msg=\"other thread\"");
    ul_log_flush();
    cr_assert_str_eq(s_cap.lines[1], "msg=mine");
}

/* Without a sink the held lines go to stderr together, whole lines: one
 * write for the lines before a line for a sink, one for those after (fd 2
 * is a SOCK_SEQPACKET socket here, so each write is one packet). */
Test(log, stderr_lines_are_written_together)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(sv[0], 2);
    ul_logger lg = {.min_level = UL_LOG_INFO};
    cr_assert(ul_log_hold());
    ul_log(&lg, UL_LOG_INFO, "a", "n", "1", NULL);
    ul_log(&lg, UL_LOG_INFO, "b", "n", "2", NULL);
    ul_log(&s_lg, UL_LOG_INFO, "to the sink", NULL);
    ul_log(&lg, UL_LOG_INFO, "c", "n", "3", NULL);
    ul_log_flush();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(sv[0]);
    char p1[2048] = "", p2[2048] = "";
    ssize_t n1 = recv(sv[1], p1, sizeof p1 - 1, MSG_DONTWAIT);
    ssize_t n2 = recv(sv[1], p2, sizeof p2 - 1, MSG_DONTWAIT);
    ssize_t n3 = recv(sv[1], p2 + (n2 > 0 ? n2 : 0), 16, MSG_DONTWAIT);
    close(sv[1]);
    cr_assert_gt(n1, 0);
    cr_assert_gt(n2, 0);
    cr_assert_leq(n3, 0, "more writes than expected");
    const char *a = strstr(p1, "msg=a n=1\n"), *b = strstr(p1, "msg=b n=2\n");
    cr_assert(a && b && a < b, "the first write: %s", p1);
    cr_assert(strncmp(p1, "ts=", 3) == 0);
    cr_assert(strstr(p2, "msg=c n=3\n"), "the second write: %s", p2);
    cr_assert_eq(s_count(), 1);
}

/* A line that reaches 4 KiB ends after its last whole pair: no cut key,
 * no open quote, nothing after it. */
Test(log, an_overlong_line_keeps_whole_pairs)
{
    static char big[1200], quoted[1200], line[5000];
    memset(big, 'v', sizeof big - 1);
    memset(quoted, ' ', sizeof quoted - 1);
    ul_logger lg = {.min_level = UL_LOG_INFO, .sink = s_whole_sink, .ctx = line};
    ul_log(&lg, UL_LOG_INFO, "long", "a", big, "b", big, "c", big, "d", quoted, "e", "x", NULL);
    size_t len = strlen(line);
    cr_assert_lt(len, 4096);
    cr_assert(strstr(line, " c="), "a whole pair was dropped");
    cr_assert_null(strstr(line, " d="), "a pair that does not fit was cut: ...%s",
                   line + (len > 40 ? len - 40 : 0));
    cr_assert_null(strstr(line, " e="), "pairs after the cut went on");
    cr_assert_eq(line[len - 1], 'v', "the line ends inside a pair: ...%s", line + len - 20);
}

/* The token bucket for lines a peer can provoke: burst, then per_sec; the
 * first line after a refusal says how many were refused. */
Test(log, rate_lets_a_burst_through_then_per_second)
{
    ul_log_rate r = {0};
    uint64_t sup = 99, t = 1000000;
    for (int i = 0; i < 3; i++) {
        cr_assert(ul_log_rate_take(&r, t, 3, 2, &sup), "line %d of the burst", i);
        cr_assert_eq(sup, 0);
    }
    cr_assert_not(ul_log_rate_take(&r, t, 3, 2, &sup));
    cr_assert_not(ul_log_rate_take(&r, t + 499, 3, 2, &sup), "a token before its time");
    cr_assert(ul_log_rate_take(&r, t + 500, 3, 2, &sup));
    cr_assert_eq(sup, 2, "the refused lines are counted");
    cr_assert_not(ul_log_rate_take(&r, t + 500, 3, 2, &sup));
    /* A long quiet refills to the burst, no more. */
    for (int i = 0; i < 3; i++)
        cr_assert(ul_log_rate_take(&r, t + 60000, 3, 2, &sup));
    cr_assert_not(ul_log_rate_take(&r, t + 60000, 3, 2, &sup));
}
