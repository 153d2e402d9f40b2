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
	"runtime"
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
	// ExeLink, when set with Exe, is a link to /proc/self/fd/3 (see
	// Names) the child executes Exe through, so that the process is listed
	// under the link's name; if that fails, Exe is executed as
	// /proc/self/fd/3.
	ExeLink string
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
	// Input, when set, is the standard input (Stdin is then ignored),
	// read as the process runs and copied to it by a goroutine of its own
	// until its end, the process closing its input, or the process's end;
	// Run closes it before it returns, which must make a waiting Read
	// return.
	Input io.ReadCloser
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
//
// One goroutine does the whole run: the process is started with
// syscall.ForkExec, and its output pipes, its standard input and its exit
// (a pidfd) are served by one poll loop, with no goroutine per stream and no
// trip through the runtime's network poller.
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
	var p *proc
	group := newCgroup()
	for attempt := 0; ; attempt++ {
		var err error
		p, err = startProc(spec, group)
		if err != nil && group != nil && !errors.Is(err, syscall.ETXTBSY) {
			// Either the file cannot run, or the cgroup could not take
			// the process (a cgroup with controllers enabled below it,
			// say). Try once without: if that starts, cgroups are off for
			// later processes too.
			if p2, err2 := startProc(spec, nil); err2 == nil {
				disableCgroups(err)
				group.remove()
				group, p, err = nil, p2, nil
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
		if spec.Input != nil {
			spec.Input.Close()
		}
		return Result{}, fmt.Errorf("%w: %s: %w", ErrStart, spec.Path, err)
	}
	p.group = group
	var fed chan struct{}
	if spec.Input != nil && p.in >= 0 {
		// Streamed input is copied by a goroutine of its own: the poll
		// loop below serves only the output and the exit.
		w := os.NewFile(uintptr(p.in), "stdin")
		p.in = -1
		fed = make(chan struct{})
		go func() {
			defer close(fed)
			io.Copy(w, spec.Input)
			w.Close()
			spec.Input.Close()
		}()
		defer func() {
			// The process has ended: a Read waiting for more input, or
			// a Write to a pipe a descendant holds, gives up.
			spec.Input.Close()
			w.Close()
			<-fed
		}()
	}
	// A timeout or the caller's cancellation kills the process group and
	// the cgroup; the loop then sees the process end.
	stop := context.AfterFunc(ctx, p.kill)
	ws := p.wait(spec.Stdin, stdout, stderr)
	stop()
	res := Result{Duration: time.Since(start)}
	if ctx.Err() != nil {
		// Whatever the leader did, leave nothing of the group behind.
		unix.Kill(-p.pid, unix.SIGKILL)
		res.TimedOut = errors.Is(ctx.Err(), context.DeadlineExceeded)
	}
	// Nothing the command started outlives it: what left the process
	// group (setsid, double fork) is still in the cgroup, which is killed
	// unless it is empty.
	group.done()
	switch {
	case ws.Exited():
		res.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		res.ExitCode = -1
		res.Signal = unix.SignalName(ws.Signal())
	default:
		res.ExitCode = -1
	}
	res.Stdout, res.StdoutTruncated = stdout.buf.Bytes(), stdout.truncated
	res.Stderr, res.StderrTruncated = stderr.buf.Bytes(), stderr.truncated
	return res, nil
}

// forcePoll makes wait use poll(2) (tests of that path).
var forcePoll = false

// startRetries bounds the attempts to start a file that is busy (ETXTBSY).
const startRetries = 5

// proc is a started process and the parent's ends of its pipes (-1 when
// closed).
type proc struct {
	pid, pidfd  int
	out, errOut int // read ends of stdout and stderr
	in          int // write end of stdin, -1 without input
	group       *cgroup

	mu     sync.Mutex // kill against reaping: no signal to a reaped pid
	reaped bool
}

// startProc forks and executes the process of spec in group (none when
// nil), in its own process group.
func startProc(spec Spec, group *cgroup) (*proc, error) {
	var out, errOut, in [2]int
	if err := unix.Pipe2(out[:], unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	if err := unix.Pipe2(errOut[:], unix.O_CLOEXEC); err != nil {
		unix.Close(out[0])
		unix.Close(out[1])
		return nil, err
	}
	in = [2]int{-1, -1}
	stdin := devNullFD()
	if len(spec.Stdin) > 0 || spec.Input != nil {
		if err := unix.Pipe2(in[:], unix.O_CLOEXEC); err != nil {
			closeFDs(out[0], out[1], errOut[0], errOut[1])
			return nil, err
		}
		stdin = in[0]
	}
	files := []uintptr{uintptr(stdin), uintptr(out[1]), uintptr(errOut[1])}
	path, viaLink := spec.Path, false
	if spec.Exe != nil {
		// The descriptor becomes fd 3 in the child, without close-on-exec:
		// the kernel resolves /proc/self/fd/3 (or a link to it) to the
		// opened file, and a script's interpreter can open the same path
		// again.
		path = fdPath
		if spec.ExeLink != "" {
			path, viaLink = spec.ExeLink, true
		}
		files = append(files, spec.Exe.Fd())
	}
	args := spec.Args
	if len(args) == 0 {
		args = []string{spec.Path}
	}
	env := spec.Env
	if env == nil {
		env = []string{}
	}
	pidfd := -1
	sys := &syscall.SysProcAttr{Setpgid: true, Credential: spec.Credential, PidFD: &pidfd}
	if group != nil {
		sys.UseCgroupFD, sys.CgroupFD = true, group.fd
	}
	attr := &syscall.ProcAttr{Dir: spec.Dir, Env: env, Files: files, Sys: sys}
	var pid int
	err := spec.Domain.Start(func() error {
		var err error
		pid, err = syscall.ForkExec(path, args, attr)
		if err != nil && viaLink {
			// The link could not be used (removed meanwhile, say): the
			// descriptor's own path gives the answer.
			if pidfd >= 0 {
				unix.Close(pidfd)
				pidfd = -1
			}
			pid, err = syscall.ForkExec(fdPath, args, attr)
		}
		return err
	})
	if spec.Exe != nil {
		runtime.KeepAlive(spec.Exe)
	}
	closeFDs(out[1], errOut[1], in[0])
	if err != nil {
		closeFDs(out[0], errOut[0], in[1])
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return nil, err
	}
	if in[1] >= 0 {
		unix.SetNonblock(in[1], true)
	}
	return &proc{pid: pid, pidfd: pidfd, out: out[0], errOut: errOut[0], in: in[1]}, nil
}

func closeFDs(fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// kill ends the process group and everything in the cgroup, unless the
// process has been reaped already.
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return
	}
	// The negative pid names the process group: the command and every
	// descendant that did not leave it; the cgroup holds those that did.
	p.group.kill()
	unix.Kill(-p.pid, unix.SIGKILL)
}

// reap collects the process's exit status if it has ended.
func (p *proc) reap(ws *syscall.WaitStatus) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		wpid, err := syscall.Wait4(p.pid, ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if wpid == p.pid || err == syscall.ECHILD {
			p.reaped = true
			return true
		}
		return false
	}
}

