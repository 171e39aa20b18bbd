package wire

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Error is a protocol violation found while decoding, with the status code
// PROTOCOL.md assigns to it.
type Error struct {
	Code  int
	Field string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("uvmlease wire: code %d at %q", e.Code, e.Field)
	}
	return fmt.Sprintf("uvmlease wire: code %d", e.Code)
}

func fail(code int, field string) error { return &Error{Code: code, Field: field} }

// Request is one request of PROTOCOL.md section 5. Only the fields of its
// op are encoded, every one of them, in the order of the spec's table.
type Request struct {
	Op  string
	RID uint64

	Client    string // hello
	UVM       string // acquire, show, drain, undrain, force-release
	Conf      bool   // acquire
	TimeoutMS int64  // acquire: -1 forever, 0 try once
	Label     string // acquire
	Target    uint64 // cancel
	Lease     uint64 // release, phase, watch-child
	Phase     string // phase
	PID       uint32 // watch-child, force-release
	After     string // list
	Limit     uint32 // list
	Reason    string // drain, undrain, force-release
	Mode      string // force-release
}

// Ops of protocol version 1.
var Ops = []string{"hello", "ping", "acquire", "cancel", "release", "phase", "watch-child",
	"list", "show", "watch", "unwatch", "stats", "drain", "undrain", "force-release"}

// EncodeRequest writes r in the canonical form of PROTOCOL.md section 2:
// keys in the documented order, integers in their smallest encoding.
func EncodeRequest(r *Request) ([]byte, error) {
	type kv struct {
		k string
		v interface{}
	}
	var f []kv
	switch r.Op {
	case "hello":
		f = []kv{{"client", r.Client}}
	case "ping", "watch", "unwatch", "stats":
	case "acquire":
		f = []kv{{"uvm", r.UVM}, {"conf", r.Conf}, {"timeout_ms", r.TimeoutMS}, {"label", r.Label}}
	case "cancel":
		f = []kv{{"target", r.Target}}
	case "release":
		f = []kv{{"lease", r.Lease}}
	case "phase":
		f = []kv{{"lease", r.Lease}, {"phase", r.Phase}}
	case "watch-child":
		f = []kv{{"lease", r.Lease}, {"pid", uint64(r.PID)}}
	case "list":
		f = []kv{{"after", r.After}, {"limit", uint64(r.Limit)}}
	case "show":
		f = []kv{{"uvm", r.UVM}}
	case "drain", "undrain":
		f = []kv{{"uvm", r.UVM}, {"reason", r.Reason}}
	case "force-release":
		f = []kv{{"uvm", r.UVM}, {"mode", r.Mode}, {"pid", uint64(r.PID)}, {"reason", r.Reason}}
	default:
		return nil, fmt.Errorf("uvmlease wire: unknown op %q", r.Op)
	}
	var buf bytes.Buffer
	e := msgpack.NewEncoder(&buf)
	check := func(err error) {
		if err != nil {
			panic(err) // a bytes.Buffer does not fail
		}
	}
	check(e.EncodeMapLen(3 + len(f)))
	check(e.EncodeString("v"))
	check(e.EncodeUint(ProtoVersion))
	check(e.EncodeString("op"))
	check(e.EncodeString(r.Op))
	check(e.EncodeString("rid"))
	check(e.EncodeUint(r.RID))
	for _, p := range f {
		check(e.EncodeString(p.k))
		switch v := p.v.(type) {
		case string:
			check(e.EncodeString(v))
		case bool:
			check(e.EncodeBool(v))
		case int64:
			check(e.EncodeInt(v))
		case uint64:
			check(e.EncodeUint(v))
		}
	}
	if buf.Len() > MaxRequest {
		return nil, fail(TooLarge, "")
	}
	return buf.Bytes(), nil
}

// object is one msgpack map whose keys were checked (strings, no
// duplicates), with the raw bytes of each value.
type object struct {
	vals map[string][]byte
}

