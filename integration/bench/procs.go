package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errTimeout says a wait for a process or socket ran out of time.
var errTimeout = errors.New("timed out")

// procs keeps every process the benchmark started, so that exactly those
// are stopped at the end (by PID), also on failure or Ctrl-C.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *bytes.Buffer
	mu   sync.Mutex
}

// tail returns the last lines the process wrote to stderr and stdout.
func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.log.String()
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

type lockedWriter struct{ p *proc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	if w.p.log.Len() > 64<<10 {
		w.p.log.Reset()
	}
	return w.p.log.Write(b)
}

// start runs a process and registers it for stopping.
func (ps *procs) start(name, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{}), log: &bytes.Buffer{}}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	// Its own process group, so that a Ctrl-C in the terminal reaches only
	// the benchmark, which then stops its children by PID. Should the
	// benchmark be killed outright (SIGKILL), the kernel sends the child
	// SIGTERM (a backstop: it fires when the forking thread exits).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	p.cmd = cmd
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends one process: SIGTERM, then SIGKILL after a grace period.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stopAll stops every process started, the latest first, in parallel
// batches (there may be a thousand guest daemons).
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := len(list) - 1; i >= 0; i-- {
		p := list[i]
		wg.Add(1)
		sem <- struct{}{}
		go func() { defer wg.Done(); defer func() { <-sem }(); p.stop() }()
	}
	wg.Wait()
}

// waitSocket waits until a unix socket accepts connections.
func waitSocket(ctx context.Context, path string, p *proc, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	name := "socket"
	if p != nil {
		name = p.name
	}
	for {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before listening on %s: %s", p.name, path, p.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %w waiting for %s: %v", name, errTimeout, path, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// memAvailableKiB reads MemAvailable from /proc/meminfo.
func memAvailableKiB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// goTool finds the go command: on PATH, else beside GOROOT.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	for _, p := range []string{filepath.Join(os.Getenv("GOROOT"), "bin", "go"), "/usr/local/go/bin/go"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

// binaries are the daemons built for this run.
type binaries struct {
	hostd, guestd string
}

// build compiles the daemons into dir: the guest daemon as it ships
// (static, stripped), the host daemon as `make build` does.
func build(ctx context.Context, root, dir string) (binaries, error) {
	b := binaries{hostd: filepath.Join(dir, "vmpersona-hostd"), guestd: filepath.Join(dir, "vmpersona-guestd")}
	steps := []struct {
		out, pkg string
		cgo      string
	}{
		{b.guestd, "./guestd/cmd/vmpersona-guestd", "0"},
		{b.hostd, "./hostd/cmd/vmpersona-hostd", ""},
	}
	for _, s := range steps {
		cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-ldflags", "-s -w", "-o", s.out, s.pkg)
		cmd.Dir = root
		cmd.Env = os.Environ()
		if s.cgo != "" {
			cmd.Env = append(cmd.Env, "CGO_ENABLED="+s.cgo)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("go build %s: %w\n%s", s.pkg, err, out)
		}
	}
	return b, nil
}

// unixClient is a keep-alive HTTP client over a unix socket, sized for a
// load generator (the connection pool holds every goroutine's connection).
func unixClient(socket string, conns int) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
	}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// do sends one request and reads the whole answer (so the connection is
// reused); it fails on any status other than want.
func do(ctx context.Context, c *http.Client, method, path string, body []byte, want int) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://bench"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != want {
		return b, fmt.Errorf("%s %s: status %d: %s", method, path, resp.StatusCode, truncate(string(b), 1000))
	}
	return b, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// quietLogger discards in-process guest servers' logs below warnings.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// cpuTimes returns a process's own CPU time and that of its waited-for
// children (utime+stime, cutime+cstime from /proc/PID/stat).
func cpuTimes(pid int) (self, children time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state): utime is field 14 → f[11].
	var v [4]int64
	for k := range 4 {
		v[k], err = strconv.ParseInt(f[11+k], 10, 64)
		if err != nil {
			return 0, 0, err
		}
	}
	const tick = 10 * time.Millisecond // USER_HZ 100 on Linux
	return time.Duration(v[0]+v[1]) * tick, time.Duration(v[2]+v[3]) * tick, nil
}
