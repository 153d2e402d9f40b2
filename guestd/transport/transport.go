// Package transport opens the byte stream the host daemon reaches the guest
// daemon through: a virtio-serial port, a vsock listener or a unix socket.
// Each yields connections one at a time; the server holds one session per
// connection and a new connection replaces the old one.
package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
)

// Endpoint kinds.
const (
	KindVirtioSerial = "virtio-serial"
	KindVsock        = "vsock"
	KindUnix         = "unix"
)

// DefaultEndpoint is the --listen default.
const DefaultEndpoint = "virtio-serial:org.vmpersona.agent.0"

// DefaultVsockPort is the contract's vsock port.
const DefaultVsockPort = 7070

// ErrBadEndpoint reports an endpoint string that cannot be parsed.
var ErrBadEndpoint = errors.New("transport: bad endpoint")

// Endpoint is a parsed --listen value.
type Endpoint struct {
	Kind string
	Name string // virtio-serial port name
	Port uint32 // vsock port
	Path string // unix socket path
}

func (e Endpoint) String() string {
	switch e.Kind {
	case KindVirtioSerial:
		return e.Kind + ":" + e.Name
	case KindVsock:
		return e.Kind + ":" + strconv.FormatUint(uint64(e.Port), 10)
	default:
		return e.Kind + ":" + e.Path
	}
}

// ParseEndpoint parses virtio-serial:NAME, vsock:PORT or unix:PATH.
func ParseEndpoint(s string) (Endpoint, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return Endpoint{}, fmt.Errorf("%w: %q: want virtio-serial:NAME, vsock:PORT or unix:PATH", ErrBadEndpoint, s)
	}
	switch kind {
	case KindVirtioSerial:
		if strings.ContainsAny(rest, "/\x00") || rest == "." || rest == ".." {
			return Endpoint{}, fmt.Errorf("%w: %q: a port name has no slash", ErrBadEndpoint, s)
		}
		return Endpoint{Kind: kind, Name: rest}, nil
	case KindVsock:
		port, err := strconv.ParseUint(rest, 10, 32)
		if err != nil {
			return Endpoint{}, fmt.Errorf("%w: %q: port: %v", ErrBadEndpoint, s, err)
		}
		return Endpoint{Kind: kind, Port: uint32(port)}, nil
	case KindUnix:
		return Endpoint{Kind: kind, Path: rest}, nil
	}
	return Endpoint{}, fmt.Errorf("%w: %q: unknown kind %q", ErrBadEndpoint, s, kind)
}

// Listener yields the connections of one endpoint.
type Listener interface {
	// Accept waits for the next connection. For virtio-serial it returns
	// when the previous connection has been closed (the port is one
	// stream). It fails once ctx is done or the listener is closed.
	Accept(ctx context.Context) (io.ReadWriteCloser, error)
	Close() error
	String() string
}

// Listen opens ep. Closing ctx closes the listener.
func Listen(ctx context.Context, ep Endpoint, log *slog.Logger) (Listener, error) {
	if log == nil {
		log = slog.Default()
	}
	switch ep.Kind {
	case KindUnix:
		return listenUnix(ctx, ep.Path)
	case KindVsock:
		l, err := vsock.Listen(ep.Port, nil)
		if err != nil {
			return nil, fmt.Errorf("transport: vsock port %d: %w", ep.Port, err)
		}
		return newNetListener(ctx, l, ep.String()), nil
	case KindVirtioSerial:
		return &SerialListener{Name: ep.Name, DevDir: "/dev", SysDir: "/sys/class/virtio-ports", Log: log}, nil
	}
	return nil, fmt.Errorf("%w: kind %q", ErrBadEndpoint, ep.Kind)
}

func listenUnix(ctx context.Context, path string) (Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path) // a stale socket from a previous run
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("transport: %w", err)
	}
	return newNetListener(ctx, l, KindUnix+":"+path), nil
}

// netListener adapts a net.Listener (unix, vsock).
type netListener struct {
	l    net.Listener
	name string
	stop func() bool
}

func newNetListener(ctx context.Context, l net.Listener, name string) *netListener {
	return &netListener{l: l, name: name, stop: context.AfterFunc(ctx, func() { l.Close() })}
}

func (n *netListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	c, err := n.l.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("transport: accept: %w", err)
	}
	return quiet(c), nil
}

func (n *netListener) Close() error {
	n.stop()
	return n.l.Close()
}

func (n *netListener) String() string { return n.name }

// sleepCtx sleeps d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