// wait serves the process until it has ended and its output pipes are
// closed (or waitDelay has passed since it ended: a descendant may hold
// them), feeding stdin and capturing stdout and stderr on the way.
//
// The pipes and the pidfd are watched by an epoll instance of the run's
// own, itself waited for through the runtime's poller: the goroutine parks
// instead of holding its thread and processor in a blocking poll(2), so an
// idle daemon stays idle (the runtime's monitor sleeps) while a command
// runs.
func (p *proc) wait(stdin []byte, stdout, stderr *capture) syscall.WaitStatus {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil || forcePoll {
		if err == nil {
			unix.Close(epfd)
		}
		return p.pollWait(stdin, stdout, stderr)
	}
	watch := func(fd int, ev uint32) {
		if fd >= 0 {
			unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: ev, Fd: int32(fd)})
		}
	}
	watch(p.out, unix.EPOLLIN)
	watch(p.errOut, unix.EPOLLIN)
	watch(p.pidfd, unix.EPOLLIN)
	watch(p.in, unix.EPOLLOUT)
	unix.SetNonblock(epfd, true)
	ep := os.NewFile(uintptr(epfd), "epoll")
	defer ep.Close()
	rc, err := ep.SyscallConn()
	if err != nil {
		return p.pollWait(stdin, stdout, stderr)
	}
	defer func() { closeFDs(p.out, p.errOut, p.in, p.pidfd) }()

	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var ws syscall.WaitStatus
	exited := false
	var drainEnd time.Time
	closeFD := func(fd *int) {
		unix.Close(*fd)
		*fd = -1
	}
	var events [4]unix.EpollEvent
	serve := func(fd uintptr) bool {
		n, err := unix.EpollWait(int(fd), events[:], 0)
		if err != nil || n <= 0 {
			return false // nothing yet: park until the epoll instance is readable
		}
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case p.out, p.errOut:
				c, fdp := stdout, &p.out
				if int(ev.Fd) == p.errOut {
					c, fdp = stderr, &p.errOut
				}
				n, err := unix.Read(*fdp, buf)
				if n > 0 {
					c.Write(buf[:n])
				} else if err != unix.EINTR && err != unix.EAGAIN {
					closeFD(fdp) // end of the stream; leaves the epoll set
				}
			case p.in:
				n, err := unix.Write(p.in, stdin)
				if n > 0 {
					stdin = stdin[n:]
				}
				if len(stdin) == 0 || (err != nil && err != unix.EAGAIN && err != unix.EINTR) {
					closeFD(&p.in)
				}
			case p.pidfd:
				if !exited && p.reap(&ws) {
					exited = true
					drainEnd = time.Now().Add(waitDelay)
					// A pidfd stays readable: out of the set.
					unix.EpollCtl(int(fd), unix.EPOLL_CTL_DEL, p.pidfd, nil)
					if p.in >= 0 {
						closeFD(&p.in) // input nobody will read
					}
				}
			}
		}
		return true
	}
	for {
		if exited && p.out < 0 && p.errOut < 0 {
			return ws
		}
		switch {
		case exited:
			ep.SetReadDeadline(drainEnd)
		case p.pidfd < 0:
			// No pidfd (an old kernel): look for the exit now and then.
			ep.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		}
		err := rc.Read(serve)
		if err == nil {
			continue
		}
		if exited || !errors.Is(err, os.ErrDeadlineExceeded) {
			// A descendant holds the pipes open (or the poller failed):
			// stop reading.
			closeFDs(p.out, p.errOut)
			p.out, p.errOut = -1, -1
			if !exited {
				p.kill()
				for !p.reap(&ws) {
					time.Sleep(time.Millisecond)
				}
			}
			return ws
		}
		if p.reap(&ws) {
			exited = true
			drainEnd = time.Now().Add(waitDelay)
			if p.in >= 0 {
				closeFD(&p.in)
			}
		}
	}
}

