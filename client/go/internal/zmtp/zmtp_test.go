package zmtp

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The peer side is written here from RFC 23/37 byte by byte, independently
// of the code under test.

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

var routerGreeting = append(unhex("ff 00 00 00 00 00 00 00 01 7f 03 01"),
	append([]byte("NULL"), make([]byte, 16+1+31)...)...)

// readyFrame is a READY command with Socket-Type and extra properties.
func readyFrame(socketType string, extra ...string) []byte {
	body := []byte{5}
	body = append(body, "READY"...)
	props := append([]string{"Socket-Type", socketType}, extra...)
	for i := 0; i < len(props); i += 2 {
		body = append(body, byte(len(props[i])))
		body = append(body, props[i]...)
		v := props[i+1]
		body = append(body, 0, 0, 0, byte(len(v)))
		body = append(body, v...)
	}
	return append([]byte{0x04, byte(len(body))}, body...)
}

type peer struct {
	c        net.Conn
	greeting []byte // what the client sent
	ready    []byte
}

// servePeer plays a ROUTER's side of the handshake on c.
func servePeer(c net.Conn, greeting, ready []byte) (*peer, error) {
	p := &peer{c: c, greeting: make([]byte, 64)}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, p.greeting); err != nil {
		return p, err
	}
	if _, err := c.Write(greeting); err != nil {
		return p, err
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return p, err
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, body); err != nil {
		return p, err
	}
	p.ready = append(hdr, body...)
	_, err := c.Write(ready)
	c.SetDeadline(time.Time{})
	return p, err
}

func listen(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

// pair returns a handshaken client Conn and the peer's raw side.
func pair(t *testing.T, o Options) (*Conn, *peer) {
	t.Helper()
	l, path := listen(t)
	ch := make(chan *peer, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			ch <- nil
			return
		}
		p, err := servePeer(c, routerGreeting, readyFrame("ROUTER"))
		if err != nil {
			t.Errorf("peer: %v", err)
		}
		ch <- p
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	z, err := Handshake(c, o)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	p := <-ch
	t.Cleanup(func() { z.Close(); p.c.Close() })
	return z, p
}

var dealerOpts = Options{SocketType: "DEALER", HandshakeTimeout: 2 * time.Second, MaxMessage: 1 << 20}

func TestHandshakeBytes(t *testing.T) {
	_, p := pair(t, dealerOpts)
	want := append(unhex("ff 00 00 00 00 00 00 00 00 7f 03 01 4e 55 4c 4c"), make([]byte, 48)...)
	if !bytes.Equal(p.greeting, want) {
		t.Errorf("greeting\n got %x\nwant %x", p.greeting, want)
	}
	// 04 (command) 29 (41 bytes) 05 READY, 0b Socket-Type 00000006 DEALER,
	// 08 Identity 00000000.
	wantReady := unhex("04 29 05 52 45 41 44 59" +
		"0b 53 6f 63 6b 65 74 2d 54 79 70 65 00 00 00 06 44 45 41 4c 45 52" +
		"08 49 64 65 6e 74 69 74 79 00 00 00 00")
	if !bytes.Equal(p.ready, wantReady) {
		t.Errorf("READY\n got %x\nwant %x", p.ready, wantReady)
	}
}

func TestPeerPropertiesCaseInsensitive(t *testing.T) {
	l, path := listen(t)
	go func() {
		c, err := l.Accept()
		if err == nil {
			servePeer(c, routerGreeting, readyFrame("ROUTER", "IDENTITY", "abc"))
		}
	}()
	c, _ := net.Dial("unix", path)
	z, err := Handshake(c, dealerOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	if string(z.PeerProperty("identity")) != "abc" || string(z.PeerProperty("socket-type")) != "ROUTER" {
		t.Errorf("properties: %q", z.props)
	}
}

func TestFramesShortLongMore(t *testing.T) {
	z, p := pair(t, dealerOpts)
	// Writing: 255 bytes is a short frame, 256 a long one.
	short, long := bytes.Repeat([]byte{'s'}, 255), bytes.Repeat([]byte{'l'}, 256)
	if err := z.WriteMessage(short); err != nil {
		t.Fatal(err)
	}
	if err := z.WriteMessage(long); err != nil {
		t.Fatal(err)
	}
	if err := z.WriteMessage([]byte("a"), []byte("b")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2+255+9+256+3+3)
	if _, err := io.ReadFull(p.c, got); err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{0x00, 0xff}, short...), unhex("02 00 00 00 00 00 00 01 00")...), long...)
	want = append(want, unhex("01 01 61 00 01 62")...)
	if !bytes.Equal(got, want) {
		t.Fatalf("frames on the wire:\n got %x\nwant %x", got, want)
	}
	// Reading: a long frame, a short size written as a long frame (legal),
	// a two-frame message, and a PING answered with PONG on the way.
	body := bytes.Repeat([]byte{'x'}, 300)
	in := append(unhex("02 00 00 00 00 00 00 01 2c"), body...)
	in = append(in, unhex("02 00 00 00 00 00 00 00 02 68 69")...)
	in = append(in, unhex("04 09 04 50 49 4e 47 00 0a 61 62")...) // PING ttl=10 ctx "ab"
	in = append(in, unhex("01 01 41 00 01 42")...)
	go p.c.Write(in)
	for _, w := range [][]string{{string(body)}, {"hi"}, {"A", "B"}} {
		m, err := z.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if len(m) != len(w) {
			t.Fatalf("got %d frames, want %d", len(m), len(w))
		}
		for i := range w {
			if string(m[i]) != w[i] {
				t.Errorf("frame %d: %q", i, m[i])
			}
		}
	}
	// PONG echoes the context: command, 7 bytes, 04 "PONG" "ab".
	pong := make([]byte, 9)
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(p.c, pong); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pong, unhex("04 07 04 50 4f 4e 47 61 62")) {
		t.Errorf("PONG: %x", pong)
	}
}

