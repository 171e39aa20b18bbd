// Package zmtp speaks the part of ZMTP 3.x (the ZeroMQ wire protocol,
// RFC 23/ZMTP and 37/ZMTP) that a DEALER socket needs to talk to a ZeroMQ
// ROUTER over a stream connection: the greeting, the NULL security
// mechanism's READY handshake with Socket-Type and Identity, message and
// command frames (MORE, LONG and COMMAND flags, long frames), PING/PONG,
// a handshake timeout, and a Dealer that reconnects with backoff.
package zmtp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// Frame flags (RFC 23, "Framing").
const (
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
)

// Greeting is 64 bytes: signature (10), version (2), mechanism (20),
// as-server (1), filler (31).
const greetingSize = 64

// Errors reported by a connection.
var (
	ErrProtocol   = errors.New("zmtp: protocol error")
	ErrTooLarge   = errors.New("zmtp: message larger than allowed")
	ErrNoSession  = errors.New("zmtp: not connected")
	ErrClosed     = errors.New("zmtp: closed")
	ErrIncompat   = errors.New("zmtp: incompatible peer socket type")
	ErrMechanism  = errors.New("zmtp: peer uses another security mechanism")
	ErrPeerFailed = errors.New("zmtp: peer refused the handshake")
)

// Options configure one side of a connection.
type Options struct {
	SocketType       string        // this socket's type, e.g. "DEALER"
	Identity         []byte        // routing id announced in READY; empty: the peer picks one
	HandshakeTimeout time.Duration // greeting and READY must be done within it (0: 5 s)
	WriteTimeout     time.Duration // each message write (0: no limit)
	MaxMessage       int64         // bytes of an incoming message, all frames (0: no limit)
}

// compatible lists the peer socket types each type may talk to (RFC 23,
// "Socket Type Compatibility"), for the types this package is used with.
var compatible = map[string][]string{
	"DEALER": {"REP", "DEALER", "ROUTER"},
	"ROUTER": {"REQ", "DEALER", "ROUTER"},
}

// Greeting returns the 64 bytes this side sends: ZMTP 3.1, NULL, as-server 0.
func Greeting() []byte {
	g := make([]byte, greetingSize)
	g[0], g[9] = 0xff, 0x7f
	g[10], g[11] = 3, 1
	copy(g[12:32], "NULL")
	return g
}

// Command encodes one command frame (flags, size, name length, name, data).
func Command(name string, data []byte) []byte {
	body := make([]byte, 0, 1+len(name)+len(data))
	body = append(body, byte(len(name)))
	body = append(body, name...)
	body = append(body, data...)
	return appendFrame(nil, flagCommand, body)
}

// Metadata encodes READY properties: name length (1 octet), name, value
// length (4 octets, network order), value; in the order given.
func Metadata(props ...[2][]byte) []byte {
	var b []byte
	for _, p := range props {
		b = append(b, byte(len(p[0])))
		b = append(b, p[0]...)
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(p[1])))
		b = append(b, n[:]...)
		b = append(b, p[1]...)
	}
	return b
}

// appendFrame appends one frame: a short frame (1-octet size) up to 255
// bytes, else a long one (8-octet size).
func appendFrame(dst []byte, flags byte, body []byte) []byte {
	if len(body) > 255 {
		dst = append(dst, flags|flagLong)
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(body)))
		dst = append(dst, n[:]...)
	} else {
		dst = append(dst, flags, byte(len(body)))
	}
	return append(dst, body...)
}

// EncodeMessage encodes a message of one or more frames.
func EncodeMessage(frames ...[]byte) []byte {
	var b []byte
	for i, f := range frames {
		var flags byte
		if i < len(frames)-1 {
			flags = flagMore
		}
		b = appendFrame(b, flags, f)
	}
	return b
}

// Conn is one ZMTP session over a stream connection after its handshake.
// ReadMessage must be called from one goroutine at a time; WriteMessage
// may be called from any.
type Conn struct {
	c     net.Conn
	r     *bufio.Reader
	opts  Options
	wmu   sync.Mutex
	props map[string][]byte
	minor byte
}

// Handshake runs the greeting and the NULL handshake over c as the
// connecting (client) side. It closes c and returns an error when the
// peer does not complete it within o.HandshakeTimeout.
func Handshake(c net.Conn, o Options) (*Conn, error) {
	t := o.HandshakeTimeout
	if t <= 0 {
		t = 5 * time.Second
	}
	if err := c.SetDeadline(time.Now().Add(t)); err != nil {
		c.Close()
		return nil, err
	}
	z := &Conn{c: c, r: bufio.NewReaderSize(c, 64<<10), opts: o}
	if err := z.handshake(); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return z, nil
}

