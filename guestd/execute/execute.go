// Package execute runs a process for the guest daemon: no shell, argv as
// given, the very file that was checked (an opened descriptor, never a path
// resolved again), its own process group and, where cgroup v2 is mounted,
// its own cgroup (so a timeout, or the end of the command, kills everything
// it started, setsid and double-forked daemons included), bounded output
// capture or streaming, and a reaped exit status.
package execute

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpersona/vmpersona/guestd/confine"
)

// Defaults applied when a Spec leaves a bound at zero.
const (
	DefaultTimeout   = 30 * time.Second
	DefaultMaxOutput = 1 << 20
	// waitDelay bounds how long Wait waits for output pipes held open by
	// descendants after the process itself has exited or was killed.
	waitDelay = 2 * time.Second
)

// ErrStart reports a process that could not be started.
var ErrStart = errors.New("execute: cannot start process")

// ErrBusy reports that the concurrency limit is reached.
var ErrBusy = errors.New("execute: too many processes running")

// Stream identifiers for OnOutput (the protocol's values).
const (
	Stdout byte = 1
	Stderr byte = 2
)

// Spec describes one process.
type Spec struct {
	// Path names the file executed; Args is the full argv (Args[0]
	// included). When Exe is set, Path is only used in messages.
	Path string
	// Exe, when set, is the opened file to execute (O_PATH is enough):
	// the child executes it through /proc/self/fd, so the file run is the
	// file opened, whatever happens to its path meanwhile. Run does not
	// close it.
	Exe *os.File
	// Domain, when set, is the Landlock domain the process (and all it
	// starts) runs in.
	Domain *confine.Domain
	// Credential, when set, is the user and groups the process runs as
	// (root, as the daemon, when nil).
	Credential *syscall.Credential
	Args       []string
	// Env is the complete environment.
	Env   []string
	Dir   string
	Stdin []byte
	// Timeout bounds the run (DefaultTimeout when 0); on expiry the whole
	// process group is killed.
	Timeout time.Duration
	// MaxOutput bounds each of stdout and stderr (DefaultMaxOutput when 0).
	MaxOutput int
	// OnOutput, when set, receives output as it is produced instead of it
	// being captured (still bounded by MaxOutput). It is called from two
	// goroutines (stdout, stderr) and must be safe for that; data is only
	// valid during the call (its buffer is reused).
	OnOutput func(stream byte, data []byte)
}

// Result is a finished process.
type Result struct {
	ExitCode        int
	Signal          string // "SIGKILL", empty when the process exited
	TimedOut        bool
	Stdout, Stderr  []byte
	StdoutTruncated bool
	StderrTruncated bool
	Duration        time.Duration
}

// Run starts the process and waits for it. It returns an error wrapping
// ErrStart only when the process could not be started; a process that ran
// and failed is a Result with its exit code or signal. Cancelling ctx kills
// the process group.
func Run(ctx context.Context, spec Spec) (Result, error) {
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	limit := spec.MaxOutput
	if limit <= 0 {
		limit = DefaultMaxOutput
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	stdout := &capture{limit: limit, stream: Stdout, emit: spec.OnOutput}
	stderr := &capture{limit: limit, stream: Stderr, emit: spec.OnOutput}
	start := time.Now()
	var cmd *exec.Cmd
	group := newCgroup()
	for attempt := 0; ; attempt++ {
		cmd = command(ctx, spec, stdout, stderr, group)
		err := spec.Domain.Start(cmd.Start)
		if err != nil && group != nil && !errors.Is(err, syscall.ETXTBSY) {
			// Either the file cannot run, or the cgroup could not take
			// the process (a cgroup with controllers enabled below it,
			// say). Try once without: if that starts, cgroups are off for
			// later processes too.
			cmd = command(ctx, spec, stdout, stderr, nil)
			if spec.Domain.Start(cmd.Start) == nil {
				disableCgroups(err)
				group.remove()
				group = nil
				break
			}
		}
		if err == nil {
			break
		}
		// ETXTBSY: a process forked elsewhere in this daemon (or by anyone
		// else) still holds the file open for writing until it execs; that
		// lasts microseconds. Other errors are final.
		if errors.Is(err, syscall.ETXTBSY) && attempt < startRetries && ctx.Err() == nil {
			time.Sleep(time.Millisecond << attempt)
			continue
		}
		group.done()
		return Result{}, fmt.Errorf("%w: %s: %w", ErrStart, spec.Path, err)
	}
	waitErr := cmd.Wait()
	res := Result{Duration: time.Since(start)}
	if ctx.Err() != nil {
		// Whatever the leader did, leave nothing of the group behind.
		unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		res.TimedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
	}
	// Nothing the command started outlives it: what left the process
	// group (setsid, double fork) is still in the cgroup, which is killed
	// unless it is empty.
	group.done()
	if ps := cmd.ProcessState; ps != nil {
		res.ExitCode = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			res.Signal = unix.SignalName(ws.Signal())
		}
	} else if waitErr != nil {
		res.ExitCode = -1
	}
	res.Stdout, res.StdoutTruncated = stdout.buf.Bytes(), stdout.truncated
	res.Stderr, res.StderrTruncated = stderr.buf.Bytes(), stderr.truncated
	return res, nil
}

