//go:build windows

package uvmlease

import (
	"errors"
	"io/fs"
	"os"
	"syscall"
)

// WSAECONNREFUSED: Windows' AF_UNIX reports a socket file nobody listens
// on with it.
const wsaeconnrefused = syscall.Errno(10061)

func noListener(err error) bool {
	return errors.Is(err, wsaeconnrefused) || errors.Is(err, fs.ErrNotExist)
}

// Windows may not report an AF_UNIX socket file as one: only a directory
// is certainly not a broker.
func notSocket(m os.FileMode) bool { return m.IsDir() }
