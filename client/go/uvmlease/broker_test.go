//go:build linux

package uvmlease

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uvmlease/uvmlease/client/go/internal/wire"
)

func bg(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestDialNoBroker(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	_, err := Dial(context.Background(), "ipc://"+filepath.Join(dir, "nothing.sock"))
	if !errors.Is(err, ErrNoBroker) {
		t.Fatalf("no socket: %v", err)
	}
	// A socket file nobody listens on any more.
	path := filepath.Join(dir, "dead.sock")
	l, err := netListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err = Dial(context.Background(), "ipc://"+path); !errors.Is(err, ErrNoBroker) {
		t.Fatalf("dead socket: %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("failing took %v", time.Since(start))
	}
	if _, err = Dial(context.Background(), "tcp://127.0.0.1:1"); !errors.Is(err, ErrBadEndpoint) {
		t.Fatalf("tcp endpoint: %v", err)
	}
}

func TestEndpointResolution(t *testing.T) {
	t.Setenv("UVMLEASE_ENDPOINT", "ipc:///x/env.sock")
	if ep, _ := ResolveEndpoint(""); ep != "ipc:///x/env.sock" {
		t.Errorf("env: %s", ep)
	}
	if ep, _ := ResolveEndpoint("ipc:///x/arg.sock"); ep != "ipc:///x/arg.sock" {
		t.Errorf("argument: %s", ep)
	}
	t.Setenv("UVMLEASE_ENDPOINT", "")
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/4242")
	want := "ipc:///run/user/4242/uvmlease/broker.sock"
	if _, err := os.Stat("/run/uvmlease/broker.sock"); err == nil {
		want = SystemEndpoint
	}
	if ep, _ := ResolveEndpoint(""); ep != want {
		t.Errorf("xdg: %s, want %s", ep, want)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if ep, _ := ResolveEndpoint(""); ep != SystemEndpoint {
		t.Errorf("fallback: %s", ep)
	}
	if _, err := ResolveEndpoint("ipc://" + strings.Repeat("x", 108)); !errors.Is(err, ErrBadEndpoint) {
		t.Errorf("long path: %v", err)
	}
}

func TestGrantPhaseVisibleRelease(t *testing.T) {
	b := startBroker(t)
	c := b.dial(t)
	uvm := "grant-1@vm"
	l, err := c.Acquire(bg(t, 5*time.Second), uvm, Confidential, "ctr-go")
	if err != nil {
		t.Fatal(err)
	}
	if l.ID() == 0 || l.Fence() == 0 || l.UVM() != uvm {
		t.Fatalf("lease %d fence %d uvm %s", l.ID(), l.Fence(), l.UVM())
	}
	if err := l.Phase(bg(t, 5*time.Second), "cim-mount"); err != nil {
		t.Fatal(err)
	}
	info := b.show(t, uvm)
	holders, _ := info["holders"].([]interface{})
	if len(holders) != 1 {
		t.Fatalf("show: %v", info)
	}
	h := holders[0].(map[string]interface{})
	if h["phase"] != "cim-mount" || int(num(h["pid"])) != os.Getpid() || h["label"] != "ctr-go" ||
		uint64(num(h["fence"])) != l.Fence() {
		t.Fatalf("holder as uvmleasectl shows it: %v", h)
	}
	if err := l.Release(bg(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(bg(t, 5*time.Second)); !errors.Is(err, ErrNoLease) {
		t.Fatalf("second release: %v", err)
	}
	if err := l.Phase(bg(t, 5*time.Second), "late"); !errors.Is(err, ErrNoLease) {
		t.Fatalf("phase after release: %v", err)
	}
	if info := b.show(t, uvm); info != nil {
		if hs, _ := info["holders"].([]interface{}); len(hs) != 0 {
			t.Fatalf("still held: %v", info)
		}
	}
	p, err := c.Ping(bg(t, 5*time.Second))
	if err != nil || p.PID != b.cmd.Process.Pid || p.Instance == 0 {
		t.Fatalf("ping %+v %v", p, err)
	}
}

func TestFIFOOfGoroutines(t *testing.T) {
	b := startBroker(t)
	w := b.watch(t)
	c := b.dial(t)
	uvm := "fifo@vm"
	holder, err := c.Acquire(bg(t, 5*time.Second), uvm, Confidential, "first")
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	var mu sync.Mutex
	var order []int
	var inside int
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		i := i
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := c.Acquire(bg(t, 20*time.Second), uvm, Confidential, fmt.Sprintf("w%d", i))
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			inside++
			if inside != 1 {
				errs <- fmt.Errorf("%d holders at once", inside)
			}
			order = append(order, i)
			inside--
			mu.Unlock()
			if err := l.Release(bg(t, 5*time.Second)); err != nil {
				errs <- err
			}
		}()
		// Queue them in a known order: each joins before the next starts.
		w.await(t, "queued", uvm, func(e *wire.Event) bool { return e.Label == fmt.Sprintf("w%d", i) })
	}
	if err := holder.Release(bg(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i, v := range order {
		if v != i {
			t.Fatalf("grant order %v", order)
		}
	}
}

func TestBusyAndTimeoutNameTheHolder(t *testing.T) {
	b := startBroker(t)
	c1, c2 := b.dial(t), b.dial(t)
	uvm := "busy@vm"
	l, err := c1.Acquire(bg(t, 5*time.Second), uvm, Confidential, "ctr-holder")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Phase(bg(t, 5*time.Second), "scratch-attach"); err != nil {
		t.Fatal(err)
	}
	check := func(err error, code Code) {
		t.Helper()
		var he *HolderError
		if !errors.As(err, &he) || !errors.Is(err, code) {
			t.Fatalf("got %v, want a HolderError with %s", err, code.Name())
		}
		if he.Holder.PID != os.Getpid() || he.Holder.Label != "ctr-holder" || he.Holder.Phase != "scratch-attach" ||
			he.Holder.Comm == "" {
			t.Fatalf("holder %+v", he.Holder)
		}
		if !strings.Contains(err.Error(), "ctr-holder") || !strings.Contains(err.Error(), "scratch-attach") {
			t.Fatalf("message: %s", err)
		}
	}
	_, err = c2.TryAcquire(bg(t, 5*time.Second), uvm, Confidential, "")
	check(err, ErrBusy)
	start := time.Now()
	_, err = c2.Acquire(bg(t, 400*time.Millisecond), uvm, Confidential, "")
	check(err, ErrTimeout)
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Fatalf("timed out after %v", d)
	}
	_, err = c2.Acquire(bg(t, time.Second), uvm, Standard, "")
	if !errors.Is(err, ErrClassConflict) {
		t.Fatalf("other class: %v", err)
	}
	if _, err := c2.Acquire(bg(t, time.Second), "bad id", Confidential, ""); !errors.Is(err, ErrBadUVM) {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := c2.Acquire(bg(t, time.Second), uvm, Confidential, "a\nb"); !errors.Is(err, ErrBadText) {
		t.Fatalf("bad label: %v", err)
	}
}

func TestCancelLeavesNoWaiter(t *testing.T) {
	b := startBroker(t)
	w := b.watch(t)
	c1, c2 := b.dial(t), b.dial(t)
	uvm := "cancel@vm"
	if _, err := c1.Acquire(bg(t, 5*time.Second), uvm, Confidential, "holder"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c2.Acquire(ctx, uvm, Confidential, "waiter")
		done <- err
	}()
	w.await(t, "queued", uvm, nil)
	cancel()
	err := <-done
	if !errors.Is(err, ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled acquire: %v", err)
	}
	w.await(t, "cancel", uvm, nil)
	info := b.show(t, uvm)
	if num(info["waiter_count"]) != 0 {
		t.Fatalf("orphaned waiter: %v", info)
	}
}

// A grant that reaches the client once the caller's context has ended is
// released at once: the hook cancels the context just before the grant is
// handled.
func TestLateGrantReleased(t *testing.T) {
	b := startBroker(t)
	w := b.watch(t)
	c1, c2 := b.dial(t), b.dial(t)
	uvm := "late@vm"
	l1, err := c1.Acquire(bg(t, 5*time.Second), uvm, Confidential, "holder")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	granted := make(chan uint64, 1)
	c2.hooksMu.Lock()
	c2.hooks.beforeDispatch = func(m *wire.Message) {
		if m.Kind == "grant" {
			cancel()
			granted <- m.Lease
		}
	}
	c2.hooksMu.Unlock()
	done := make(chan error, 1)
	go func() {
		_, err := c2.Acquire(ctx, uvm, Confidential, "late")
		done <- err
	}()
	w.await(t, "queued", uvm, nil)
	if err := l1.Release(bg(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrCancelled) {
		t.Fatalf("late acquire: %v", err)
	}
	lease := <-granted
	e := w.await(t, "release", uvm, func(e *wire.Event) bool { return e.Lease == lease })
	if e.Reason != "released" {
		t.Fatalf("late grant ended with %q", e.Reason)
	}
	if _, err := c1.TryAcquire(bg(t, 5*time.Second), uvm, Confidential, ""); err != nil {
		t.Fatalf("after the late grant: %v", err)
	}
}

// uvmleased killed with SIGKILL and started again: the waiting acquire is
// re-sent with the same request id to the new instance and granted there
// once the holder (a helper process, whose lease the new broker restored)
// releases.
func TestBrokerRestartResendsWaitingAcquire(t *testing.T) {
	b := startBroker(t)
	uvm := "restart@vm"
	h := b.startHolder(t, uvm, "helper", "")
	c := b.dial(t)
	p0, err := c.Ping(bg(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var queuedRIDs []uint64
	var queuedBIs []uint64
	firstQueued := make(chan struct{}, 1)
	c.hooksMu.Lock()
	c.hooks.beforeDispatch = func(m *wire.Message) {
		if m.Kind == "reply" && m.Op == "acquire" && m.Queued {
			mu.Lock()
			queuedRIDs = append(queuedRIDs, m.RID)
			queuedBIs = append(queuedBIs, m.BI)
			mu.Unlock()
			select {
			case firstQueued <- struct{}{}:
			default:
			}
		}
	}
	c.hooksMu.Unlock()
	type res struct {
		l   *Lease
		err error
	}
	done := make(chan res, 1)
	go func() {
		l, err := c.Acquire(context.Background(), uvm, Confidential, "waiter")
		done <- res{l, err}
	}()
	// The client has heard "queued" from this broker instance.
	<-firstQueued
	b.kill9()
	b.start()
	// Subscribe to the new broker, then look: the re-sent acquire is
	// queued already or its event is still to come.
	w2 := b.watch(t)
	if info := b.show(t, uvm); info == nil || num(info["waiter_count"]) != 1 {
		w2.await(t, "queued", uvm, func(e *wire.Event) bool { return e.Label == "waiter" })
	}
	h.release(t)
	r := <-done
	if r.err != nil {
		t.Fatalf("acquire across the restart: %v", r.err)
	}
	if r.l.Fence() <= h.fence {
		t.Fatalf("fence went from %d to %d", h.fence, r.l.Fence())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(queuedRIDs) < 2 || queuedRIDs[0] != queuedRIDs[len(queuedRIDs)-1] || queuedBIs[0] == queuedBIs[len(queuedBIs)-1] {
		t.Fatalf("queued replies: rids %v, instances %v", queuedRIDs, queuedBIs)
	}
	p1, err := c.Ping(bg(t, 5*time.Second))
	if err != nil || p1.Instance == p0.Instance {
		t.Fatalf("ping after restart: %+v %v", p1, err)
	}
}

// An acquire given up on while no broker runs: its cancel goes to the
// restarted broker, the acquire itself is not re-sent.
func TestCancelResentToRestartedBroker(t *testing.T) {
	b := startBroker(t)
	uvm := "cancel-restart@vm"
	b.startHolder(t, uvm, "helper", "")
	w := b.watch(t)
	c := b.dial(t)
	cancelled := make(chan *wire.Message, 4)
	c.hooksMu.Lock()
	c.hooks.beforeDispatch = func(m *wire.Message) {
		if m.Kind == "reply" && m.Op == "cancel" {
			cancelled <- m
		}
	}
	c.hooksMu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Acquire(ctx, uvm, Confidential, "waiter")
		done <- err
	}()
	w.await(t, "queued", uvm, func(e *wire.Event) bool { return e.Label == "waiter" })
	w.c.Close()
	b.kill9()
	cancel()
	if err := <-done; !errors.Is(err, ErrCancelled) {
		t.Fatalf("acquire: %v", err)
	}
	b.start()
	select {
	case m := <-cancelled:
		if m.Err != 0 && Code(m.Err) != ErrNotWaiting {
			t.Fatalf("cancel answered %d", m.Err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the cancel never reached the new broker")
	}
	info := b.show(t, uvm)
	if info == nil || num(info["waiter_count"]) != 0 {
		t.Fatalf("the new broker has a waiter: %v", info)
	}
}

func TestHolderKilledNextGranted(t *testing.T) {
	b := startBroker(t)
	uvm := "killed@vm"
	h := b.startHolder(t, uvm, "doomed", "")
	w := b.watch(t)
	c := b.dial(t)
	done := make(chan error, 1)
	go func() {
		l, err := c.Acquire(bg(t, 15*time.Second), uvm, Confidential, "next")
		if err == nil && l.Fence() <= h.fence {
			err = fmt.Errorf("fence %d after %d", l.Fence(), h.fence)
		}
		done <- err
	}()
	w.await(t, "queued", uvm, func(e *wire.Event) bool { return e.Label == "next" })
	h.kill9()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Close: the waiting acquire ends with ErrClosed, the held lease is
// released at the broker, and no goroutine of the client is left.
func TestCloseReleasesAndLeavesNoGoroutine(t *testing.T) {
	b := startBroker(t)
	uvm := "close@vm"
	w := b.watch(t)
	other := b.dial(t)
	ctx := bg(t, 5*time.Second)
	c, err := Dial(ctx, b.ep)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, uvm, Confidential, "held"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Acquire(ctx, "close-2@vm", Confidential, ""); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.Acquire(context.Background(), "close-2@vm", Confidential, "waiting")
		done <- err
	}()
	w.await(t, "queued", "close-2@vm", nil)
	c.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting acquire at Close: %v", err)
	}
	if _, err := other.TryAcquire(ctx, uvm, Confidential, ""); err != nil {
		t.Fatalf("lease not released by Close: %v", err)
	}
	if info := b.show(t, "close-2@vm"); num(info["waiter_count"]) != 0 {
		t.Fatalf("waiter left by Close: %v", info)
	}
	if _, err := c.Acquire(ctx, uvm, Confidential, ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after Close: %v", err)
	}
	other.Close()
	w.c.Close()
	noClientGoroutines(t)
}

// ---------------------------------------------------------- across languages

func ctlRun(b *broker, uvm, name, log string) *exec.Cmd {
	script := fmt.Sprintf(`echo "start %[1]s" >> %[2]s; sleep 0.05; echo "end %[1]s" >> %[2]s`, name, log)
	cmd := exec.Command(b.ctl, "--endpoint", b.ep, "run", "--uvm", uvm, "--confidential", "--label", name,
		"--timeout", "20000", "--", "sh", "-c", script)
	cmd.Stderr = os.Stderr
	return cmd
}

// A Go holder and C waiters (uvmleasectl run) on one confidential UVM:
// their critical sections never overlap and the waiters are served in
// the order they queued.
func TestGoAndCNeverOverlapFIFO(t *testing.T) {
	b := startBroker(t)
	w := b.watch(t)
	c := b.dial(t)
	uvm := "mixed@vm"
	log := filepath.Join(t.TempDir(), "log")
	l, err := c.Acquire(bg(t, 5*time.Second), uvm, Confidential, "go")
	if err != nil {
		t.Fatal(err)
	}
	appendLine(log, "start go")
	var cmds []*exec.Cmd
	for i := 0; i < 3; i++ {
		cmd := ctlRun(b, uvm, fmt.Sprintf("c%d", i), log)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
		w.await(t, "queued", uvm, byPID(cmd.Process.Pid))
	}
	// A second Go waiter after the C ones.
	goDone := make(chan error, 1)
	go func() {
		l2, err := c.Acquire(bg(t, 20*time.Second), uvm, Confidential, "go2")
		if err == nil {
			appendLine(log, "start go2")
			appendLine(log, "end go2")
			err = l2.Release(bg(t, 5*time.Second))
		}
		goDone <- err
	}()
	w.await(t, "queued", uvm, func(e *wire.Event) bool { return e.Label == "go2" })
	appendLine(log, "end go")
	if err := l.Release(bg(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("uvmleasectl run: %v", err)
		}
	}
	if err := <-goDone; err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(log)
	want := "start go\nend go\nstart c0\nend c0\nstart c1\nend c1\nstart c2\nend c2\nstart go2\nend go2\n"
	if string(data) != want {
		t.Fatalf("critical sections:\n%s\nwant:\n%s", data, want)
	}
}

// A Go holder process killed: the C waiter gets the lease.
func TestGoHolderKilledCWaiterGranted(t *testing.T) {
	b := startBroker(t)
	w := b.watch(t)
	uvm := "mixed-kill@vm"
	log := filepath.Join(t.TempDir(), "log")
	h := b.startHolder(t, uvm, "go-helper", log)
	cmd := ctlRun(b, uvm, "c0", log)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.await(t, "queued", uvm, byPID(cmd.Process.Pid))
	h.kill9()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("uvmleasectl run: %v", err)
	}
	data, _ := os.ReadFile(log)
	if string(data) != "start go-helper\nstart c0\nend c0\n" {
		t.Fatalf("log:\n%s", data)
	}
}

// An answer that never arrives (the broker could not deliver it) is not
// lost for good: the release, given up by its caller, is sent again.
func TestUnansweredReleaseSentAgain(t *testing.T) {
	b := startBroker(t)
	c := b.dial(t)
	uvm := "resend-release@vm"
	l, err := c.Acquire(bg(t, 5*time.Second), uvm, Confidential, "lost-answer")
	if err != nil {
		t.Fatal(err)
	}
	answers := make(chan uint32, 8) // err of each answer let through
	var dropped int32
	c.hooksMu.Lock()
	c.hooks.drop = func(m *wire.Message) bool {
		if m.Kind != "reply" || m.Op != "release" {
			return false
		}
		if atomic.AddInt32(&dropped, 1) == 1 {
			return true // the first answer is lost
		}
		answers <- m.Err
		return false
	}
	c.hooksMu.Unlock()
	if err := l.Release(bg(t, 300*time.Millisecond)); err == nil {
		t.Fatal("the release was answered although its answer was dropped")
	}
	select {
	case e := <-answers:
		if e != 0 && Code(e) != ErrNoLease {
			t.Fatalf("the release sent again was answered %d", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the release was never sent again")
	}
	if info := b.show(t, uvm); info != nil {
		if hs, _ := info["holders"].([]interface{}); len(hs) != 0 {
			t.Fatalf("still held: %v", info)
		}
	}
}
