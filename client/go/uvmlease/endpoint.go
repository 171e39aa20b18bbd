package uvmlease

import (
	"os"
	"strings"
)

// SystemEndpoint is where Dial looks after $UVMLEASE_ENDPOINT, as
// libuvmlease's UVMLEASE_SYSTEM_ENDPOINT.
const SystemEndpoint = "ipc:///run/uvmlease/broker.sock"

const ipcPrefix = "ipc://"

// maxSocketPath is sizeof(sockaddr_un.sun_path) - 1, on Linux and Windows.
const maxSocketPath = 107

// ResolveEndpoint returns the endpoint Dial connects to, exactly as
// libuvmlease resolves it: endpoint when not empty, else
// $UVMLEASE_ENDPOINT when set and not empty, else SystemEndpoint when its
// socket exists or $XDG_RUNTIME_DIR is unset or empty, else
// ipc://$XDG_RUNTIME_DIR/uvmlease/broker.sock. Only ipc://PATH endpoints
// are valid (ErrBadEndpoint).
func ResolveEndpoint(endpoint string) (string, error) {
	ep := endpoint
	if ep == "" {
		ep = os.Getenv("UVMLEASE_ENDPOINT")
	}
	if ep == "" {
		xdg := os.Getenv("XDG_RUNTIME_DIR")
		if _, err := os.Stat(SystemEndpoint[len(ipcPrefix):]); err == nil || xdg == "" {
			ep = SystemEndpoint
		} else {
			ep = ipcPrefix + xdg + "/uvmlease/broker.sock"
		}
	}
	if !strings.HasPrefix(ep, ipcPrefix) || len(ep) == len(ipcPrefix) || len(ep)-len(ipcPrefix) > maxSocketPath {
		return "", &Error{Op: "dial", Code: ErrBadEndpoint, Detail: ep}
	}
	return ep, nil
}