// startRetries bounds the attempts to start a file that is busy (ETXTBSY).
const startRetries = 5

func command(ctx context.Context, spec Spec, stdout, stderr *capture, group *cgroup) *exec.Cmd {
	path := spec.Path
	if spec.Exe != nil {
		// The descriptor becomes fd 3 in the child, without close-on-exec:
		// the kernel resolves /proc/self/fd/3 to the opened file, and a
		// script's interpreter can open the same path again.
		path = "/proc/self/fd/3"
	}
	cmd := exec.CommandContext(ctx, path)
	cmd.Args = spec.Args
	if len(cmd.Args) == 0 {
		cmd.Args = []string{spec.Path}
	}
	if spec.Exe != nil {
		cmd.ExtraFiles = []*os.File{spec.Exe}
	}
	cmd.Env = spec.Env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.Dir = spec.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: spec.Credential}
	if group != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, group.fd
	}
	if len(spec.Stdin) > 0 {
		cmd.Stdin = bytes.NewReader(spec.Stdin)
	} else if f := devNull(); f != nil {
		// An *os.File is passed to the child as it is: no open per exec.
		cmd.Stdin = f
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Cancel = func() error {
		// The negative pid names the process group: the command and every
		// descendant that did not leave it; the cgroup holds those that did.
		group.kill()
		return unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	return cmd
}

var (
	devNullOnce sync.Once
	devNullFile *os.File
)

// devNull returns /dev/null opened once for reading (never closed), shared
// as the standard input of every process without input; nil when it
// cannot be opened (os/exec then opens it itself).
func devNull() *os.File {
	devNullOnce.Do(func() {
		devNullFile, _ = os.Open(os.DevNull)
	})
	return devNullFile
}

// copyBufs holds the buffers capture.ReadFrom reads pipes with.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// ReadFrom drains r (the pipe os/exec copies from) through a pooled buffer:
// io.Copy would allocate 32 KiB per stream per process.
func (c *capture) ReadFrom(r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.Write(buf[:n])
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// capture keeps (or forwards) at most limit bytes of one stream and drains
// the rest, so a chatty process never blocks on a full pipe.
type capture struct {
	mu        sync.Mutex
	limit     int
	n         int
	stream    byte
	emit      func(byte, []byte)
	buf       bytes.Buffer
	truncated bool
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keep := p
	if room := c.limit - c.n; len(keep) > room {
		keep = keep[:max(room, 0)]
		c.truncated = true
	}
	c.n += len(keep)
	if len(keep) > 0 {
		if c.emit != nil {
			c.emit(c.stream, keep)
		} else {
			c.buf.Write(keep)
		}
	}
	return len(p), nil
}

// Limiter bounds how many processes run at once, and how many wait for a
// slot.
type Limiter struct {
	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
}

// NewLimiter returns a limiter admitting n concurrent processes (n >= 1),
// with room for 4n waiting for a slot.
func NewLimiter(n int) *Limiter { return NewQueuedLimiter(n, 4*max(n, 1)) }

// NewQueuedLimiter returns a limiter admitting n concurrent processes
// (n >= 1) and at most queue (>= 0) waiting ones.
func NewQueuedLimiter(n, queue int) *Limiter {
	return &Limiter{slots: make(chan struct{}, max(n, 1)), maxWaiting: int64(max(queue, 0))}
}

// TryAcquire takes a slot or fails with ErrBusy at once; call the returned
// function to give the slot back.
func (l *Limiter) TryAcquire() (release func(), err error) {
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	default:
		return nil, ErrBusy
	}
}

// Acquire takes a slot, waiting (in arrival order) until one frees or ctx
// is done. It fails with ErrBusy when ctx ends first or when the queue is
// full.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	if r, err := l.TryAcquire(); err == nil {
		return r, nil
	}
	if l.waiting.Add(1) > l.maxWaiting {
		l.waiting.Add(-1)
		return nil, ErrBusy
	}
	defer l.waiting.Add(-1)
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: no slot before the deadline", ErrBusy)
	}
}

// Waiting returns how many callers wait in Acquire.
func (l *Limiter) Waiting() int { return int(l.waiting.Load()) }

func (l *Limiter) release() { <-l.slots }
