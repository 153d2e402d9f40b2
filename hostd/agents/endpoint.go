package agents

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/mdlayher/vsock"
)

// Endpoint kinds.
const (
	KindUnix  = "unix"
	KindVsock = "vsock"
)

// DefaultVsockPort is the port a guest daemon listens on when an endpoint
// names only a CID ("vsock:CID").
const DefaultVsockPort = 7070

// ErrBadEndpoint is wrapped by every ParseEndpoint and Endpoint.Validate
// error.
var ErrBadEndpoint = errors.New("bad agent endpoint")

// Endpoint is where a guest agent's byte stream is reached: a unix socket (a
// QEMU chardev socket, or a guest daemon listening on a unix socket directly;
// the same bytes either way) or a vsock address.
type Endpoint struct {
	Kind string // KindUnix or KindVsock
	Path string // unix socket path (KindUnix)
	CID  uint32 // guest context id (KindVsock)
	Port uint32 // vsock port (KindVsock)
}

// vsockAny is VMADDR_CID_ANY and VMADDR_PORT_ANY: wildcards, never a peer.
const vsockAny = 1<<32 - 1

// ParseEndpoint parses "unix:PATH", "vsock:CID:PORT" or "vsock:CID" (port
// DefaultVsockPort). Errors wrap ErrBadEndpoint and say what is wrong.
func ParseEndpoint(s string) (Endpoint, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Endpoint{}, fmt.Errorf("%w %q: want unix:PATH or vsock:CID:PORT", ErrBadEndpoint, s)
	}
	var ep Endpoint
	switch kind {
	case KindUnix:
		ep = Endpoint{Kind: KindUnix, Path: rest}
	case KindVsock:
		cidStr, portStr, hasPort := strings.Cut(rest, ":")
		cid, err := strconv.ParseUint(cidStr, 10, 32)
		if err != nil {
			return Endpoint{}, fmt.Errorf("%w %q: vsock CID %q is not a number from 0 to %d", ErrBadEndpoint, s, cidStr, uint32(vsockAny))
		}
		port := uint64(DefaultVsockPort)
		if hasPort {
			port, err = strconv.ParseUint(portStr, 10, 32)
			if err != nil {
				return Endpoint{}, fmt.Errorf("%w %q: vsock port %q is not a number from 0 to %d", ErrBadEndpoint, s, portStr, uint32(vsockAny))
			}
		}
		ep = Endpoint{Kind: KindVsock, CID: uint32(cid), Port: uint32(port)}
	default:
		return Endpoint{}, fmt.Errorf("%w %q: unknown kind %q, want unix or vsock", ErrBadEndpoint, s, kind)
	}
	if err := ep.Validate(); err != nil {
		return Endpoint{}, err
	}
	return ep, nil
}

// Validate reports whether e names a reachable kind of address.
func (e Endpoint) Validate() error {
	switch e.Kind {
	case KindUnix:
		if e.Path == "" {
			return fmt.Errorf("%w: unix endpoint without a socket path", ErrBadEndpoint)
		}
		if strings.ContainsRune(e.Path, 0) {
			return fmt.Errorf("%w: unix socket path contains a NUL byte", ErrBadEndpoint)
		}
	case KindVsock:
		if e.CID == vsockAny {
			return fmt.Errorf("%w: vsock CID %d is the wildcard, not a guest", ErrBadEndpoint, e.CID)
		}
		if e.Port == vsockAny {
			return fmt.Errorf("%w: vsock port %d is the wildcard, not a port", ErrBadEndpoint, e.Port)
		}
	default:
		return fmt.Errorf("%w: unknown kind %q, want unix or vsock", ErrBadEndpoint, e.Kind)
	}
	return nil
}

// String returns the endpoint in the form ParseEndpoint reads.
func (e Endpoint) String() string {
	switch e.Kind {
	case KindUnix:
		return "unix:" + e.Path
	case KindVsock:
		return fmt.Sprintf("vsock:%d:%d", e.CID, e.Port)
	default:
		return e.Kind + ":?"
	}
}

// dial opens the byte stream to the agent. ctx bounds the dial.
func (e Endpoint) dial(ctx context.Context) (net.Conn, error) {
	switch e.Kind {
	case KindUnix:
		var d net.Dialer
		return d.DialContext(ctx, "unix", e.Path)
	case KindVsock:
		return vsock.DialContext(ctx, e.CID, e.Port, nil)
	default:
		return nil, e.Validate()
	}
}
