/*
 * uvmlease_errors.h — the one list of uvmlease status codes.
 *
 * Shared by the broker, the client library, the CLI and the wire protocol
 * (common/PROTOCOL.md, "Error codes"). The numbers are part of the protocol:
 * never renumber, only append.
 *
 * X(NAME, number, "wire-name", "message")
 */
#ifndef UVMLEASE_ERRORS_H
#define UVMLEASE_ERRORS_H

#define UVMLEASE_ERRORS(X)                                                                         \
    X(OK, 0, "ok", "success")                                                                      \
    /* Malformed input (1-19): the request is not a valid protocol message. */                     \
    X(EMALFORMED, 1, "malformed", "malformed message: not valid msgpack")                          \
    X(ETOOLARGE, 2, "too-large", "message larger than the protocol allows")                        \
    X(ETOODEEP, 3, "too-deep", "message nested deeper than the protocol allows")                   \
    X(ELIMIT, 4, "limit", "a string, array or map exceeds the protocol's limits")                  \
    X(ETRUNCATED, 5, "truncated",                                                                  \
      "message truncated: a declared length exceeds the bytes present")                            \
    X(ETRAILING, 6, "trailing", "trailing bytes after the message")                                \
    X(EMULTIPART, 7, "multipart", "message has more than one body frame")                          \
    X(EBADTYPE, 8, "bad-type", "a field has the wrong type")                                       \
    X(EMISSING, 9, "missing-field", "a required field is missing")                                 \
    X(EUNKNOWNOP, 10, "unknown-op", "unknown operation")                                           \
    X(EVERSION, 11, "version", "unsupported protocol version")                                     \
    X(EBADUVM, 12, "bad-uvm-id", "UVM ID must be 1-256 bytes of printable ASCII without spaces")   \
    X(EBADTEXT, 13, "bad-text",                                                                    \
      "text must be valid UTF-8 without control characters, within its length limit")              \
    X(EBADVALUE, 14, "bad-value", "a field's value is out of range")                               \
    /* Lease outcomes (20-39). */                                                                  \
    X(EBUSY, 20, "busy", "the UVM's lease is held")                                                \
    X(ETIMEDOUT, 21, "timeout", "timed out waiting for the lease")                                 \
    X(ECANCELLED, 22, "cancelled", "the acquire was cancelled")                                    \
    X(ENOLEASE, 23, "no-such-lease", "no such lease (released, expired or never granted)")         \
    X(ENOTOWNER, 24, "not-owner", "the lease belongs to another process")                          \
    X(EREVOKED, 25, "revoked", "the lease was revoked by an administrator")                        \
    X(ECLASS, 26, "class-conflict", "the UVM is already leased with the other class")              \
    X(EDRAINING, 27, "draining", "the UVM is draining: no new leases are granted")                 \
    X(ENOTWAITING, 28, "not-waiting", "no such waiting acquire")                                   \
    X(ENOTCHILD, 29, "not-child", "the pid is not a direct child of the caller")                   \
    X(EUNKNOWNUVM, 30, "unknown-uvm", "the broker has no lease, waiter or drain for that UVM")     \
    X(EDUPLICATE, 31, "duplicate", "a request with that id is already in progress")                \
    /* Peer and broker conditions (40-59). */                                                      \
    X(EPERM, 40, "permission", "permission denied: uid 0 or the admin group is required")          \
    X(EPEER, 41, "peer-refused",                                                                   \
      "peer refused: the connection's process has exited, is in another pid namespace or cannot "  \
      "be identified")                                                                             \
    X(ERESOURCE, 42, "resource", "a per-peer or broker-wide limit was reached")                    \
    X(ENOTIMPL, 43, "not-implemented", "operation not implemented by this broker")                 \
    X(EINTERNAL, 44, "internal", "internal broker error")                                          \
    /* 45 is reserved: no broker sends it (PROTOCOL.md section 10). */                             \
    X(ESHUTDOWN, 45, "shutdown", "the broker is shutting down")                                    \
    X(EJOURNAL, 46, "journal-failing",                                                             \
      "the broker cannot record leases: exclusive grants are suspended until it can")              \
    /* Client-side conditions (60-79): never sent on the wire. */                                  \
    X(ENOBROKER, 60, "no-broker", "no broker answered at the endpoint")                            \
    X(EINVAL, 61, "invalid-argument", "invalid argument")                                          \
    X(ESYSTEM, 62, "system", "system call failed (see errno)")                                     \
    X(ECLOSED, 63, "closed", "the handle is closed")                                               \
    X(ENOMEM, 64, "no-memory", "out of memory")                                                    \
    X(EBADENDPOINT, 65, "bad-endpoint", "endpoint must be ipc://<path>")

typedef enum uvmlease_status {
#define UVMLEASE_ERR_ENUM_(name, num, wire, msg) UVMLEASE_##name = num,
    UVMLEASE_ERRORS(UVMLEASE_ERR_ENUM_)
#undef UVMLEASE_ERR_ENUM_
} uvmlease_status;

#endif