// parseObject reads the map that starts b (already bounded by Check).
func parseObject(b []byte, where string) (object, error) {
	r := bytes.NewReader(b)
	d := msgpack.NewDecoder(r)
	c, err := d.PeekCode()
	if err != nil {
		return object{}, fail(Truncated, where)
	}
	if !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		return object{}, fail(BadType, where)
	}
	n, err := d.DecodeMapLen()
	if err != nil {
		return object{}, fail(Malformed, where)
	}
	o := object{vals: make(map[string][]byte, n)}
	for i := 0; i < n; i++ {
		c, err := d.PeekCode()
		if err != nil {
			return object{}, fail(Truncated, where)
		}
		if !msgpcode.IsString(c) {
			return object{}, fail(BadType, where)
		}
		k, err := d.DecodeString()
		if err != nil {
			return object{}, fail(Malformed, where)
		}
		if _, dup := o.vals[k]; dup {
			return object{}, fail(Malformed, k)
		}
		start := len(b) - r.Len()
		if err := d.Skip(); err != nil {
			return object{}, fail(Malformed, k)
		}
		o.vals[k] = b[start : len(b)-r.Len()]
	}
	return o, nil
}

func isInt(c byte) bool {
	return msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Uint64) ||
		(c >= msgpcode.Int8 && c <= msgpcode.Int64)
}

func isSigned(c byte) bool {
	return c >= msgpcode.NegFixedNumLow || (c >= msgpcode.Int8 && c <= msgpcode.Int64)
}

// has reports whether key is present.
func (o object) has(key string) bool { _, ok := o.vals[key]; return ok }

func (o object) decoder(key string) (*msgpack.Decoder, byte, bool) {
	raw, ok := o.vals[key]
	if !ok {
		return nil, 0, false
	}
	d := msgpack.NewDecoder(bytes.NewReader(raw))
	c, _ := d.PeekCode()
	return d, c, true
}

// uint reads a uint field (any integer format holding a value >= 0).
func (o object) uint(key string, required bool, max uint64) (uint64, error) {
	d, c, ok := o.decoder(key)
	if !ok {
		if required {
			return 0, fail(MissingField, key)
		}
		return 0, nil
	}
	if !isInt(c) {
		return 0, fail(BadType, key)
	}
	var v uint64
	if isSigned(c) {
		s, err := d.DecodeInt64()
		if err != nil {
			return 0, fail(Malformed, key)
		}
		if s < 0 {
			return 0, fail(BadValue, key)
		}
		v = uint64(s)
	} else {
		u, err := d.DecodeUint64()
		if err != nil {
			return 0, fail(Malformed, key)
		}
		v = u
	}
	if v > max {
		return 0, fail(BadValue, key)
	}
	return v, nil
}

// int reads an int field.
func (o object) int(key string, required bool) (int64, error) {
	d, c, ok := o.decoder(key)
	if !ok {
		if required {
			return 0, fail(MissingField, key)
		}
		return 0, nil
	}
	if !isInt(c) {
		return 0, fail(BadType, key)
	}
	if c == msgpcode.Uint64 {
		u, err := d.DecodeUint64()
		if err != nil {
			return 0, fail(Malformed, key)
		}
		if u > 1<<63-1 {
			return 0, fail(BadValue, key)
		}
		return int64(u), nil
	}
	v, err := d.DecodeInt64()
	if err != nil {
		return 0, fail(Malformed, key)
	}
	return v, nil
}

func (o object) bool(key string, required bool) (bool, error) {
	_, c, ok := o.decoder(key)
	if !ok {
		if required {
			return false, fail(MissingField, key)
		}
		return false, nil
	}
	switch c {
	case msgpcode.True:
		return true, nil
	case msgpcode.False:
		return false, nil
	}
	return false, fail(BadType, key)
}

// str reads a str field (bin is not a string) and checks it with valid,
// which returns the code of a bad value or OK.
func (o object) str(key string, required bool, valid func(string) int) (string, error) {
	d, c, ok := o.decoder(key)
	if !ok {
		if required {
			return "", fail(MissingField, key)
		}
		return "", nil
	}
	if !msgpcode.IsString(c) {
		return "", fail(BadType, key)
	}
	s, err := d.DecodeString()
	if err != nil {
		return "", fail(Malformed, key)
	}
	if valid != nil {
		if code := valid(s); code != OK {
			return "", fail(code, key)
		}
	}
	return s, nil
}

