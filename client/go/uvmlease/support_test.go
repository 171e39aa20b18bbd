//go:build linux

package uvmlease

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/uvmlease/uvmlease/client/go/internal/wire"
)

// The daemon and the CLI under test: deploy/test.sh passes the ones of the
// CMake build. Without them the broker tests skip, unless
// UL_GO_REQUIRE_BROKER=1 (the test script sets it) makes that a failure.
func tools(t *testing.T) (daemon, ctl string) {
	t.Helper()
	daemon, ctl = os.Getenv("UVMLEASED"), os.Getenv("UVMLEASECTL")
	if daemon == "" || ctl == "" {
		if os.Getenv("UL_GO_REQUIRE_BROKER") == "1" {
			t.Fatal("UVMLEASED and UVMLEASECTL must name the built uvmleased and uvmleasectl")
		}
		t.Skip("UVMLEASED / UVMLEASECTL not set: no broker to test against")
	}
	return daemon, ctl
}

type broker struct {
	t      *testing.T
	daemon string
	ctl    string
	dir    string
	ep     string
	cmd    *exec.Cmd
}

// startBroker runs uvmleased in a new private runtime directory and
// returns once it has told systemd's notify socket READY=1.
func startBroker(t *testing.T) *broker {
	t.Helper()
	daemon, ctl := tools(t)
	dir, err := os.MkdirTemp("", "ulgo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &broker{t: t, daemon: daemon, ctl: ctl, dir: dir, ep: "ipc://" + filepath.Join(dir, "broker.sock")}
	b.start()
	t.Cleanup(b.stop)
	return b
}

func (b *broker) start() {
	t := b.t
	t.Helper()
	nd, err := os.MkdirTemp("", "ulgon")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(nd)
	npath := filepath.Join(nd, "notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: npath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	cmd := exec.Command(b.daemon, "--runtime-dir", b.dir, "--max-leases", "256", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+npath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.cmd = cmd
	nl.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, err := nl.Read(buf)
		if err != nil {
			t.Fatalf("uvmleased did not become ready: %v", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			return
		}
	}
}

// kill9 kills the broker with SIGKILL and reaps it.
func (b *broker) kill9() {
	if b.cmd != nil {
		b.cmd.Process.Kill()
		b.cmd.Wait()
		b.cmd = nil
	}
}

func (b *broker) stop() {
	if b.cmd != nil {
		b.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { b.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			b.cmd.Process.Kill()
			<-done
		}
		b.cmd = nil
	}
}

func (b *broker) dial(t *testing.T) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, b.ep)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// show runs `uvmleasectl --json show UVM`; nil when the broker has nothing
// on the UVM.
func (b *broker) show(t *testing.T, uvm string) map[string]interface{} {
	t.Helper()
	out, err := exec.Command(b.ctl, "--endpoint", b.ep, "--json", "show", uvm).Output()
	if err != nil {
		if strings.Contains(string(out), "unknown-uvm") || len(out) == 0 {
			return nil
		}
		t.Fatalf("uvmleasectl show: %v: %s", err, out)
	}
	var v map[string]interface{}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("show --json: %v: %s", err, out)
	}
	if info, ok := v["info"].(map[string]interface{}); ok {
		return info
	}
	return v
}

func num(v interface{}) int64 {
	f, _ := v.(float64)
	return int64(f)
}

// watcher is a client subscribed to the broker's events: a barrier that
// needs no sleeping (subscribe, then look at the state, then wait for the
// event that changes it).
type watcher struct {
	c  *Client
	ev chan *wire.Event
}

func (b *broker) watch(t *testing.T) *watcher {
	t.Helper()
	c := b.dial(t)
	w := &watcher{c: c, ev: make(chan *wire.Event, 256)}
	c.hooksMu.Lock()
	c.hooks.events = w.ev
	c.hooksMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.call(ctx, &wire.Request{Op: "watch"}, 0); err != nil {
		t.Fatalf("watch: %v", err)
	}
	return w
}

// await returns the first event of type typ on uvm matching ok.
func (w *watcher) await(t *testing.T, typ, uvm string, ok func(*wire.Event) bool) *wire.Event {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case e := <-w.ev:
			if e.Type == typ && e.UVM == uvm && (ok == nil || ok(e)) {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event on %s", typ, uvm)
		}
	}
}

func byPID(pid int) func(*wire.Event) bool {
	return func(e *wire.Event) bool { return int(e.PID) == pid }
}

// ------------------------------------------------------- helper processes

// A helper process is this test binary run again: it holds a lease until
// told "release" on stdin or killed.
func TestMain(m *testing.M) {
	if os.Getenv("UVMLEASE_GO_HELPER") == "hold" {
		os.Exit(helperHold())
	}
	os.Exit(m.Run())
}

func helperHold() int {
	ctx := context.Background()
	c, err := Dial(ctx, os.Getenv("UVMLEASE_ENDPOINT"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	l, err := c.Acquire(ctx, os.Getenv("UVMLEASE_HELPER_UVM"), Confidential, os.Getenv("UVMLEASE_HELPER_LABEL"))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	if log := os.Getenv("UVMLEASE_HELPER_LOG"); log != "" {
		appendLine(log, "start go-helper")
	}
	fmt.Printf("granted %d %d\n", l.ID(), l.Fence())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "release" {
			if log := os.Getenv("UVMLEASE_HELPER_LOG"); log != "" {
				appendLine(log, "end go-helper")
			}
			err := l.Release(ctx)
			fmt.Println("released", err)
		}
	}
	c.Close()
	return 0
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(f, line)
	f.Close()
}

type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	lease uint64
	fence uint64
}

// startHolder starts a helper process that acquires uvm and returns once
// it holds it.
func (b *broker) startHolder(t *testing.T, uvm, label, log string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "UVMLEASE_GO_HELPER=hold", "UVMLEASE_ENDPOINT="+b.ep,
		"UVMLEASE_HELPER_UVM="+uvm, "UVMLEASE_HELPER_LABEL="+label, "UVMLEASE_HELPER_LOG="+log)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() { h.cmd.Process.Kill(); h.cmd.Wait() })
	if !h.out.Scan() {
		t.Fatal("helper said nothing")
	}
	if _, err := fmt.Sscanf(h.out.Text(), "granted %d %d", &h.lease, &h.fence); err != nil {
		t.Fatalf("helper: %q", h.out.Text())
	}
	return h
}

func (h *helper) release(t *testing.T) {
	t.Helper()
	fmt.Fprintln(h.stdin, "release")
	if !h.out.Scan() || h.out.Text() != "released <nil>" {
		t.Fatalf("helper release: %q", h.out.Text())
	}
}

func (h *helper) kill9() {
	h.cmd.Process.Kill()
	h.cmd.Wait()
}

// noClientGoroutines fails when a goroutine of this module still runs.
func noClientGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		s := string(buf[:runtime.Stack(buf, true)])
		leaked := ""
		for _, g := range strings.Split(s, "\n\n") {
			if strings.Contains(g, "uvmlease.(*Client).loop") || strings.Contains(g, "zmtp.(*Dealer)") {
				leaked += g + "\n\n"
			}
		}
		if leaked == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines outlived Close:\n%s", leaked)
		}
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond)
	}
}