func TestTooLargeRefused(t *testing.T) {
	o := dealerOpts
	o.MaxMessage = 100
	z, p := pair(t, o)
	go p.c.Write(append(unhex("00 65"), make([]byte, 101)...))
	if _, err := z.ReadMessage(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
	z2, p2 := pair(t, o)
	go p2.c.Write(unhex("01 3c" + strings.Repeat("00", 60) + "00 3c" + strings.Repeat("00", 60)))
	if _, err := z2.ReadMessage(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("multipart over the limit: %v", err)
	}
}

func handshakeWith(t *testing.T, greeting, ready []byte, o Options) error {
	t.Helper()
	l, path := listen(t)
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if greeting == nil {
			io.Copy(io.Discard, c) // silent peer: reads, never answers
			return
		}
		// The client may give up half-way: that is what is tested.
		if _, err := servePeer(c, greeting, ready); err == nil {
			io.Copy(io.Discard, c)
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	z, err := Handshake(c, o)
	if err == nil {
		z.Close()
	}
	return err
}

func TestHandshakeRefusals(t *testing.T) {
	curve := append([]byte(nil), routerGreeting...)
	copy(curve[12:32], append([]byte("CURVE"), make([]byte, 15)...))
	if err := handshakeWith(t, curve, readyFrame("ROUTER"), dealerOpts); !errors.Is(err, ErrMechanism) {
		t.Errorf("CURVE peer: %v", err)
	}
	if err := handshakeWith(t, routerGreeting, readyFrame("PUB"), dealerOpts); !errors.Is(err, ErrIncompat) {
		t.Errorf("PUB peer: %v", err)
	}
	errCmd := append(unhex("04 0c 05"), append([]byte("ERROR"), append([]byte{5}, "nope!"...)...)...)
	if err := handshakeWith(t, routerGreeting, errCmd, dealerOpts); !errors.Is(err, ErrPeerFailed) || !strings.Contains(err.Error(), "nope!") {
		t.Errorf("ERROR command: %v", err)
	}
	bad := append([]byte(nil), routerGreeting...)
	bad[0] = 0x01
	if err := handshakeWith(t, bad, readyFrame("ROUTER"), dealerOpts); !errors.Is(err, ErrProtocol) {
		t.Errorf("bad signature: %v", err)
	}
	old := append([]byte(nil), routerGreeting...)
	old[10] = 2
	if err := handshakeWith(t, old, readyFrame("ROUTER"), dealerOpts); !errors.Is(err, ErrProtocol) {
		t.Errorf("ZMTP 2 peer: %v", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	o := dealerOpts
	o.HandshakeTimeout = 150 * time.Millisecond
	start := time.Now()
	err := handshakeWith(t, nil, nil, o)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("silent peer: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

// noLeak fails when a goroutine of this package is still running once the
// Dealers are closed (their goroutines end before Close returns; the
// runtime may take a moment to retire them).
func noLeak(t *testing.T, marker string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		s := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(s, marker) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutine left running:\n%s", s)
		}
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDealerReconnectsWithBackoff(t *testing.T) {
	l, path := listen(t)
	var mu sync.Mutex
	var attempts []time.Time
	failFirst := 4
	dial := func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		attempts = append(attempts, time.Now())
		n := len(attempts)
		mu.Unlock()
		if n <= failFirst {
			return nil, errors.New("refused (test)")
		}
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	peers := make(chan *peer, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p, err := servePeer(c, routerGreeting, readyFrame("ROUTER"))
			if err != nil {
				t.Errorf("peer: %v", err)
			}
			peers <- p
		}
	}()
	b := Backoff{Min: 20 * time.Millisecond, Max: 60 * time.Millisecond}
	d := NewDealer(nil, dial, dealerOpts, b)
	if err := d.Send([]byte("x")); !errors.Is(err, ErrNoSession) {
		t.Errorf("send without a session: %v", err)
	}
	next := func() Event {
		select {
		case ev := <-d.Events():
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
		return Event{}
	}
	if ev := next(); ev.Kind != Up || ev.Session != 1 {
		t.Fatalf("first event %+v", ev)
	}
	mu.Lock()
	gaps := []time.Duration{}
	for i := 1; i < len(attempts); i++ {
		gaps = append(gaps, attempts[i].Sub(attempts[i-1]))
	}
	mu.Unlock()
	wantMin := []time.Duration{20, 40, 60, 60}
	if len(gaps) != len(wantMin) {
		t.Fatalf("%d attempts, want %d", len(gaps)+1, len(wantMin)+1)
	}
	for i, g := range gaps {
		if g < wantMin[i]*time.Millisecond {
			t.Errorf("attempt %d came %v after the previous one, want >= %v", i+2, g, wantMin[i]*time.Millisecond)
		}
	}
	// A message both ways, then the peer drops the session: Down, then a
	// new session.
	p := <-peers
	if err := d.Send([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 7)
	io.ReadFull(p.c, got)
	if !bytes.Equal(got, unhex("00 05 68 65 6c 6c 6f")) {
		t.Errorf("sent %x", got)
	}
	p.c.Write(unhex("00 02 6f 6b"))
	if ev := next(); ev.Kind != Message || string(ev.Frames[0]) != "ok" {
		t.Fatalf("event %+v", ev)
	}
	p.c.Close()
	if ev := next(); ev.Kind != Down || ev.Session != 1 {
		t.Fatalf("event %+v", ev)
	}
	if ev := next(); ev.Kind != Up || ev.Session != 2 {
		t.Fatalf("event %+v", ev)
	}
	d.Close()
	noLeak(t, "zmtp.(*Dealer).run")
}

// Close interrupts a handshake the peer never finishes, long before its
// timeout.
func TestDealerCloseDuringHandshake(t *testing.T) {
	l, path := listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	o := dealerOpts
	o.HandshakeTimeout = time.Minute
	d := NewDealer(nil, func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", path)
	}, o, Backoff{})
	c := <-accepted
	defer c.Close()
	// The greeting arriving shows the Dealer is inside its handshake.
	io.ReadFull(c, make([]byte, 64))
	start := time.Now()
	d.Close()
	if time.Since(start) > 2*time.Second {
		t.Fatalf("Close took %v", time.Since(start))
	}
	noLeak(t, "zmtp.(*Dealer).run")
}