// pollWait is wait with poll(2): the goroutine blocks in the kernel, its
// thread with it (used when no epoll instance can be made).
func (p *proc) pollWait(stdin []byte, stdout, stderr *capture) syscall.WaitStatus {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var ws syscall.WaitStatus
	exited := false
	var drainEnd time.Time
	defer func() { closeFDs(p.out, p.errOut, p.in, p.pidfd) }()
	read := func(fd *int, c *capture) {
		n, err := unix.Read(*fd, buf)
		if n > 0 {
			c.Write(buf[:n])
			return
		}
		if err == unix.EINTR || err == unix.EAGAIN {
			return
		}
		unix.Close(*fd)
		*fd = -1
	}
	for {
		if exited && p.out < 0 && p.errOut < 0 {
			return ws
		}
		pfd := [4]unix.PollFd{
			{Fd: int32(p.out), Events: unix.POLLIN},
			{Fd: int32(p.errOut), Events: unix.POLLIN},
			{Fd: -1, Events: unix.POLLIN},
			{Fd: int32(p.in), Events: unix.POLLOUT},
		}
		if !exited {
			pfd[2].Fd = int32(p.pidfd)
		}
		wait := -1
		switch {
		case exited:
			left := time.Until(drainEnd)
			if left <= 0 {
				// A descendant holds the pipes open: stop reading.
				closeFDs(p.out, p.errOut)
				p.out, p.errOut = -1, -1
				return ws
			}
			wait = int(left/time.Millisecond) + 1
		case p.pidfd < 0:
			// No pidfd (an old kernel): look for the exit now and then.
			wait = 10
		}
		_, err := unix.Poll(pfd[:], wait)
		if err != nil && err != unix.EINTR {
			// Cannot happen with valid descriptors; do not spin.
			time.Sleep(time.Millisecond)
		}
		if pfd[0].Revents != 0 && p.out >= 0 {
			read(&p.out, stdout)
		}
		if pfd[1].Revents != 0 && p.errOut >= 0 {
			read(&p.errOut, stderr)
		}
		if pfd[3].Revents != 0 && p.in >= 0 {
			n, err := unix.Write(p.in, stdin)
			if n > 0 {
				stdin = stdin[n:]
			}
			if len(stdin) == 0 || (err != nil && err != unix.EAGAIN && err != unix.EINTR) {
				unix.Close(p.in)
				p.in = -1
			}
		}
		if !exited && (pfd[2].Revents != 0 || p.pidfd < 0) && p.reap(&ws) {
			exited = true
			drainEnd = time.Now().Add(waitDelay)
			if p.in >= 0 {
				// Input nobody will read.
				unix.Close(p.in)
				p.in = -1
			}
		}
	}
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

// devNullFD is the descriptor of devNull, or of a fresh /dev/null when it
// could not be shared (never closed).
var devNullFD = sync.OnceValue(func() int {
	if f := devNull(); f != nil {
		return int(f.Fd())
	}
	fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
})

// copyBufs holds the buffers the output pipes are read with.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

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
