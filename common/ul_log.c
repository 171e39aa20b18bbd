/*
 * ul_log.c — logfmt lines.
 */
#include "ul_log.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ul_text.h"

static const char *const s_level_names[] = {"debug", "info", "warn", "error"};

const char *ul_log_level_name(ul_log_level l)
{
    return (unsigned)l < 4 ? s_level_names[l] : "?";
}

int ul_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, s_level_names[i]) == 0)
            return i;
    return -1;
}

#define S_VALUE_MAX 1099 /* bytes of one value, escaped */

/* Append a logfmt value: escaped, quoted if it holds space, '=' or '"'. */
static size_t s_put_escaped(char *out, size_t outsz, const char *v)
{
    char esc[S_VALUE_MAX + 1];
    size_t n = ul_escape(v, strlen(v), esc, sizeof esc);
    bool quote = n == 0 || strpbrk(esc, " =\"") != NULL;
    int w = snprintf(out, outsz, quote ? "\"%s\"" : "%s", esc);
    if (w < 0)
        return 0;
    return (size_t)w < outsz ? (size_t)w : outsz ? outsz - 1 : 0;
}

/* Keys and values after msg: at most this many pairs (a line is 4 KiB). */
#define S_MAX_PAIRS 32
#define S_LINE      4096

/* Append n bytes, as many as fit before the line's last byte. */
static size_t s_append(char *line, size_t len, const char *p, size_t n)
{
    if (len >= S_LINE - 1)
        return len;
    if (n > S_LINE - 1 - len)
        n = S_LINE - 1 - len;
    memcpy(line + len, p, n);
    return len + n;
}

/* A value that is written as it is: printable ASCII without space, '=',
 * '"' or '\\' (most are: ids, numbers, names). The rest is escaped. */
static size_t s_plain_len(const char *v)
{
    size_t i = 0;
    for (; v[i]; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c <= ' ' || c >= 0x7f || c == '"' || c == '=' || c == '\\')
            return 0;
    }
    return i;
}

static size_t s_put_value(char *line, size_t len, const char *v)
{
    size_t n = s_plain_len(v);
    if (n) /* at most what an escaped value may take */
        return s_append(line, len, v, n < S_VALUE_MAX ? n : S_VALUE_MAX);
    if (len >= S_LINE - 1)
        return len;
    return len + s_put_escaped(line + len, S_LINE - len, v);
}

/* "ts=YYYY-MM-DDTHH:MM:SS" for this thread's last second: gmtime_r and
 * strftime once a second, not once a line. */
static _Thread_local struct {
    time_t sec;
    bool set;
    char text[32];
    size_t len;
} t_ts;

/* One line: kv holds n keys and values, alternating. */
static void s_format(char line[S_LINE], const struct timespec *ts, ul_log_level level,
                     const char *msg, const char *const *kv, size_t n)
{
    if (!t_ts.set || t_ts.sec != ts->tv_sec) {
        struct tm tm;
        gmtime_r(&ts->tv_sec, &tm);
        t_ts.len = strftime(t_ts.text, sizeof t_ts.text, "ts=%Y-%m-%dT%H:%M:%S", &tm);
        t_ts.sec = ts->tv_sec;
        t_ts.set = true;
    }
    size_t len = s_append(line, 0, t_ts.text, t_ts.len);
    long ms = ts->tv_nsec / 1000000;
    char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
                    'Z'};
    len = s_append(line, len, frac, sizeof frac);
    const char *lv = ul_log_level_name(level);
    len = s_append(line, len, " level=", 7);
    len = s_append(line, len, lv, strlen(lv));
    len = s_append(line, len, " msg=", 5);
    len = s_put_value(line, len, msg);
    for (size_t i = 0; i < n * 2; i += 2) {
        size_t mark = len;
        len = s_append(line, len, " ", 1);
        len = s_append(line, len, kv[i], strlen(kv[i]));
        len = s_append(line, len, "=", 1);
        len = s_put_value(line, len, kv[i + 1] ? kv[i + 1] : "");
        if (len >= S_LINE - 1) {
            len = mark; /* a pair that does not fit whole is left out, and the rest */
            break;
        }
    }
    line[len < S_LINE ? len : S_LINE - 1] = '\0';
}

static void s_emit(const ul_logger *lg, ul_log_level level, const char *line)
{
    if (lg && lg->sink) {
        lg->sink(lg->ctx, level, line);
    } else {
        /* One fprintf per line keeps lines whole when threads share stderr. */
        fprintf(stderr, "%s\n", line);
    }
}

/* ---- held lines ------------------------------------------------------------- */

/* A kept line: this header, then msg and each key and value, each ending
 * in '\0'. */
typedef struct s_kept {
    const ul_logger *lg;
    struct timespec ts;
    ul_log_level level;
    uint32_t npairs;
    size_t size; /* header and strings */
} s_kept;

#define S_HOLD_CAP 65536 /* kept bytes before the held lines are written anyway */

static _Thread_local struct {
    bool on;
    char *buf; /* S_HOLD_CAP bytes, allocated at the first hold */
    size_t len;
    uint64_t since_ms; /* monotonic time of the oldest kept line */
    char *out;         /* stderr lines gathered for one write */
} t_hold;

