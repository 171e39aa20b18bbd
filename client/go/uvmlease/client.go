// Package uvmlease is a pure-Go client of the uvmlease broker
// (uvmleased): it takes the exclusive bring-up lease of a utility VM
// around the host-side steps of a container create, with the guarantees
// of the C library libuvmlease, over the same wire protocol
// (common/PROTOCOL.md), without cgo.
//
//	c, err := uvmlease.Dial(ctx, "")
//	...
//	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
//	l, err := c.Acquire(ctx, uvmID, uvmlease.Confidential, containerID)
//	var he *uvmlease.HolderError
//	if errors.As(err, &he) { ... he.Holder.PID, he.Holder.Phase ... }
//	l.Phase(ctx, "cim-mount")
//	...
//	l.Release(ctx)
//	c.Close()
//
// A Client is safe for concurrent use by any number of goroutines over one
// connection; every Acquire is its own waiter (two goroutines asking for
// one confidential UVM queue behind each other). One goroutine owns the
// connection's state and one reads the socket; both end before Close
// returns.
package uvmlease

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/uvmlease/uvmlease/client/go/internal/wire"
	"github.com/uvmlease/uvmlease/client/go/internal/zmtp"
)

// Bounds on how long calls wait for a broker that does not answer, as
// libuvmlease's.
const (
	ConnectTimeout = 2 * time.Second // Dial
	CallTimeout    = 5 * time.Second // Phase, Release, Ping: when ctx has no earlier deadline
	TryGrace       = 1 * time.Second // TryAcquire: when ctx has no earlier deadline
	CloseTimeout   = 1 * time.Second // Close: flushing releases and cancels
	pingInterval   = time.Second     // while requests are outstanding
	resendAfter    = time.Second     // an unanswered background release or cancel
	deadlineMargin = 100 * time.Millisecond
)

// Class says whether a UVM's lease is exclusive.
type Class int

const (
	// Standard: granted at once and shared, but recorded.
	Standard Class = iota
	// Confidential: one holder at a time, waiters served first come, first served.
	Confidential
)

// Version of this package, sent in hello.
const Version = "0.1.0"

// ------------------------------------------------------------------ rids

// Request ids are unique within the process for its lifetime
// (PROTOCOL.md section 4): the broker keys re-sent acquires by (pid,
// process start time, rid), so every Client of a process shares this
// counter. A random start keeps processes apart in the broker's logs.
var ridCounter uint64

func init() {
	var b [8]byte
	if _, err := rand.Read(b[:]); err == nil {
		ridCounter = binary.LittleEndian.Uint64(b[:]) >> 2
	}
}

func nextRID() uint64 {
	for {
		if r := atomic.AddUint64(&ridCounter, 1); r != 0 {
			return r
		}
	}
}

// --------------------------------------------------------------- records

type result struct {
	msg *wire.Message
	err error
}

// record is one request until its outcome: created by the caller, then
// owned by the loop goroutine.
type record struct {
	req wire.Request
	msg []byte
	res chan result // cap 1; nil once nobody waits (background work)

	sent      bool // sent on some session
	sentAt    time.Time
	resent    bool
	queued    bool
	abandoned bool
}

type abandonReq struct {
	r     *record
	reply chan abandonReply
}

type abandonReply struct {
	concluded bool // the outcome is in r.res already
	heard     bool // the broker said something since the request was sent
}

type leaseState struct{ revoked bool }

// Client is a connection to the broker.
type Client struct {
	endpoint string
	dealer   *zmtp.Dealer

	calls    chan *record
	abandons chan abandonReq
	bgRel    chan uint64
	closeCh  chan struct{}
	done     chan struct{}
	once     sync.Once

	brokerPID uint32
	server    string
	bi        uint64 // atomic: the broker instance last heard

	hooksMu sync.Mutex
	hooks   testHooks
}

// testHooks let this package's tests observe and steer the loop.
type testHooks struct {
	beforeDispatch func(*wire.Message)
	drop           func(*wire.Message) bool // true: as if never received
	events         chan *wire.Event
}

