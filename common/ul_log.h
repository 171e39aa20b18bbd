/*
 * ul_log.h — one logfmt line per event: ts=... level=... msg=... key=value.
 *
 * Values are escaped (ul_escape) and quoted when they contain spaces,
 * quotes or '='. Lines go to a sink callback (default: stderr).
 */
#ifndef UL_LOG_H
#define UL_LOG_H

#include <stdarg.h>

typedef enum ul_log_level { UL_LOG_DEBUG = 0, UL_LOG_INFO, UL_LOG_WARN, UL_LOG_ERROR } ul_log_level;

/* A complete line (no trailing newline) for the sink. */
typedef void (*ul_log_sink)(void *ctx, ul_log_level level, const char *line);

typedef struct ul_logger {
    ul_log_level min_level;
    ul_log_sink sink; /* NULL: stderr */
    void *ctx;
} ul_logger;

const char *ul_log_level_name(ul_log_level l);
/* "debug" | "info" | "warn" | "error" -> level; -1 if unknown. */
int ul_log_level_parse(const char *s);

/*
 * Log one event. After msg come key/value pairs as const char * terminated
 * by NULL: ul_log(lg, UL_LOG_INFO, "grant", "uvm", id, "pid", pidstr, NULL).
 * Values are escaped; keys are trusted literals.
 */
void ul_log(const ul_logger *lg, ul_log_level level, const char *msg, ...);
void ul_logv(const ul_logger *lg, ul_log_level level, const char *msg, va_list ap);

#endif