func (z *Conn) handshake() error {
	// The whole greeting at once: a 3.x peer reads it in any slices.
	if _, err := z.c.Write(Greeting()); err != nil {
		return err
	}
	var g [greetingSize]byte
	if _, err := io.ReadFull(z.r, g[:10]); err != nil {
		return err
	}
	if g[0] != 0xff || g[9] != 0x7f {
		return fmt.Errorf("%w: not a ZMTP 3 greeting", ErrProtocol)
	}
	if _, err := io.ReadFull(z.r, g[10:]); err != nil {
		return err
	}
	if g[10] < 3 {
		return fmt.Errorf("%w: peer speaks ZMTP %d.%d", ErrProtocol, g[10], g[11])
	}
	z.minor = g[11]
	if g[10] > 3 {
		z.minor = 1
	}
	if mech := string(bytes.TrimRight(g[12:32], "\x00")); mech != "NULL" {
		return fmt.Errorf("%w: %q", ErrMechanism, mech)
	}
	ready := Metadata([2][]byte{[]byte("Socket-Type"), []byte(z.opts.SocketType)},
		[2][]byte{[]byte("Identity"), z.opts.Identity})
	if _, err := z.c.Write(Command("READY", ready)); err != nil {
		return err
	}
	flags, body, err := z.readFrame()
	if err != nil {
		return err
	}
	if flags&flagCommand == 0 {
		return fmt.Errorf("%w: message before READY", ErrProtocol)
	}
	name, data, err := splitCommand(body)
	if err != nil {
		return err
	}
	switch name {
	case "READY":
	case "ERROR":
		reason := ""
		if len(data) > 0 && int(data[0]) <= len(data)-1 {
			reason = string(data[1 : 1+int(data[0])])
		}
		return fmt.Errorf("%w: %s", ErrPeerFailed, reason)
	default:
		return fmt.Errorf("%w: %s before READY", ErrProtocol, name)
	}
	props, err := parseMetadata(data)
	if err != nil {
		return err
	}
	z.props = props
	peer := string(props["socket-type"])
	ok := false
	for _, t := range compatible[z.opts.SocketType] {
		ok = ok || t == peer
	}
	if !ok {
		return fmt.Errorf("%w: %s with %q", ErrIncompat, z.opts.SocketType, peer)
	}
	return nil
}

func splitCommand(body []byte) (string, []byte, error) {
	if len(body) < 1 || int(body[0]) == 0 || int(body[0]) > len(body)-1 {
		return "", nil, fmt.Errorf("%w: bad command", ErrProtocol)
	}
	n := int(body[0])
	return string(body[1 : 1+n]), body[1+n:], nil
}

// parseMetadata reads READY properties; names are case-insensitive and
// are returned lower-cased.
func parseMetadata(b []byte) (map[string][]byte, error) {
	props := map[string][]byte{}
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || len(b) < 1+n+4 {
			return nil, fmt.Errorf("%w: bad metadata", ErrProtocol)
		}
		name := strings.ToLower(string(b[1 : 1+n]))
		vlen := binary.BigEndian.Uint32(b[1+n:])
		b = b[1+n+4:]
		if uint64(vlen) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: bad metadata", ErrProtocol)
		}
		props[name] = b[:vlen]
		b = b[vlen:]
	}
	return props, nil
}

// PeerProperty returns a property of the peer's READY (case-insensitive).
func (z *Conn) PeerProperty(name string) []byte { return z.props[strings.ToLower(name)] }

// readFrame reads one frame, refusing one larger than MaxMessage.
func (z *Conn) readFrame() (byte, []byte, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(z.r, hdr[:2]); err != nil {
		return 0, nil, err
	}
	flags := hdr[0]
	if flags&^(flagMore|flagLong|flagCommand) != 0 {
		return 0, nil, fmt.Errorf("%w: frame flags %#x", ErrProtocol, flags)
	}
	size := uint64(hdr[1])
	if flags&flagLong != 0 {
		if _, err := io.ReadFull(z.r, hdr[2:9]); err != nil {
			return 0, nil, err
		}
		size = binary.BigEndian.Uint64(hdr[1:9])
	}
	if z.opts.MaxMessage > 0 && size > uint64(z.opts.MaxMessage) {
		return 0, nil, ErrTooLarge
	}
	if size > 1<<40 {
		return 0, nil, ErrTooLarge
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(z.r, body); err != nil {
		return 0, nil, err
	}
	return flags, body, nil
}

// ReadMessage returns the next message (its frames). It answers PING
// with PONG and skips other commands; an ERROR command ends the session.
func (z *Conn) ReadMessage() ([][]byte, error) {
	var frames [][]byte
	var total int64
	for {
		flags, body, err := z.readFrame()
		if err != nil {
			return nil, err
		}
		if flags&flagCommand != 0 {
			if len(frames) > 0 {
				return nil, fmt.Errorf("%w: command inside a message", ErrProtocol)
			}
			name, data, err := splitCommand(body)
			if err != nil {
				return nil, err
			}
			switch name {
			case "PING":
				// ping = TTL (2 octets) context (0-16 octets); pong echoes the context.
				if len(data) < 2 {
					return nil, fmt.Errorf("%w: bad PING", ErrProtocol)
				}
				if err := z.write(Command("PONG", data[2:])); err != nil {
					return nil, err
				}
			case "ERROR":
				return nil, fmt.Errorf("%w: ERROR command", ErrPeerFailed)
			}
			continue
		}
		total += int64(len(body))
		if z.opts.MaxMessage > 0 && total > z.opts.MaxMessage {
			return nil, ErrTooLarge
		}
		frames = append(frames, body)
		if flags&flagMore == 0 {
			return frames, nil
		}
	}
}

// WriteMessage sends one message of one or more frames, atomically with
// respect to other writers.
func (z *Conn) WriteMessage(frames ...[]byte) error {
	return z.write(EncodeMessage(frames...))
}

func (z *Conn) write(b []byte) error {
	z.wmu.Lock()
	defer z.wmu.Unlock()
	if z.opts.WriteTimeout > 0 {
		if err := z.c.SetWriteDeadline(time.Now().Add(z.opts.WriteTimeout)); err != nil {
			return err
		}
	}
	_, err := z.c.Write(b)
	return err
}

// Close closes the underlying connection.
func (z *Conn) Close() error { return z.c.Close() }
