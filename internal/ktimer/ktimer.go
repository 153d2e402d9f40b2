// Package ktimer is a one-shot timer kept by the kernel (a timerfd) and
// waited for through Go's network poller.
//
// A Go runtime timer wakes more than its goroutine: the runtime's monitor
// thread (sysmon) sleeps only until the next runtime timer, then polls every
// 20 µs until the process is idle again, and a timer moved to a later time
// still wakes the runtime at its old one. An idle guest daemon's liveness
// watch fired that way cost ≈ 15 context switches each time. A timerfd is
// invisible to the runtime: when it expires, the thread already waiting in
// the poller wakes, as for a frame arriving, and nothing else does. Arming
// and reading it are raw system calls (they never block), which do not wake
// the monitor either.
package ktimer

import (
	"errors"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by Wait once the timer is closed.
var ErrClosed = errors.New("ktimer: closed")

// Timer is a one-shot timer. Reset and Close may be called from any
// goroutine; Wait from one at a time.
type Timer struct {
	f  *os.File
	rc syscall.RawConn
}

// New returns a disarmed timer.
func New() (*Timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("timerfd_create", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Timer{f: f, rc: rc}, nil
}

// Reset arms the timer to expire after d (at once when d ≤ 0), replacing
// any earlier expiry. An expiry not yet waited for is cleared.
func (t *Timer) Reset(d time.Duration) {
	if d <= 0 {
		d = 1 // a zero it_value would disarm it
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(d))}
	t.rc.Control(func(fd uintptr) {
		syscall.RawSyscall6(unix.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	})
}

// Stop disarms the timer.
func (t *Timer) Stop() {
	var spec unix.ItimerSpec
	t.rc.Control(func(fd uintptr) {
		syscall.RawSyscall6(unix.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	})
}

// Wait blocks until the timer expires; it fails with ErrClosed once the
// timer is closed (a Wait in progress returns).
func (t *Timer) Wait() error {
	var n uint64
	err := t.rc.Read(func(fd uintptr) bool {
		for {
			_, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&n)), 8)
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // not yet: wait in the poller
			}
			return true
		}
	})
	if err != nil {
		// The descriptor's only failure: it was closed.
		return ErrClosed
	}
	return nil
}

// Close releases the timer; a Wait in progress returns ErrClosed.
func (t *Timer) Close() error { return t.f.Close() }
