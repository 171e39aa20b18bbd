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
/* Wait for one ping round trip to endpoint (see testutil.c for why tests
 * call it before forking clients of a freshly started broker). */
void ut_settle(const char *endpoint);
/* Stop the broker and remove its directory. */
void ut_broker_stop(struct uvmlease_broker **b, const char *dir);

/* Path of a built binary: $UL_BUILD_DIR/<rel>, into out. */
void ut_build_path(const char *rel, char *out, size_t outsz);

/* ---- the golden vectors of common/PROTOCOL.md ---------------------------- */

/* One "```golden name=N kind=K" block: its hex bytes ("#" starts a
 * comment). */
typedef struct ut_golden {
    char name[64];
    char kind[16];
    unsigned char *bytes;
    size_t len;
} ut_golden;

/* The text of common/PROTOCOL.md ($UL_SOURCE_DIR, else found from this
 * source file); the caller frees it. Aborts the test on failure. */
char *ut_protocol_md(void);
/* Parse every golden block of text (modified in place) into out. */
size_t ut_golden_parse(char *text, ut_golden *out, size_t max);
/* The vector called name, or NULL. */
const ut_golden *ut_golden_find(const ut_golden *v, size_t n, const char *name);
void ut_golden_free(ut_golden *v, size_t n);

#endif

/* ---- a raw protocol client (ZeroMQ DEALER + the codec) ---------------- */

#include "ul_proto.h"

/* A DEALER connected to endpoint with ZMQ_LINGER 0, on a per-process
 * context. Aborts the test on failure; in a forked child, call it after the
 * fork. */
void *ut_dealer(const char *endpoint);
void ut_dealer_close(void *sock);
/* A request with v, op and a fresh rid filled in. */
void ut_req(ul_request *r, ul_op op);
/* Encode and send one frame. 0 or a status. */
int ut_send(void *sock, const ul_request *r);
/* Receive one broker message within timeout_ms. 0, -1 on timeout, or a
 * decode status. The caller frees *rep with ul_reply_free. */
int ut_recv(void *sock, ul_reply *rep, int timeout_ms);
/* Send r and wait for the reply carrying its rid (unasked messages that
 * arrive first are dropped). 0, -1 on timeout, or a status. */
int ut_call(void *sock, const ul_request *r, ul_reply *rep, int timeout_ms);
/* Acquire and wait for the outcome (reply, or grant/acquire-failed after a
 * queued reply). Returns the status (0 = granted) or -1 on timeout; lease
 * and fence are written when granted, holder info in *rep. If on_queued
 * is not NULL it is called once when the broker says "queued". */
int ut_acquire(void *sock, const char *uvm, bool conf, const char *label, int64_t timeout_ms,
               ul_reply *rep, void (*on_queued)(void *), void *ctx, int wait_ms);
/* Release a lease; returns the reply's status or -1. */
int ut_release(void *sock, uint64_t lease);
/* Ping the broker at ep (a daemon starting up: its socket may not exist
 * yet) until it answers; true when it did within timeout_ms. */
bool ut_ping_until(const char *ep, int timeout_ms);

/* ---- a pipe to report from a child to the parent ----------------------- */
typedef struct ut_chan {
    int fd[2];
} ut_chan;
void ut_chan_open(ut_chan *c);
/* Write one byte / read one byte within timeout_ms (-1 on timeout). */
void ut_chan_put(ut_chan *c, char v);
int ut_chan_get(ut_chan *c, int timeout_ms);
