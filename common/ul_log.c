/*
 * ul_log.c — logfmt lines.
 */
#include "ul_log.h"

#include <stdio.h>
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

/* Append a logfmt value: escaped, quoted if it holds space, '=' or '"'. */
static size_t s_put_value(char *out, size_t outsz, const char *v)
{
    char esc[1100];
    size_t n = ul_escape(v, strlen(v), esc, sizeof esc);
    bool quote = n == 0 || strpbrk(esc, " =\"") != NULL;
    int w = snprintf(out, outsz, quote ? "\"%s\"" : "%s", esc);
    if (w < 0)
        return 0;
    return (size_t)w < outsz ? (size_t)w : outsz ? outsz - 1 : 0;
}

void ul_logv(const ul_logger *lg, ul_log_level level, const char *msg, va_list ap)
{
    if (lg && level < lg->min_level)
        return;
    char line[4096];
    size_t len = 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    len += strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    len +=
        (size_t)snprintf(line + len, sizeof line - len,
                         ".%03ldZ level=%s msg=", ts.tv_nsec / 1000000, ul_log_level_name(level));
    len += s_put_value(line + len, sizeof line - len, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (len + 2 >= sizeof line)
            continue;
        int w = snprintf(line + len, sizeof line - len, " %s=", k);
        if (w < 0 || (size_t)w >= sizeof line - len) {
            len = sizeof line - 1;
            continue;
        }
        len += (size_t)w;
        len += s_put_value(line + len, sizeof line - len, v ? v : "");
    }
    line[sizeof line - 1] = '\0';
    if (lg && lg->sink) {
        lg->sink(lg->ctx, level, line);
    } else {
        /* One fprintf per line keeps lines whole when threads share stderr. */
        fprintf(stderr, "%s\n", line);
    }
}

void ul_log(const ul_logger *lg, ul_log_level level, const char *msg, ...)
{
    va_list ap;
    va_start(ap, msg);
    ul_logv(lg, level, msg, ap);
    va_end(ap);
}
