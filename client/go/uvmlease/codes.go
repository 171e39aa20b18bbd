package uvmlease

// Code is a status code: the same numbers, names and messages as
// libuvmlease's uvmlease_status (common/uvmlease_errors.h, PROTOCOL.md
// section 10). Every error this package returns wraps one, so
// errors.Is(err, uvmlease.ErrBusy) and errors.As(err, &code) work.
type Code uint32

// Status codes. 1-46 come from the broker; 60 and above are conditions of
// the client library.
const (
	ErrMalformed      Code = 1  // malformed
	ErrTooLarge       Code = 2  // too-large
	ErrTooDeep        Code = 3  // too-deep
	ErrLimit          Code = 4  // limit
	ErrTruncated      Code = 5  // truncated
	ErrTrailing       Code = 6  // trailing
	ErrMultipart      Code = 7  // multipart
	ErrBadType        Code = 8  // bad-type
	ErrMissingField   Code = 9  // missing-field
	ErrUnknownOp      Code = 10 // unknown-op
	ErrVersion        Code = 11 // version
	ErrBadUVM         Code = 12 // bad-uvm-id
	ErrBadText        Code = 13 // bad-text
	ErrBadValue       Code = 14 // bad-value
	ErrBusy           Code = 20 // busy
	ErrTimeout        Code = 21 // timeout
	ErrCancelled      Code = 22 // cancelled
	ErrNoLease        Code = 23 // no-such-lease
	ErrNotOwner       Code = 24 // not-owner
	ErrRevoked        Code = 25 // revoked
	ErrClassConflict  Code = 26 // class-conflict
	ErrDraining       Code = 27 // draining
	ErrNotWaiting     Code = 28 // not-waiting
	ErrNotChild       Code = 29 // not-child
	ErrUnknownUVM     Code = 30 // unknown-uvm
	ErrDuplicate      Code = 31 // duplicate
	ErrPermission     Code = 40 // permission
	ErrPeerRefused    Code = 41 // peer-refused
	ErrResource       Code = 42 // resource
	ErrNotImplemented Code = 43 // not-implemented
	ErrInternal       Code = 44 // internal
	ErrShutdown       Code = 45 // reserved: no broker sends it (PROTOCOL.md section 10)
	ErrJournalFailing Code = 46 // journal-failing
	ErrNoBroker       Code = 60 // no-broker
	ErrInvalid        Code = 61 // invalid-argument
	ErrSystem         Code = 62 // system
	ErrClosed         Code = 63 // closed
	ErrNoMemory       Code = 64 // no-memory
	ErrBadEndpoint    Code = 65 // bad-endpoint
)

var codeTable = map[Code][2]string{
	0:  {"ok", "success"},
	1:  {"malformed", "malformed message: not valid msgpack"},
	2:  {"too-large", "message larger than the protocol allows"},
	3:  {"too-deep", "message nested deeper than the protocol allows"},
	4:  {"limit", "a string, array or map exceeds the protocol's limits"},
	5:  {"truncated", "message truncated: a declared length exceeds the bytes present"},
	6:  {"trailing", "trailing bytes after the message"},
	7:  {"multipart", "message has more than one body frame"},
	8:  {"bad-type", "a field has the wrong type"},
	9:  {"missing-field", "a required field is missing"},
	10: {"unknown-op", "unknown operation"},
	11: {"version", "unsupported protocol version"},
	12: {"bad-uvm-id", "UVM ID must be 1-256 bytes of printable ASCII without spaces"},
	13: {"bad-text", "text must be valid UTF-8 without control characters, within its length limit"},
	14: {"bad-value", "a field's value is out of range"},
	20: {"busy", "the UVM's lease is held"},
	21: {"timeout", "timed out waiting for the lease"},
	22: {"cancelled", "the acquire was cancelled"},
	23: {"no-such-lease", "no such lease (released, expired or never granted)"},
	24: {"not-owner", "the lease belongs to another process"},
	25: {"revoked", "the lease was revoked by an administrator"},
	26: {"class-conflict", "the UVM is already leased with the other class"},
	27: {"draining", "the UVM is draining: no new leases are granted"},
	28: {"not-waiting", "no such waiting acquire"},
	29: {"not-child", "the pid is not a direct child of the caller"},
	30: {"unknown-uvm", "the broker has no lease, waiter or drain for that UVM"},
	31: {"duplicate", "a request with that id is already in progress"},
	40: {"permission", "permission denied: uid 0 or the admin group is required"},
	41: {"peer-refused", "peer refused: the connection's process has exited, is in another pid namespace or cannot be identified"},
	42: {"resource", "a per-peer or broker-wide limit was reached"},
	43: {"not-implemented", "operation not implemented by this broker"},
	44: {"internal", "internal broker error"},
	45: {"shutdown", "the broker is shutting down"},
	46: {"journal-failing", "the broker cannot record leases: exclusive grants are suspended until it can"},
	60: {"no-broker", "no broker answered at the endpoint"},
	61: {"invalid-argument", "invalid argument"},
	62: {"system", "system call failed (see errno)"},
	63: {"closed", "the handle is closed"},
	64: {"no-memory", "out of memory"},
	65: {"bad-endpoint", "endpoint must be ipc://<path>"},
}

// Name is the code's short name as on the wire and in libuvmlease
// ("busy"), or "unknown".
func (c Code) Name() string {
	if e, ok := codeTable[c]; ok {
		return e[0]
	}
	return "unknown"
}

// Error is the code's message ("the UVM's lease is held").
func (c Code) Error() string {
	if e, ok := codeTable[c]; ok {
		return "uvmlease: " + e[1]
	}
	return "uvmlease: unknown status"
}