func (c *Client) getHooks() testHooks {
	c.hooksMu.Lock()
	defer c.hooksMu.Unlock()
	return c.hooks
}

// Dial connects to the broker at endpoint ("ipc://PATH"; "" resolves it as
// ResolveEndpoint does) and introduces this client. It fails fast with
// ErrNoBroker when no socket is there or nobody listens on it, and within
// ConnectTimeout (or ctx's deadline) when a broker does not answer.
// ErrSystem wraps other failures to connect (e.g. permission denied).
func Dial(ctx context.Context, endpoint string) (*Client, error) {
	ep, err := ResolveEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	path := ep[len(ipcPrefix):]
	fail := func(code Code, cause error) (*Client, error) {
		return nil, &Error{Op: "dial", Code: code, Detail: ep, Err: cause}
	}
	if path[0] != '@' {
		st, err := os.Stat(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || noListener(err) {
				return fail(ErrNoBroker, err)
			}
			return fail(ErrSystem, err)
		}
		if notSocket(st.Mode()) {
			return fail(ErrNoBroker, nil)
		}
	}
	dctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "unix", path)
	if err != nil {
		if noListener(err) || dctx.Err() != nil {
			return fail(ErrNoBroker, err)
		}
		return fail(ErrSystem, err)
	}
	opts := zmtp.Options{SocketType: "DEALER", WriteTimeout: 2 * time.Second, MaxMessage: wire.MaxBrokerMsg}
	hs := opts
	hs.HandshakeTimeout = ConnectTimeout
	if dl, ok := dctx.Deadline(); ok {
		hs.HandshakeTimeout = time.Until(dl)
	}
	z, err := zmtp.Handshake(conn, hs)
	if err != nil {
		return fail(ErrNoBroker, err)
	}
	opts.HandshakeTimeout = ConnectTimeout
	redial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	c := newClient(ep, zmtp.NewDealer(z, redial, opts, zmtp.Backoff{Min: 100 * time.Millisecond, Max: time.Second}))
	m, err := c.call(dctx, &wire.Request{Op: "hello", Client: "uvmlease-go/" + Version}, 0)
	if err != nil {
		c.Close()
		var e *Error
		if errors.As(err, &e) {
			e.Op = "dial"
		}
		return nil, err
	}
	c.brokerPID, c.server = m.PID, m.Server
	return c, nil
}

