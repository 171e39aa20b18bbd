package zmtp

import (
	"context"
	"net"
	"sync"
	"time"
)

// EventKind says what a Dealer event reports.
type EventKind int

const (
	// Up: a session is established (the first one, or after a reconnect);
	// anything sent on an earlier session may have been lost.
	Up EventKind = iota
	// Down: the session ended; Err says why.
	Down
	// Message: a message arrived on the current session.
	Message
)

// Event is one thing a Dealer reports, in order.
type Event struct {
	Kind    EventKind
	Session uint64   // numbers sessions from 1
	Frames  [][]byte // Message
	Err     error    // Down
}

// Backoff bounds the wait between connection attempts: Min after a
// session ends or the first attempt fails, doubling up to Max.
type Backoff struct {
	Min, Max time.Duration
}

// DialFunc opens a new stream connection to the peer.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Dealer is a DEALER socket with one peer: it keeps one session up,
// reconnecting with backoff when it ends, and reports sessions and
// incoming messages on Events. Unlike libzmq it does not queue messages
// while no session is up: Send fails with ErrNoSession, and the owner
// re-sends what it still needs on the next Up (as ZMQ_IMMEDIATE).
// One goroutine runs per Dealer until Close returns.
type Dealer struct {
	dial    DialFunc
	opts    Options
	backoff Backoff
	events  chan Event

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	cur     *Conn    // the established session, for Send
	session uint64   // its number
	raw     net.Conn // the connection being set up or used, for Close
	closed  bool
}

// NewDealer starts a Dealer. first, if not nil, is an established session
// to start with (reported as the first Up); otherwise the Dealer dials.
func NewDealer(first *Conn, dial DialFunc, o Options, b Backoff) *Dealer {
	if b.Min <= 0 {
		b.Min = 100 * time.Millisecond
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &Dealer{dial: dial, opts: o, backoff: b, events: make(chan Event, 16),
		ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go d.run(first)
	return d
}

// Events delivers Up, Message and Down events in order. The owner must
// keep reading it until Close.
func (d *Dealer) Events() <-chan Event { return d.events }

// Send writes one single-frame message on the current session. It fails
// with ErrNoSession when none is up; a failed write ends the session.
func (d *Dealer) Send(msg []byte) error {
	d.mu.Lock()
	z := d.cur
	d.mu.Unlock()
	if z == nil {
		return ErrNoSession
	}
	if err := z.WriteMessage(msg); err != nil {
		z.Close() // the reading side notices and reconnects
		return err
	}
	return nil
}

// Close ends the session and stops reconnecting; when it returns, the
// Dealer's goroutine has finished. Events is not closed.
func (d *Dealer) Close() {
	d.mu.Lock()
	d.closed = true
	if d.raw != nil {
		d.raw.Close()
	}
	d.mu.Unlock()
	d.cancel()
	<-d.done
}

func (d *Dealer) emit(ev Event) bool {
	select {
	case d.events <- ev:
		return true
	case <-d.ctx.Done():
		return false
	}
}

// track records c as the connection Close must interrupt; false when
// closing already.
func (d *Dealer) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.raw = c
	return true
}

func (d *Dealer) connect() (*Conn, error) {
	c, err := d.dial(d.ctx)
	if err != nil {
		return nil, err
	}
	if !d.track(c) {
		c.Close()
		return nil, ErrClosed
	}
	return Handshake(c, d.opts)
}

func (d *Dealer) run(z *Conn) {
	defer close(d.done)
	wait := d.backoff.Min
	if z != nil && !d.track(z.c) {
		z.Close()
		return
	}
	for {
		if z == nil {
			var err error
			z, err = d.connect()
			if err != nil {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-d.ctx.Done():
					t.Stop()
					return
				}
				if wait *= 2; wait > d.backoff.Max {
					wait = d.backoff.Max
				}
				continue
			}
		}
		wait = d.backoff.Min
		d.mu.Lock()
		d.session++
		n := d.session
		d.cur = z
		d.mu.Unlock()
		if !d.emit(Event{Kind: Up, Session: n}) {
			z.Close()
			return
		}
		var err error
		for {
			var frames [][]byte
			frames, err = z.ReadMessage()
			if err != nil {
				break
			}
			if !d.emit(Event{Kind: Message, Session: n, Frames: frames}) {
				break
			}
		}
		d.mu.Lock()
		d.cur = nil
		d.raw = nil
		d.mu.Unlock()
		z.Close()
		z = nil
		if !d.emit(Event{Kind: Down, Session: n, Err: err}) {
			return
		}
		// As libzmq's reconnect interval: never hammer a peer that
		// accepts and drops sessions.
		t := time.NewTimer(d.backoff.Min)
		select {
		case <-t.C:
		case <-d.ctx.Done():
			t.Stop()
			return
		}
	}
}
