//go:build !windows

package uvmlease

import (
	"errors"
	"os"
	"syscall"
)

// noListener: nobody is bound at the socket path.
func noListener(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ENOTDIR)
}

func notSocket(m os.FileMode) bool { return m&os.ModeSocket == 0 }