func newClient(ep string, d *zmtp.Dealer) *Client {
	c := &Client{
		endpoint: ep,
		dealer:   d,
		calls:    make(chan *record),
		abandons: make(chan abandonReq),
		bgRel:    make(chan uint64),
		closeCh:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	go c.loop()
	return c
}

// Endpoint is the endpoint the client connected to.
func (c *Client) Endpoint() string { return c.endpoint }

// Close releases the leases still held through c (as closing a file drops
// its locks), cancels acquires in progress (their callers get ErrClosed),
// waits at most CloseTimeout for the broker to confirm, and stops the
// client's goroutines before returning. Leases obtained through c keep
// answering ID and Fence; their Phase and Release return ErrClosed.
// Close may be called more than once.
func (c *Client) Close() error {
	c.once.Do(func() { close(c.closeCh) })
	<-c.done
	return nil
}

func errClosed(op string) error { return &Error{Op: op, Code: ErrClosed} }

// submit hands a new request to the loop.
// The caller keeps the result channel: r itself belongs to the loop.
func (c *Client) submit(ctx context.Context, req *wire.Request) (*record, chan result, error) {
	req.RID = nextRID()
	msg, err := wire.EncodeRequest(req)
	if err != nil {
		return nil, nil, &Error{Op: req.Op, Code: ErrInvalid, Err: err}
	}
	ch := make(chan result, 1)
	r := &record{req: *req, msg: msg, res: ch}
	select {
	case c.calls <- r:
		return r, ch, nil
	case <-c.closeCh:
		return nil, nil, errClosed(req.Op)
	case <-ctx.Done():
		return nil, nil, ctxError(req.Op, ctx.Err(), false)
	}
}

// abandon tells the loop the caller stops waiting for r.
func (c *Client) abandon(r *record) abandonReply {
	a := abandonReq{r: r, reply: make(chan abandonReply, 1)}
	select {
	case c.abandons <- a:
		return <-a.reply
	case <-c.done:
		return abandonReply{concluded: true}
	}
}

// ctxError maps the end of the caller's context: cancellation is
// ErrCancelled; a deadline is ErrTimeout when the broker was heard since
// the request went out, else ErrNoBroker. Both also match ctx.Err().
func ctxError(op string, err error, heard bool) error {
	code := ErrNoBroker
	if errors.Is(err, context.Canceled) {
		code = ErrCancelled
	} else if heard && op == "acquire" {
		code = ErrTimeout
	}
	return &Error{Op: op, Code: code, Err: err}
}

// replyError turns a broker refusal into an error.
func replyError(op string, m *wire.Message) error {
	if m.Err == 0 {
		return nil
	}
	if m.Holder != nil {
		h := m.Holder
		return &HolderError{Op: op, Code: Code(m.Err), Detail: m.Detail, Holder: Holder{
			PID: int(h.PID), UID: h.UID, Comm: h.Comm, Label: h.Label, Phase: h.Phase,
			Held: time.Duration(h.HeldMS) * time.Millisecond, InPhase: time.Duration(h.PhaseMS) * time.Millisecond,
			Overdue: h.Overdue,
		}}
	}
	return &Error{Op: op, Code: Code(m.Err), Detail: m.Detail}
}

// call sends req and waits for its answer until ctx ends or, when bound
// is not 0, for at most bound. A refusal is returned as an error.
func (c *Client) call(ctx context.Context, req *wire.Request, bound time.Duration) (*wire.Message, error) {
	if bound > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, bound)
		defer cancel()
	}
	r, ch, err := c.submit(ctx, req)
	if err != nil {
		return nil, err
	}
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		a := c.abandon(r)
		if !a.concluded {
			return nil, ctxError(req.Op, ctx.Err(), a.heard)
		}
		res = <-ch
	}
	if res.err != nil {
		return nil, res.err
	}
	if err := replyError(req.Op, res.msg); err != nil {
		return res.msg, err
	}
	return res.msg, nil
}

// ----------------------------------------------------------------- leases

// Lease is a granted lease. Its methods are safe for concurrent use.
type Lease struct {
	c        *Client
	id       uint64
	fence    uint64
	uvm      string
	released int32
}

// ID is the lease id as the broker and uvmleasectl show it.
func (l *Lease) ID() uint64 { return l.id }

// Fence is the lease's fence token: it never goes backwards for a UVM,
// across broker restarts too. Pass it to whatever the lease protects.
func (l *Lease) Fence() uint64 { return l.fence }

// UVM is the UVM the lease is for.
func (l *Lease) UVM() string { return l.uvm }

func validate(op, uvm, label string) error {
	if wire.ValidUVM(uvm) != wire.OK {
		return &Error{Op: op, Code: ErrBadUVM}
	}
	if !wire.ValidText(label, wire.MaxLabel) {
		return &Error{Op: op, Code: ErrBadText}
	}
	return nil
}

// Acquire waits for the bring-up lease of uvmID. The context's deadline is
// how long to wait (the broker enforces it, and names the holder when it
// passes: a *HolderError with ErrTimeout); no deadline waits forever,
// also across broker restarts (the request is sent again to the new
// broker). Cancelling the context cancels the wait (ErrCancelled, also
// matching context.Canceled) and the broker is told. A grant that arrives
// after the context ended is released at once; the caller only sees the
// error. label says who is asking, e.g. the container ID.
// Other errors: ErrDraining, ErrClassConflict, ErrBadUVM, ErrBadText,
// ErrResource, ErrNoBroker (nothing heard from the broker before the
// deadline), ErrClosed.
func (c *Client) Acquire(ctx context.Context, uvmID string, class Class, label string) (*Lease, error) {
	timeout := int64(-1)
	if dl, ok := ctx.Deadline(); ok {
		rem := time.Until(dl)
		if rem <= 0 {
			return nil, ctxError("acquire", context.DeadlineExceeded, false)
		}
		// The broker's deadline comes first, so that its answer (and the
		// holder it names) arrives before ours.
		margin := rem / 4
		if margin > deadlineMargin {
			margin = deadlineMargin
		}
		if timeout = (rem - margin).Milliseconds(); timeout < 1 {
			timeout = 1
		}
	}
	return c.acquire(ctx, uvmID, class, label, timeout)
}