func (o object) sub(key string, required bool) (object, bool, error) {
	raw, ok := o.vals[key]
	if !ok {
		if required {
			return object{}, false, fail(MissingField, key)
		}
		return object{}, false, nil
	}
	s, err := parseObject(raw, key)
	return s, err == nil, err
}

const (
	maxU32 = 1<<32 - 1
	maxPID = 1<<31 - 1
	maxU64 = ^uint64(0)
)

// DecodeRequest reads a request as a broker would (PROTOCOL.md section 3,
// steps 2 to 6). The client never receives requests; the golden-vector
// tests use it to check the encoder against the spec.
func DecodeRequest(b []byte) (*Request, error) {
	if code := Check(b, RequestLimits); code != OK {
		return nil, fail(code, "")
	}
	o, err := parseObject(b, "")
	if err != nil {
		return nil, err
	}
	v, err := o.uint("v", true, maxU64)
	if err != nil {
		return nil, err
	}
	if v != ProtoVersion {
		return nil, fail(VersionCode, "v")
	}
	r := &Request{}
	if r.RID, err = o.uint("rid", true, maxU64); err != nil {
		return nil, err
	}
	if r.RID == 0 {
		return nil, fail(BadValue, "rid")
	}
	if r.Op, err = o.str("op", true, nil); err != nil {
		return nil, err
	}
	known := false
	for _, op := range Ops {
		known = known || op == r.Op
	}
	if !known {
		return nil, fail(UnknownOp, "op")
	}
	seq := []func() error{}
	add := func(f func() error) { seq = append(seq, f) }
	uvm := func() { add(func() (e error) { r.UVM, e = o.str("uvm", true, ValidUVM); return }) }
	switch r.Op {
	case "hello":
		add(func() (e error) { r.Client, e = o.str("client", false, TextValidator(MaxClientText)); return })
	case "acquire":
		uvm()
		add(func() (e error) { r.Conf, e = o.bool("conf", true); return })
		add(func() (e error) {
			if r.TimeoutMS, e = o.int("timeout_ms", true); e == nil && (r.TimeoutMS < -1 || r.TimeoutMS > 1<<53-1) {
				e = fail(BadValue, "timeout_ms")
			}
			return
		})
		add(func() (e error) { r.Label, e = o.str("label", false, TextValidator(MaxLabel)); return })
	case "cancel":
		add(func() (e error) { r.Target, e = nonZero(o, "target"); return })
	case "release":
		add(func() (e error) { r.Lease, e = nonZero(o, "lease"); return })
	case "phase":
		add(func() (e error) { r.Lease, e = nonZero(o, "lease"); return })
		add(func() (e error) { r.Phase, e = o.str("phase", true, TextValidator(MaxPhase)); return })
	case "watch-child":
		add(func() (e error) { r.Lease, e = nonZero(o, "lease"); return })
		add(func() (e error) {
			var p uint64
			if p, e = o.uint("pid", true, maxPID); e == nil && p == 0 {
				e = fail(BadValue, "pid")
			}
			r.PID = uint32(p)
			return
		})
	case "list":
		add(func() (e error) {
			r.After, e = o.str("after", false, func(s string) int {
				if s == "" {
					return OK
				}
				return ValidUVM(s)
			})
			return
		})
		add(func() (e error) { var l uint64; l, e = o.uint("limit", false, maxU32); r.Limit = uint32(l); return })
	case "show":
		uvm()
	case "drain", "undrain":
		uvm()
		add(func() (e error) { r.Reason, e = o.str("reason", false, TextValidator(MaxLabel)); return })
	case "force-release":
		uvm()
		add(func() (e error) {
			r.Mode, e = o.str("mode", true, func(s string) int {
				if s == "revoke" || s == "kill" {
					return OK
				}
				return BadValue
			})
			return
		})
		add(func() (e error) { var p uint64; p, e = o.uint("pid", false, maxPID); r.PID = uint32(p); return })
		add(func() (e error) {
			r.Reason, e = o.str("reason", true, func(s string) int {
				if s == "" {
					return BadText
				}
				return TextValidator(MaxLabel)(s)
			})
			return
		})
	}
	for _, f := range seq {
		if err := f(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func nonZero(o object, key string) (uint64, error) {
	v, err := o.uint(key, true, maxU64)
	if err == nil && v == 0 {
		err = fail(BadValue, key)
	}
	return v, err
}

// Holder names the process holding a lease (PROTOCOL.md 6.3).
type Holder struct {
	PID      uint32
	UID      uint32
	Comm     string
	Label    string
	Lease    uint64
	Fence    uint64
	HeldMS   uint64
	Phase    string
	PhaseMS  uint64
	Overdue  bool
	ChildPID uint32
}

// Event is one watch event (PROTOCOL.md 6.3); only what this client reads.
type Event struct {
	Type       string
	At         uint64
	UVM        string
	PID        uint32
	Label      string
	Phase      string
	Reason     string
	Lease      uint64
	Fence      uint64
	DurationMS uint64
}

// Message is one broker message (PROTOCOL.md section 6), with the fields
// this client uses. Kinds: "reply", "grant", "acquire-failed", "revoked",
// "event". Payloads of list, show and stats replies are not decoded.
type Message struct {
	BI   uint64
	Kind string

	RID    uint64
	Op     string // reply; "" when the broker could not read the request
	Err    uint32
	Detail string
	Holder *Holder

	PID     uint32 // hello, ping: the broker's
	Server  string
	Journal string

	Queued   bool // acquire
	Position uint32
	Lease    uint64 // acquire, grant, cancel, revoked
	Fence    uint64
	UVM      string

	Reason string // revoked
	Event  *Event
}

// DecodeMessage checks and reads one broker message (PROTOCOL.md section
// 3, steps 2 to 7).
func DecodeMessage(b []byte) (*Message, error) {
	if code := Check(b, MessageLimits); code != OK {
		return nil, fail(code, "")
	}
	o, err := parseObject(b, "")
	if err != nil {
		return nil, err
	}
	v, err := o.uint("v", true, maxU64)
	if err != nil {
		return nil, err
	}
	if v != ProtoVersion {
		return nil, fail(VersionCode, "v")
	}
	m := &Message{}
	if m.BI, err = nonZero(o, "bi"); err != nil {
		return nil, err
	}
	if m.Kind, err = o.str("kind", true, nil); err != nil {
		return nil, err
	}
	text := func(key string, req bool, max int, dst *string) error {
		s, err := o.str(key, req, TextValidator(max))
		*dst = s
		return err
	}
	switch m.Kind {
	case "reply":
		if m.RID, err = o.uint("rid", true, maxU64); err != nil {
			return nil, err
		}
		if o.has("op") {
			if m.Op, err = o.str("op", true, nil); err != nil {
				return nil, err
			}
			known := false
			for _, op := range Ops {
				known = known || op == m.Op
			}
			if !known {
				return nil, fail(UnknownOp, "op")
			}
		}
		var e uint64
		if e, err = o.uint("err", true, maxU32); err != nil {
			return nil, err
		}
		m.Err = uint32(e)
		if err = text("detail", false, MaxDetail, &m.Detail); err != nil {
			return nil, err
		}
		if m.Holder, err = decodeHolder(o); err != nil {
			return nil, err
		}
		if m.Err != 0 {
			return m, nil
		}
		if m.Op == "" {
			return nil, fail(MissingField, "op")
		}
		err = m.replyPayload(o)
	case "grant":
		if m.RID, err = nonZero(o, "rid"); err == nil {
			if m.Lease, err = nonZero(o, "lease"); err == nil {
				if m.Fence, err = nonZero(o, "fence"); err == nil {
					m.UVM, err = o.str("uvm", true, ValidUVM)
				}
			}
		}
	case "acquire-failed":
		if m.RID, err = nonZero(o, "rid"); err != nil {
			return nil, err
		}
		var e uint64
		if e, err = o.uint("err", true, maxU32); err == nil && e == 0 {
			err = fail(BadValue, "err")
		}
		m.Err = uint32(e)
		if err == nil {
			if err = text("detail", false, MaxDetail, &m.Detail); err == nil {
				m.Holder, err = decodeHolder(o)
			}
		}
	case "revoked":
		if m.Lease, err = nonZero(o, "lease"); err == nil {
			if m.UVM, err = o.str("uvm", true, ValidUVM); err == nil {
				err = text("reason", true, MaxLabel, &m.Reason)
			}
		}
	case "event":
		m.Event, err = decodeEvent(o)
	default:
		err = fail(BadValue, "kind")
	}
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Message) replyPayload(o object) error {
	var err error
	switch m.Op {
	case "hello", "ping":
		var p uint64
		if p, err = o.uint("pid", true, maxPID); err == nil && p == 0 {
			err = fail(BadValue, "pid")
		}
		m.PID = uint32(p)
		if err == nil {
			m.Server, err = o.str("server", true, TextValidator(MaxClientText))
		}
		if err == nil {
			m.Journal, err = o.str("journal", false, func(s string) int {
				if ValidName(s) {
					return OK
				}
				return BadText
			})
		}
	case "acquire":
		if m.Queued, err = o.bool("queued", true); err != nil {
			return err
		}
		if m.Queued {
			var p uint64
			p, err = o.uint("position", true, maxU32)
			m.Position = uint32(p)
			return err
		}
		if m.Lease, err = nonZero(o, "lease"); err == nil {
			if m.Fence, err = nonZero(o, "fence"); err == nil {
				m.UVM, err = o.str("uvm", true, ValidUVM)
			}
		}
	case "cancel":
		m.Lease, err = o.uint("lease", false, maxU64)
		if err == nil && o.has("lease") && m.Lease == 0 {
			err = fail(BadValue, "lease")
		}
	}
	return err
}

func decodeHolder(parent object) (*Holder, error) {
	o, ok, err := parent.sub("holder", false)
	if err != nil || !ok {
		return nil, err
	}
	h := &Holder{}
	var p, u, c uint64
	steps := []func() error{
		func() (e error) {
			if p, e = o.uint("pid", true, maxPID); e == nil && p == 0 {
				e = fail(BadValue, "pid")
			}
			return
		},
		func() (e error) { u, e = o.uint("uid", true, maxU32); return },
		func() (e error) { h.Comm, e = o.str("comm", true, TextValidator(MaxComm)); return },
		func() (e error) { h.Label, e = o.str("label", true, TextValidator(MaxLabel)); return },
		func() (e error) { h.Lease, e = o.uint("lease", true, maxU64); return },
		func() (e error) { h.Fence, e = o.uint("fence", true, maxU64); return },
		func() (e error) { h.HeldMS, e = o.uint("held_ms", true, maxU64); return },
		func() (e error) { h.Phase, e = o.str("phase", true, TextValidator(MaxPhase)); return },
		func() (e error) { h.PhaseMS, e = o.uint("phase_ms", true, maxU64); return },
		func() (e error) { h.Overdue, e = o.bool("overdue", true); return },
		func() (e error) { c, e = o.uint("child_pid", false, maxPID); return },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	h.PID, h.UID, h.ChildPID = uint32(p), uint32(u), uint32(c)
	return h, nil
}

// EventTypes of PROTOCOL.md 6.3.
var EventTypes = []string{"queued", "grant", "release", "timeout", "cancel", "phase", "overdue",
	"drain", "undrain", "force-release"}

func decodeEvent(parent object) (*Event, error) {
	o, _, err := parent.sub("event", true)
	if err != nil {
		return nil, err
	}
	ev := &Event{}
	var p uint64
	steps := []func() error{
		func() (e error) {
			ev.Type, e = o.str("type", true, func(s string) int {
				for _, t := range EventTypes {
					if s == t {
						return OK
					}
				}
				return BadValue
			})
			return
		},
		func() (e error) { ev.At, e = o.uint("at", true, maxU64); return },
		func() (e error) { ev.UVM, e = o.str("uvm", true, ValidUVM); return },
		func() (e error) { p, e = o.uint("pid", false, maxPID); return },
		func() (e error) { ev.Label, e = o.str("label", false, TextValidator(MaxLabel)); return },
		func() (e error) { ev.Phase, e = o.str("phase", false, TextValidator(MaxPhase)); return },
		func() (e error) { ev.Reason, e = o.str("reason", false, TextValidator(MaxLabel)); return },
		func() (e error) { ev.Lease, e = o.uint("lease", false, maxU64); return },
		func() (e error) { ev.Fence, e = o.uint("fence", false, maxU64); return },
		func() (e error) { ev.DurationMS, e = o.uint("duration_ms", false, maxU64); return },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	ev.PID = uint32(p)
	return ev, nil
}