static uint64_t s_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void s_write_kept(void)
{
    size_t off = 0, olen = 0;
    while (off < t_hold.len) {
        s_kept *k = (s_kept *)(void *)(t_hold.buf + off);
        const char *kv[S_MAX_PAIRS * 2];
        const char *p = t_hold.buf + off + sizeof *k;
        const char *msg = p;
        p += strlen(p) + 1;
        for (uint32_t i = 0; i < k->npairs * 2; i++) {
            kv[i] = p;
            p += strlen(p) + 1;
        }
        off += k->size;
        char line[4096];
        s_format(line, &k->ts, k->level, msg, kv, k->npairs);
        if ((k->lg && k->lg->sink) || !t_hold.out) {
            if (olen)
                fwrite(t_hold.out, 1, olen, stderr);
            olen = 0;
            s_emit(k->lg, k->level, line);
            continue;
        }
        /* Lines for stderr go out together: one write for many. */
        size_t n = strlen(line);
        if (olen + n + 1 > S_HOLD_CAP) {
            fwrite(t_hold.out, 1, olen, stderr);
            olen = 0;
        }
        memcpy(t_hold.out + olen, line, n);
        t_hold.out[olen + n] = '\n';
        olen += n + 1;
    }
    if (olen)
        fwrite(t_hold.out, 1, olen, stderr);
    t_hold.len = 0;
    t_hold.since_ms = 0;
}

/* Copy a line into the held lines; false when it cannot be kept (the
 * caller then writes it at once, after what is held). */
static bool s_keep(const ul_logger *lg, const struct timespec *ts, ul_log_level level,
                   const char *msg, const char *const *kv, size_t n)
{
    size_t need = sizeof(s_kept) + strlen(msg) + 1;
    for (size_t i = 0; i < n * 2; i++)
        need += strlen(kv[i] ? kv[i] : "") + 1;
    need = (need + _Alignof(s_kept) - 1) & ~(_Alignof(s_kept) - 1);
    if (t_hold.len + need > S_HOLD_CAP)
        s_write_kept();
    if (need > S_HOLD_CAP)
        return false;
    s_kept *k = (s_kept *)(void *)(t_hold.buf + t_hold.len);
    *k = (s_kept){.lg = lg, .ts = *ts, .level = level, .npairs = (uint32_t)n, .size = need};
    char *p = t_hold.buf + t_hold.len + sizeof *k;
    size_t m = strlen(msg) + 1;
    memcpy(p, msg, m);
    p += m;
    for (size_t i = 0; i < n * 2; i++) {
        const char *v = kv[i] ? kv[i] : "";
        m = strlen(v) + 1;
        memcpy(p, v, m);
        p += m;
    }
    if (t_hold.len == 0)
        t_hold.since_ms = s_mono_ms();
    t_hold.len += need;
    return true;
}

bool ul_log_hold(void)
{
    if (!t_hold.buf) {
        t_hold.buf = malloc(S_HOLD_CAP);
        t_hold.out = malloc(S_HOLD_CAP);
    }
    t_hold.on = t_hold.buf != NULL;
    return t_hold.on;
}

uint64_t ul_log_held_since_ms(void)
{
    return t_hold.len ? t_hold.since_ms : 0;
}

void ul_log_flush(void)
{
    if (t_hold.len)
        s_write_kept();
}

void ul_log_release(void)
{
    ul_log_flush();
    t_hold.on = false;
}

void ul_log_hold_free(void)
{
    ul_log_release();
    free(t_hold.buf);
    free(t_hold.out);
    t_hold.buf = t_hold.out = NULL;
}

/* ---- rate ------------------------------------------------------------------ */

bool ul_log_rate_take(ul_log_rate *r, uint64_t now_ms, uint32_t burst, uint32_t per_sec,
                      uint64_t *suppressed)
{
    if (!r->started) {
        r->started = true;
        r->tokens = burst;
        r->refill_at = now_ms;
    }
    uint64_t add = now_ms > r->refill_at ? (now_ms - r->refill_at) * per_sec / 1000 : 0;
    if (add) {
        r->tokens = r->tokens + add > burst ? burst : (uint32_t)(r->tokens + add);
        r->refill_at = now_ms;
    }
    if (r->tokens == 0) {
        r->suppressed++;
        return false;
    }
    r->tokens--;
    *suppressed = r->suppressed;
    r->suppressed = 0;
    return true;
}

/* ---- logging ----------------------------------------------------------------- */

void ul_logv(const ul_logger *lg, ul_log_level level, const char *msg, va_list ap)
{
    if (lg && level < lg->min_level)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    const char *kv[S_MAX_PAIRS * 2];
    size_t n = 0;
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (n < S_MAX_PAIRS) {
            kv[n * 2] = k;
            kv[n * 2 + 1] = v;
            n++;
        }
    }
    /* A warning or an error is written at once, after what is held. */
    if (t_hold.on && level < UL_LOG_WARN && s_keep(lg, &ts, level, msg, kv, n))
        return;
    if (t_hold.len)
        s_write_kept();
    char line[4096];
    s_format(line, &ts, level, msg, kv, n);
    s_emit(lg, level, line);
}

void ul_log(const ul_logger *lg, ul_log_level level, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    ul_logv(lg, level, msg, ap);
    va_end(ap);
}
