package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Timing of the virtio-serial transport.
const (
	// eofBackoff is the pause after a connection that ended with EOF: with
	// no host on the other end, read() returns 0 again and again, and the
	// daemon must not spin.
	eofBackoff = 150 * time.Millisecond
	// portPoll is how often a missing port is looked for again.
	portPoll = 500 * time.Millisecond
)

// SerialListener serves a virtio-serial port. The port is one stream that
// stays open: each Accept returns a view of it that ends when the host goes
// away (EOF) or the server closes it, after which the next view continues
// on the same port. The reader of the server is reset between views, so
// partial stale bytes are dropped.
type SerialListener struct {
	Name   string // port name, e.g. org.vmpersona.agent.0
	DevDir string // "/dev"; the port is DevDir/virtio-ports/Name or DevDir/vportNpM
	SysDir string // "/sys/class/virtio-ports"
	Log    *slog.Logger

	mu     sync.Mutex
	f      *os.File
	prev   *serialConn
	closed bool
}

// FindPort returns the device path of the named port: the udev symlink
// DevDir/virtio-ports/NAME, or (no udev) DevDir/vportNpM found by scanning
// SysDir/*/name.
func (s *SerialListener) FindPort() (string, error) {
	link := filepath.Join(s.DevDir, "virtio-ports", s.Name)
	if _, err := os.Stat(link); err == nil {
		return link, nil
	}
	ents, err := os.ReadDir(s.SysDir)
	if err != nil {
		return "", fmt.Errorf("transport: virtio-serial port %q: %w", s.Name, os.ErrNotExist)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(s.SysDir, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(data)) == s.Name {
			return filepath.Join(s.DevDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("transport: virtio-serial port %q: %w", s.Name, os.ErrNotExist)
}

func (s *SerialListener) String() string { return KindVirtioSerial + ":" + s.Name }

// Accept waits for the previous view to end and the port to exist, and
// returns a new view of the port.
func (s *SerialListener) Accept(ctx context.Context) (io.ReadWriteCloser, error) {
	s.mu.Lock()
	prev := s.prev
	s.mu.Unlock()
	if prev != nil {
		select {
		case <-prev.closed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// Wait for a read in progress to return before the port is read again.
		prev.readMu.Lock()
		fileClosed := prev.fileClosed
		prev.readMu.Unlock()
		if fileClosed {
			s.mu.Lock()
			s.f = nil
			s.mu.Unlock()
		}
		if prev.eof.Load() {
			if err := sleepCtx(ctx, eofBackoff); err != nil {
				return nil, err
			}
		}
	}
	warned := false
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, os.ErrClosed
		}
		f := s.f
		s.mu.Unlock()
		if f != nil {
			f.SetReadDeadline(time.Time{})
			c := &serialConn{f: f, q: newQuietIO(f, f.SetWriteDeadline), closed: make(chan struct{})}
			s.mu.Lock()
			s.prev = c
			s.mu.Unlock()
			return c, nil
		}
		path, err := s.FindPort()
		if err == nil {
			f, err = os.OpenFile(path, os.O_RDWR, 0)
			if err == nil {
				s.Log.Info("virtio-serial port open", "name", s.Name, "path", path)
				s.mu.Lock()
				s.f = f
				s.mu.Unlock()
				continue
			}
		}
		if !warned {
			s.Log.Warn("waiting for the virtio-serial port", "name", s.Name, "err", err)
			warned = true
		}
		if err := sleepCtx(ctx, portPoll); err != nil {
			return nil, err
		}
	}
}

// Close closes the port.
func (s *SerialListener) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.prev != nil {
		s.prev.Close()
	}
	if s.f != nil {
		err := s.f.Close()
		s.f = nil
		return err
	}
	return nil
}

// serialConn is one view of the port.
type serialConn struct {
	f          *os.File
	q          *quietIO // nil: the port's descriptor blocks
	readMu     sync.Mutex
	dead       atomic.Bool
	eof        atomic.Bool
	once       sync.Once
	closed     chan struct{}
	fileClosed bool // the port could not be interrupted and was closed
}

func (c *serialConn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.dead.Load() {
		return 0, os.ErrClosed
	}
	var n int
	var err error
	if c.q != nil {
		n, err = c.q.read(p)
	} else {
		n, err = c.f.Read(p)
	}
	if n == 0 && errors.Is(err, io.EOF) {
		c.eof.Store(true)
	}
	return n, err
}

func (c *serialConn) Write(p []byte) (int, error) {
	if c.dead.Load() {
		return 0, os.ErrClosed
	}
	if c.q != nil {
		return c.q.write(p)
	}
	return c.f.Write(p)
}

// SetWriteDeadline bounds writes to the port.
func (c *serialConn) SetWriteDeadline(t time.Time) error {
	if c.q != nil {
		return c.q.setWriteDeadline(t)
	}
	return c.f.SetWriteDeadline(t)
}

// Close ends the view: a read in progress returns, later reads and writes
// fail. The port itself stays open for the next view.
func (c *serialConn) Close() error {
	c.once.Do(func() {
		c.dead.Store(true)
		if err := c.f.SetReadDeadline(time.Now()); err != nil {
			// Not pollable: closing is the only way to interrupt a read.
			c.fileClosed = true
			c.f.Close()
		}
		close(c.closed)
	})
	return nil
}
