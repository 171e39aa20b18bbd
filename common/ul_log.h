/*
 * ul_log.h — one logfmt line per event: ts=... level=... msg=... key=value.
 *
 * Values are escaped (ul_escape) and quoted when they contain spaces,
 * quotes or '='. Lines go to a sink callback (default: stderr). A value
 * is cut to 1,099 bytes, a line to 4,095: pairs that do not fit whole are
 * left out, as are pairs after the 32nd.
 */
#ifndef UL_LOG_H
#define UL_LOG_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

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

/*
 * Held lines, for a loop whose clients should not wait for its log: from
 * ul_log_hold() on, debug and info lines this thread logs are kept (their
 * time taken and their values copied at the call) until ul_log_flush() or
 * ul_log_release() formats and writes them, in order: lines for stderr
 * in one write. They are written anyway when 64 KiB are kept, and before
 * any warning or error, which is never held. Other threads are not
 * affected. ul_log_hold() returns false (nothing is held) when its buffer
 * cannot be allocated. The loggers of kept lines must outlive the flush.
 * ul_log_held_since_ms() is the CLOCK_MONOTONIC time in ms of the oldest
 * kept line, 0 when none is. ul_log_hold_free() releases and frees this
 * thread's buffers.
 */
/*
 * A token bucket for lines a peer can provoke (refused input, denied
 * requests): at most burst at once, then per_sec. Zero-initialise; it
 * starts full. ul_log_rate_take() says whether one more line may be
 * written at now_ms; when it may, *suppressed is the number refused since
 * the last line written (to say in that line).
 */
typedef struct ul_log_rate {
    bool started;
    uint32_t tokens;
    uint64_t refill_at;
    uint64_t suppressed;
} ul_log_rate;
bool ul_log_rate_take(ul_log_rate *r, uint64_t now_ms, uint32_t burst, uint32_t per_sec,
                      uint64_t *suppressed);

bool ul_log_hold(void);
uint64_t ul_log_held_since_ms(void);
void ul_log_flush(void);
void ul_log_release(void);
void ul_log_hold_free(void);

#endif
