/*
 * testutil.h — helpers shared by the Criterion tests: private temporary
 * directories (tests run in parallel, each with its own ipc path), forked
 * children that die with the test, bounded waits, /proc readings.
 */
#ifndef UL_TESTUTIL_H
#define UL_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct uvmlease_broker;
struct uvmlease_broker_config;

/* Make a private directory /tmp/ul-test-<tag>-XXXXXX into out. Aborts the
 * test on failure. */
void ut_tmpdir(const char *tag, char *out, size_t outsz);
/* Remove a directory tree (best effort). */
void ut_rmrf(const char *path);

/* fork() whose child gets SIGKILL when the test process dies. Returns as
 * fork() does; aborts the test if fork fails. */
pid_t ut_fork(void);
/* Wait for pid up to timeout_ms. Returns the raw wait status, or -1 on
 * timeout (the child is then killed and reaped). */
int ut_wait(pid_t pid, int timeout_ms);
/* Exit code of a child that exited normally, else 1000 + signal, -1 on
 * timeout. */
int ut_wait_code(pid_t pid, int timeout_ms);

/* Poll pred every 200 us until it is true or timeout_ms passes. */
bool ut_wait_until(bool (*pred)(void *ctx), void *ctx, int timeout_ms);

/* A field of /proc/<pid>/status in kB ("VmRSS", "VmPeak"), -1 if absent. */
long ut_status_kb(pid_t pid, const char *field);

/*
 * Start an in-process broker in a fresh runtime dir under /tmp (written to
 * dir, which must hold 256 bytes). cfg may be NULL for defaults; its
 * runtime_dir is overridden. Log lines go to a quiet sink unless
 * UL_TEST_VERBOSE is set. Aborts the test on failure.
 */
struct uvmlease_broker *ut_broker_start(const struct uvmlease_broker_config *cfg, char *dir);
/* Stop the broker and remove its directory. */
void ut_broker_stop(struct uvmlease_broker **b, const char *dir);

/* Path of a built binary: $UL_BUILD_DIR/<rel>, into out. */
void ut_build_path(const char *rel, char *out, size_t outsz);

#endif
