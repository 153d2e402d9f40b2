package transport

import (
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// An idle guest must not wake up for nothing: every wakeup of a VM's vCPU is
// an exit its host pays for. Two things in Go's ordinary I/O path wake the
// daemon although no work is due:
//
//   - Every read or write is a system call announced to the Go scheduler,
//     which wakes its monitor thread (sysmon) from its deep sleep; the
//     monitor then polls every 20 µs until the daemon is idle again. A
//     heartbeat answered this way cost ≈ 7 context switches instead of 2.
//   - A write deadline arms a runtime timer. The session sets one before
//     every frame, so the timer fires (or is moved, which wakes the runtime
//     at its old time) seconds after the last frame: a burst of switches
//     10 s after the daemon's last write, with nothing to do.
//
// quietIO reads and writes the stream's non-blocking descriptor with raw
// system calls (they never block, so the scheduler need not know), waits
// for the descriptor through the runtime's poller as before, and applies
// the session's write deadline only when a write has to wait.
type quietIO struct {
	rc       syscall.RawConn
	deadline func(time.Time) error // the stream's own SetWriteDeadline
	wd       atomic.Int64          // the write deadline asked for, UnixNano; 0: none
}

// newQuietIO returns the quiet path for s, or nil when s has no
// non-blocking descriptor (then the stream's own Read and Write serve).
func newQuietIO(s any, deadline func(time.Time) error) *quietIO {
	sc, ok := s.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	nonblock := false
	if err := rc.Control(func(fd uintptr) {
		fl, _, e := syscall.RawSyscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
		nonblock = e == 0 && fl&syscall.O_NONBLOCK != 0
	}); err != nil || !nonblock {
		// A blocking descriptor would hold a scheduler thread in a raw
		// read: keep the ordinary path.
		return nil
	}
	return &quietIO{rc: rc, deadline: deadline}
}

// setWriteDeadline records the deadline; no timer is armed until a write
// has to wait.
func (q *quietIO) setWriteDeadline(t time.Time) error {
	if t.IsZero() {
		q.wd.Store(0)
	} else {
		q.wd.Store(t.UnixNano())
	}
	return nil
}

func (q *quietIO) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := q.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch e {
			case 0:
				n = int(r)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait in the poller
			default:
				rerr = os.NewSyscallError("read", e)
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (q *quietIO) write(p []byte) (int, error) {
	n := 0
	var werr error
	armed := false
	err := q.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p[n:]))), uintptr(len(p)-n))
			switch e {
			case 0:
				n += int(r)
			case syscall.EINTR:
			case syscall.EAGAIN:
				if !armed {
					// The stream is full: from now on the deadline
					// the session asked for bounds the wait.
					armed = true
					if wd := q.wd.Load(); wd != 0 {
						if err := q.deadline(time.Unix(0, wd)); err != nil {
							werr = err
							return true
						}
					}
				}
				return false // wait in the poller
			default:
				werr = os.NewSyscallError("write", e)
				return true
			}
		}
		return true
	})
	if armed {
		q.deadline(time.Time{})
	}
	if err == nil {
		err = werr
	}
	return n, err
}

// quietConn is a net.Conn (unix, vsock) read and written by quietIO.
type quietConn struct {
	net.Conn
	q *quietIO
}

// quiet wraps c when its descriptor allows it.
func quiet(c net.Conn) net.Conn {
	if q := newQuietIO(c, c.SetWriteDeadline); q != nil {
		return &quietConn{Conn: c, q: q}
	}
	return c
}

func (c *quietConn) Read(p []byte) (int, error)  { return c.q.read(p) }
func (c *quietConn) Write(p []byte) (int, error) { return c.q.write(p) }

func (c *quietConn) SetWriteDeadline(t time.Time) error { return c.q.setWriteDeadline(t) }

func (c *quietConn) SetDeadline(t time.Time) error {
	c.q.setWriteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}
