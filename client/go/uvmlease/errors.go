package uvmlease

import (
	"errors"
	"fmt"
	"time"
)

// Error is a failure of one call: its Code, the broker's detail when it
// gave one, and the cause when the failure did not come from the broker
// (the context's error, a system call's). errors.Is matches the Code and
// the cause: an acquire whose context was cancelled is both ErrCancelled
// and context.Canceled.
type Error struct {
	Op     string // "dial", "acquire", "phase", "release", "ping"
	Code   Code
	Detail string
	Err    error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("uvmlease: %s: %s", e.Op, e.Code.Error()[len("uvmlease: "):])
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the Code.
func (e *Error) Unwrap() error { return e.Code }

// Is matches the cause as well as the Code.
func (e *Error) Is(target error) bool { return e.Err != nil && errors.Is(e.Err, target) }

// Holder is who holds a lease that could not be obtained.
type Holder struct {
	PID     int           // the holding process
	UID     uint32        // its user
	Comm    string        // its command name
	Label   string        // its label, e.g. a container ID
	Phase   string        // its last reported phase, or ""
	Held    time.Duration // how long it has held the lease
	InPhase time.Duration // how long it has been in that phase
	Overdue bool          // held longer than the broker's hold-warn time
}

// HolderError is a refusal that names the holder in the way: ErrBusy
// (TryAcquire) or ErrTimeout (Acquire), as libuvmlease fills its
// uvmlease_holder.
type HolderError struct {
	Op     string
	Code   Code
	Detail string
	Holder Holder
}

func (e *HolderError) Error() string {
	h := e.Holder
	s := fmt.Sprintf("uvmlease: %s: %s: held by pid %d (%s)", e.Op, e.Code.Error()[len("uvmlease: "):], h.PID, h.Comm)
	if h.Label != "" {
		s += fmt.Sprintf(" label %q", h.Label)
	}
	if h.Phase != "" {
		s += fmt.Sprintf(" in phase %q for %v", h.Phase, h.InPhase.Round(time.Millisecond))
	}
	return s + fmt.Sprintf(", held %v", h.Held.Round(time.Millisecond))
}

// Unwrap returns the Code.
func (e *HolderError) Unwrap() error { return e.Code }
