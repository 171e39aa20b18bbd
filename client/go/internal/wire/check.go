// Package wire is the uvmlease wire protocol of common/PROTOCOL.md: the
// bounded structural check every received message goes through before a
// msgpack decoder sees it (section 3), the canonical encoding of requests
// and the decoding of broker messages (sections 5 and 6).
package wire

import "encoding/binary"

// Status codes of PROTOCOL.md section 10 used by this package.
const (
	OK            = 0
	Malformed     = 1
	TooLarge      = 2
	TooDeep       = 3
	Limit         = 4
	Truncated     = 5
	Trailing      = 6
	Multipart     = 7
	BadType       = 8
	MissingField  = 9
	UnknownOp     = 10
	VersionCode   = 11
	BadUVMID      = 12
	BadText       = 13
	BadValue      = 14
	ProtoVersion  = 1
	MaxRequest    = 4096
	MaxBrokerMsg  = 1 << 20
	MaxUVM        = 256
	MaxLabel      = 256
	MaxPhase      = 64
	MaxClientText = 64
	MaxDetail     = 256
	MaxComm       = 16
)

// Limits are the structural limits of PROTOCOL.md section 3.
type Limits struct {
	Message int // bytes of the whole message
	Depth   int // nesting; the top-level map is depth 1
	Entries int // entries of any one array or map
	Str     int // bytes of any one str / bin / ext payload
	Keys    int // keys of any one object
}

// RequestLimits bound a request (client to broker).
var RequestLimits = Limits{Message: MaxRequest, Depth: 2, Entries: 32, Str: 1024, Keys: 32}

// MessageLimits bound a broker message.
var MessageLimits = Limits{Message: MaxBrokerMsg, Depth: 6, Entries: 4096, Str: 1024, Keys: 64}

// Check walks the raw bytes of one message without allocating and returns
// the first structural failure in the order of PROTOCOL.md section 3
// (steps 2 to 4), or OK.
func Check(b []byte, l Limits) int {
	if len(b) > l.Message {
		return TooLarge
	}
	if len(b) == 0 {
		return Truncated
	}
	// open[i] is the number of elements still to read in the i-th open
	// container (at most l.Depth of them); pending counts every element
	// still announced, this one included.
	var openBuf [8]int
	open := openBuf[:0]
	pending := 1
	pos, n := 0, len(b)
	for pending > 0 {
		for len(open) > 0 && open[len(open)-1] == 0 {
			open = open[:len(open)-1]
		}
		if len(open) > 0 {
			open[len(open)-1]--
		}
		pending--
		if pos >= n {
			return Truncated
		}
		c := b[pos]
		pos++
		// fixed returns the bytes a header needs after its first byte.
		need := func(k int) bool { return n-pos >= k+pending }
		var payload, count int
		isContainer, isMap := false, false
		switch {
		case c == 0xc1:
			return Malformed
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
			continue
		case c >= 0x80 && c <= 0x8f:
			isContainer, isMap, count = true, true, int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			isContainer, count = true, int(c&0x0f)
		case c >= 0xa0 && c <= 0xbf:
			payload = int(c & 0x1f)
		case c == 0xc4 || c == 0xd9 || c == 0xc7:
			if !need(1) {
				return Truncated
			}
			payload = int(b[pos])
			pos++
		case c == 0xc5 || c == 0xda || c == 0xc8:
			if !need(2) {
				return Truncated
			}
			payload = int(binary.BigEndian.Uint16(b[pos:]))
			pos += 2
		case c == 0xc6 || c == 0xdb || c == 0xc9:
			if !need(4) {
				return Truncated
			}
			v := binary.BigEndian.Uint32(b[pos:])
			if uint64(v) > uint64(l.Str) {
				return Limit
			}
			payload = int(v)
			pos += 4
		case c == 0xca || c == 0xce || c == 0xd2:
			if !need(4) {
				return Truncated
			}
			pos += 4
			continue
		case c == 0xcb || c == 0xcf || c == 0xd3:
			if !need(8) {
				return Truncated
			}
			pos += 8
			continue
		case c == 0xcc || c == 0xd0:
			if !need(1) {
				return Truncated
			}
			pos++
			continue
		case c == 0xcd || c == 0xd1:
			if !need(2) {
				return Truncated
			}
			pos += 2
			continue
		case c >= 0xd4 && c <= 0xd8:
			payload = 1 << (c - 0xd4)
		case c == 0xdc || c == 0xde:
			if !need(2) {
				return Truncated
			}
			isContainer, isMap, count = true, c == 0xde, int(binary.BigEndian.Uint16(b[pos:]))
			pos += 2
		case c == 0xdd || c == 0xdf:
			if !need(4) {
				return Truncated
			}
			v := binary.BigEndian.Uint32(b[pos:])
			isContainer, isMap = true, c == 0xdf
			if uint64(v) > uint64(l.Entries) {
				count = l.Entries + 1
			} else {
				count = int(v)
			}
			pos += 4
		}
		if isContainer {
			if len(open)+1 > l.Depth {
				return TooDeep
			}
			if count > l.Entries || (isMap && count > l.Keys) {
				return Limit
			}
			elems := count
			if isMap {
				elems *= 2
			}
			if n-pos < elems+pending {
				return Truncated
			}
			open = append(open, elems)
			pending += elems
			continue
		}
		// str, bin or ext: ext also has its type byte before the payload.
		if c == 0xc7 || c == 0xc8 || c == 0xc9 || (c >= 0xd4 && c <= 0xd8) {
			if payload > l.Str {
				return Limit
			}
			payload++
		} else if payload > l.Str {
			return Limit
		}
		if n-pos < payload+pending {
			return Truncated
		}
		pos += payload
	}
	if pos < n {
		return Trailing
	}
	return OK
}
