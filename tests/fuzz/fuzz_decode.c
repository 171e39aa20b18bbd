/*
 * fuzz_decode.c — libFuzzer harness for the codec.
 *
 * Every input is decoded as a request and as a broker message. Whatever
 * decodes must re-encode, the re-encoding must decode again, and encoding
 * that second struct must give the same bytes: a struct that does not
 * survive the trip means encoder and decoder disagree on a rule. Any
 * mismatch aborts, which libFuzzer reports as a crash.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ul_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, int rc)
{
    fprintf(stderr, "fuzz_decode: %s (%s)\n", what, ul_status_name(rc));
    abort();
}

static void same_bytes(const ul_buf *a, const ul_buf *b, const char *what)
{
    if (a->len != b->len || memcmp(a->data, b->data, a->len) != 0)
        fail(what, 0);
}

static ul_buf s_a, s_b; /* reused across runs, as a real peer would */

static void request_oracle(const uint8_t *data, size_t size)
{
    ul_request r1, r2;
    int rc = ul_request_decode(data, size, &r1);
    if (rc != 0) {
        if (rc == UVMLEASE_ENOMEM || rc == UVMLEASE_EINVAL)
            fail("request decode: not a protocol error", rc);
        return;
    }
    s_a.len = s_b.len = 0;
    if ((rc = ul_request_encode(&r1, &s_a)) != 0)
        fail("a decoded request does not encode", rc);
    if ((rc = ul_request_decode(s_a.data, s_a.len, &r2)) != 0)
        fail("a re-encoded request does not decode", rc);
    if ((rc = ul_request_encode(&r2, &s_b)) != 0)
        fail("request encode, second time", rc);
    same_bytes(&s_a, &s_b, "request changed on the round trip");
}

static void reply_oracle(const uint8_t *data, size_t size)
{
    ul_reply r1, r2;
    int rc = ul_reply_decode(data, size, &r1);
    if (rc != 0) {
        if (rc == UVMLEASE_EINVAL)
            fail("reply decode: not a protocol error", rc);
        return;
    }
    s_a.len = s_b.len = 0;
    if ((rc = ul_reply_encode(&r1, &s_a)) != 0)
        fail("a decoded reply does not encode", rc);
    if ((rc = ul_reply_decode(s_a.data, s_a.len, &r2)) != 0)
        fail("a re-encoded reply does not decode", rc);
    if ((rc = ul_reply_encode(&r2, &s_b)) != 0)
        fail("reply encode, second time", rc);
    same_bytes(&s_a, &s_b, "reply changed on the round trip");
    ul_reply_free(&r1);
    ul_reply_free(&r2);
}

/* What the pre-check accepts, msgpack-c must read as exactly one object. */
static void check_agrees_with_msgpack(const uint8_t *data, size_t size)
{
    if (ul_mp_check(data, size, &ul_limits_reply) != 0)
        return;
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 4096))
        fail("zone", UVMLEASE_ENOMEM);
    msgpack_object obj;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack((const char *)data, size, &off, &zone, &obj);
    msgpack_zone_destroy(&zone);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != size)
        fail("ul_mp_check accepted what msgpack-c cannot read", (int)ur);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_agrees_with_msgpack(data, size);
    request_oracle(data, size);
    reply_oracle(data, size);
    return 0;
}