// TryAcquire takes the lease only if it is free now: ErrBusy (a
// *HolderError naming the holder) otherwise. ctx bounds the round trip,
// at most TryGrace when it has no earlier deadline.
func (c *Client) TryAcquire(ctx context.Context, uvmID string, class Class, label string) (*Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, TryGrace)
	defer cancel()
	return c.acquire(ctx, uvmID, class, label, 0)
}

func (c *Client) acquire(ctx context.Context, uvm string, class Class, label string, timeout int64) (*Lease, error) {
	if err := validate("acquire", uvm, label); err != nil {
		return nil, err
	}
	if class != Standard && class != Confidential {
		return nil, &Error{Op: "acquire", Code: ErrInvalid}
	}
	req := &wire.Request{Op: "acquire", UVM: uvm, Conf: class == Confidential, TimeoutMS: timeout, Label: label}
	r, ch, err := c.submit(ctx, req)
	if err != nil {
		return nil, err
	}
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		a := c.abandon(r)
		if !a.concluded {
			return nil, ctxError("acquire", ctx.Err(), a.heard)
		}
		res = <-ch
	}
	if res.err != nil {
		return nil, res.err
	}
	if err := replyError("acquire", res.msg); err != nil {
		return nil, err
	}
	m := res.msg
	if ctx.Err() != nil {
		// Granted, but the caller has given up: nobody will use it.
		c.releaseInBackground(m.Lease)
		return nil, ctxError("acquire", ctx.Err(), true)
	}
	return &Lease{c: c, id: m.Lease, fence: m.Fence, uvm: m.UVM}, nil
}

func (c *Client) releaseInBackground(id uint64) {
	select {
	case c.bgRel <- id:
	case <-c.done: // Close released every lease it knew
	}
}

// Phase reports the step the holder is in ("cim-mount", "scratch-attach",
// "combine-layers", "guest-create", ...; "" clears it); the broker
// timestamps it for administrators. Errors: ErrRevoked (an administrator
// took the lease away), ErrNoLease (released), ErrBadText, ErrNoBroker (no
// answer before ctx's deadline or within CallTimeout), ErrClosed.
func (l *Lease) Phase(ctx context.Context, name string) error {
	if !wire.ValidText(name, wire.MaxPhase) {
		return &Error{Op: "phase", Code: ErrBadText}
	}
	if atomic.LoadInt32(&l.released) != 0 {
		return &Error{Op: "phase", Code: ErrNoLease}
	}
	_, err := l.c.call(ctx, &wire.Request{Op: "phase", Lease: l.id, Phase: name}, CallTimeout)
	return err
}

// Release gives the lease back. It returns nil, ErrRevoked (an
// administrator had taken it away already), ErrClosed (the client was
// closed, which released it), ErrNoLease (released before), or
// ErrNoBroker / the context's error when no answer came in time: the
// release is then kept and sent again, also to a restarted broker, until
// the client is closed (the broker releases it anyway when this process
// exits).
func (l *Lease) Release(ctx context.Context) error {
	if !atomic.CompareAndSwapInt32(&l.released, 0, 1) {
		return &Error{Op: "release", Code: ErrNoLease}
	}
	_, err := l.c.call(ctx, &wire.Request{Op: "release", Lease: l.id}, CallTimeout)
	return err
}

// PingInfo is what Ping learns about the broker.
type PingInfo struct {
	PID      int
	Instance uint64 // changes when the broker restarts
	Server   string
	RTT      time.Duration
	Journal  string // "ok", "failing", or "" when the broker does not say
}

// Ping asks the broker who it is and times the round trip.
func (c *Client) Ping(ctx context.Context) (PingInfo, error) {
	t0 := time.Now()
	m, err := c.call(ctx, &wire.Request{Op: "ping"}, CallTimeout)
	if err != nil {
		return PingInfo{}, err
	}
	return PingInfo{PID: int(m.PID), Instance: m.BI, Server: m.Server, RTT: time.Since(t0), Journal: m.Journal}, nil
}

// ------------------------------------------------------------------ loop

// state is owned by the loop goroutine.
type state struct {
	c      *Client
	recs   map[uint64]*record
	order  []*record
	leases map[uint64]*leaseState
	up     bool
	lastRx time.Time
}

func (s *state) add(r *record) {
	s.recs[r.req.RID] = r
	s.order = append(s.order, r)
}

func (s *state) remove(r *record) {
	if s.recs[r.req.RID] == r {
		delete(s.recs, r.req.RID)
	}
	for i, x := range s.order {
		if x == r {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
}

func (s *state) send(r *record) {
	if !s.up {
		return
	}
	if err := s.c.dealer.Send(r.msg); err != nil {
		return // the session is going down; the next Up sends it again
	}
	if r.sent {
		r.resent = true
	}
	r.sent = true
	r.sentAt = time.Now()
}

// resendStale sends again the releases and cancels nobody waits for that
// had no answer within resendAfter: an answer the broker could not
// deliver is not lost for good. Both are idempotent at the broker.
func (s *state) resendStale() {
	for _, r := range s.order {
		if r.abandoned && r.req.Op != "acquire" && r.sent && time.Since(r.sentAt) >= resendAfter {
			s.send(r)
		}
	}
}

// background queues a request nobody waits for.
func (s *state) background(req wire.Request) {
	req.RID = nextRID()
	msg, err := wire.EncodeRequest(&req)
	if err != nil {
		return
	}
	r := &record{req: req, msg: msg, abandoned: true}
	s.add(r)
	s.send(r)
}

func (s *state) finish(r *record, res result) {
	s.remove(r)
	if r.res != nil {
		r.res <- res
	}
}

// giveUp: nobody waits for r any more. Keep it as background work when its
// outcome still matters to the broker's state.
func (s *state) giveUp(r *record) {
	r.res, r.abandoned = nil, true
	switch r.req.Op {
	case "acquire":
		s.remove(r)
		if r.sent {
			// The broker may have queued or even granted it: the cancel
			// removes the waiter or releases the grant, also one that
			// never reaches us. Until its answer the acquire stays known,
			// so that a grant arriving meanwhile is released.
			s.add(r)
			s.background(wire.Request{Op: "cancel", Target: r.req.RID})
		}
	case "release", "cancel":
	default:
		s.remove(r)
	}
}

func (s *state) onCall(r *record) {
	switch r.req.Op {
	case "phase", "release":
		l := s.leases[r.req.Lease]
		if l == nil {
			r.res <- result{err: &Error{Op: r.req.Op, Code: ErrNoLease}}
			return
		}
		if l.revoked {
			if r.req.Op == "release" {
				delete(s.leases, r.req.Lease)
			}
			r.res <- result{err: &Error{Op: r.req.Op, Code: ErrRevoked}}
			return
		}
		if r.req.Op == "release" {
			delete(s.leases, r.req.Lease)
		}
	}
	s.add(r)
	s.send(r)
}

// onOutcome: the final word on an acquire (refusal, grant, failure).
func (s *state) onOutcome(r *record, m *wire.Message) {
	granted := m.Kind == "grant" || (m.Kind == "reply" && m.Err == 0)
	if !r.abandoned {
		if granted {
			s.leases[m.Lease] = &leaseState{}
		}
		s.finish(r, result{msg: m})
		return
	}
	if granted {
		s.background(wire.Request{Op: "release", Lease: m.Lease})
	}
	s.remove(r)
}

func (s *state) onReply(r *record, m *wire.Message) {
	switch r.req.Op {
	case "acquire":
		if m.Err == 0 && m.Queued {
			r.queued = true
			return
		}
		s.onOutcome(r, m)
		return
	case "cancel":
		// Whatever the answer, the abandoned acquire is settled: the
		// waiter removed, or its grant released (named in the reply) even
		// if that grant never reached us; not-waiting after its failure.
		if a := s.recs[r.req.Target]; a != nil && a.req.Op == "acquire" && a.abandoned {
			s.remove(a)
		}
	case "release":
		// A release sent again after a reconnect may have been done before.
		if r.resent && Code(m.Err) == ErrNoLease {
			m.Err = 0
		}
	}
	s.finish(r, result{msg: m})
}

func (s *state) dispatch(m *wire.Message) {
	s.lastRx = time.Now()
	atomic.StoreUint64(&s.c.bi, m.BI)
	hooks := s.c.getHooks()
	if h := hooks.beforeDispatch; h != nil {
		h(m)
	}
	if h := hooks.drop; h != nil && h(m) {
		return
	}
	switch m.Kind {
	case "reply":
		r := s.recs[m.RID]
		if r != nil && (m.Op == "" || m.Op == r.req.Op) {
			s.onReply(r, m)
		}
	case "grant", "acquire-failed":
		if r := s.recs[m.RID]; r != nil && r.req.Op == "acquire" {
			s.onOutcome(r, m)
		}
	case "revoked":
		if l := s.leases[m.Lease]; l != nil {
			l.revoked = true
		}
	case "event":
		if hooks.events != nil {
			select {
			case hooks.events <- m.Event:
			default:
			}
		}
	}
}

// onUp: a new session, maybe with a new broker. Send it everything still
// outstanding: waiting acquires keep their rid, so a broker that knows
// them answers idempotently and later messages follow this connection
// (PROTOCOL.md 7.2, section 8); abandoned acquires are not re-sent, their
// cancels are.
func (s *state) onUp() {
	s.up = true
	for _, r := range append([]*record(nil), s.order...) {
		if r.req.Op == "acquire" && r.abandoned {
			continue
		}
		r.queued = false
		s.send(r)
	}
}

func (c *Client) loop() {
	defer close(c.done)
	s := &state{c: c, recs: map[uint64]*record{}, leases: map[uint64]*leaseState{}}
	ping := time.NewTicker(pingInterval)
	defer ping.Stop()
	closeCh := c.closeCh
	var closeDeadline <-chan time.Time
	closing := false
	events := c.dealer.Events()
	for {
		if closing && len(s.order) == 0 {
			break
		}
		select {
		case r := <-c.calls:
			if closing {
				r.res <- result{err: errClosed(r.req.Op)}
				continue
			}
			s.onCall(r)
		case a := <-c.abandons:
			r := a.r
			if r.abandoned || s.recs[r.req.RID] != r {
				a.reply <- abandonReply{concluded: true}
				continue
			}
			heard := r.sent && !s.lastRx.Before(r.sentAt)
			s.giveUp(r)
			a.reply <- abandonReply{heard: heard}
		case id := <-c.bgRel:
			delete(s.leases, id)
			s.background(wire.Request{Op: "release", Lease: id})
		case ev := <-events:
			switch ev.Kind {
			case zmtp.Up:
				s.onUp()
			case zmtp.Down:
				s.up = false
			case zmtp.Message:
				// One frame per message; a multi-frame one is dropped whole,
				// and one that does not decode carries nothing to trust.
				if len(ev.Frames) != 1 {
					continue
				}
				if m, err := wire.DecodeMessage(ev.Frames[0]); err == nil {
					s.dispatch(m)
				}
			}
		case <-ping.C:
			if s.up && len(s.order) > 0 {
				if msg, err := wire.EncodeRequest(&wire.Request{Op: "ping", RID: nextRID()}); err == nil {
					_ = c.dealer.Send(msg)
				}
				s.resendStale()
			}
		case <-closeCh:
			closeCh, closing = nil, true
			closeDeadline = time.After(CloseTimeout)
			for _, r := range append([]*record(nil), s.order...) {
				if r.res != nil {
					r.res <- result{err: errClosed(r.req.Op)}
					s.giveUp(r)
				}
			}
			for id, l := range s.leases {
				if !l.revoked {
					s.background(wire.Request{Op: "release", Lease: id})
				}
				delete(s.leases, id)
			}
		case <-closeDeadline:
			s.order = nil
		}
	}
	c.dealer.Close()
}
