package reliability

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testbin"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// The daemons under test (internal/testbin builds them once per test run),
// and a directory for the suite's own client programs (peerclient).
var hostdBin, guestdBin, binDir string

func TestMain(m *testing.M) {
	var err error
	if hostdBin, err = testbin.Path(testbin.Hostd); err == nil {
		guestdBin, err = testbin.Path(testbin.Guestd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "vmpersona-reliability")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755) // the unprivileged client of the auth suite runs from here
	binDir = dir
	shortParallel()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// envInt reads a bounded integer knob from the environment.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// proc is a real daemon process.
type proc struct {
	*testproc.Proc
	stderr *testproc.Output
}

func startProc(t testing.TB, bin string, args ...string) *proc {
	t.Helper()
	// Keep the last MiB or so of the log: enough to explain a failure.
	p := &proc{stderr: &testproc.Output{Limit: 1 << 20}}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = p.stderr
	if testing.Verbose() && os.Getenv("RELIABILITY_LOG") != "" {
		cmd.Stderr = io.MultiWriter(p.stderr, os.Stderr)
	}
	p.Proc = testproc.Start(t, cmd)
	return p
}

// untilClosed runs step in a goroutine that wg counts, again and again,
// until stop is closed or step returns false: the load a test keeps up while
// it does something else.
func untilClosed(wg *sync.WaitGroup, stop <-chan struct{}, step func() bool) {
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if !step() {
				return
			}
		}
	})
}

// statusKB reads the kB figures of /proc/PID/status (VmRSS, VmHWM,
// RssAnon, …) by name.
func (p *proc) statusKB(t testing.TB) map[string]int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatalf("reading the daemon's status: %v", err)
	}
	kb := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.HasSuffix(f[0], ":") {
			if n, err := strconv.Atoi(f[1]); err == nil {
				kb[strings.TrimSuffix(f[0], ":")] = n
			}
		}
	}
	return kb
}

// rssKB is the resident set size of the process (VmRSS), and its peak (VmHWM).
func (p *proc) rssKB(t testing.TB) (rss, hwm int) {
	t.Helper()
	kb := p.statusKB(t)
	return kb["VmRSS"], kb["VmHWM"]
}

// anonKB is the anonymous part of the resident set (RssAnon): heap and
// stacks, without file pages mapped from disk (Badger maps its value log
// and tables; those pages count in VmRSS but are reclaimable page cache).
func (p *proc) anonKB(t testing.TB) int {
	t.Helper()
	return p.statusKB(t)["RssAnon"]
}

// hostd is a running vmpersona-hostd with its API on a unix socket.
type hostd struct {
	*proc
	sock    string
	dataDir string
	client  *http.Client
}

// startHostd runs the real host daemon over dataDir; extra flags follow the
// defaults (no libvirt, 500 ms heartbeat).
func startHostd(t testing.TB, dataDir, sock string, extra ...string) *hostd {
	t.Helper()
	args := append([]string{"--data-dir", dataDir, "--unix-socket", sock, "--libvirt-uri", "", "--heartbeat", "500ms", "--log-level", "warn"}, extra...)
	p := startProc(t, hostdBin, args...)
	p.WaitListening(t, sock, p.stderr)
	return &hostd{proc: p, sock: sock, dataDir: dataDir, client: testproc.UnixHTTP(sock, 60*time.Second)}
}

// startGuest runs the real guest daemon on a unix socket in dir (made if
// need be); it returns the process and the endpoint hostd dials.
func startGuest(t testing.TB, dir string, extra ...string) (*proc, string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	args := append([]string{"--listen", "unix:" + sock, "--state-dir", filepath.Join(dir, "state"),
		"--profile-file", filepath.Join(dir, "profile.sh"), "--log-level", "warn"}, extra...)
	p := startProc(t, guestdBin, args...)
	p.WaitListening(t, sock, p.stderr)
	return p, "unix:" + sock
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("answer (%d) is not a JSON object: %v\n%.2000s", a.status, err, a.body)
	}
	return m
}

// call makes one API request; body is a string, []byte, io.Reader or a value
// marshalled to JSON. A transport error is returned, not fatal.
func call(c *http.Client, method, path string, body any, hdr ...string) (answer, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return answer{}, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://hostd"+path, rd)
	if err != nil {
		return answer{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	return answer{status: res.StatusCode, header: res.Header, body: b}, err
}

func (h *hostd) must(t testing.TB, method, path string, body any, want int, hdr ...string) answer {
	t.Helper()
	a, err := call(h.client, method, path, body, hdr...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", method, path, err, h.stderr)
	}
	if a.status != want {
		t.Fatalf("%s %s: status %d, want %d: %.2000s", method, path, a.status, want, a.body)
	}
	return a
}

// checkProblem asserts an error answer is an RFC 9457 problem document.
func checkProblem(t testing.TB, what string, a answer) {
	t.Helper()
	if ct := a.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: error answer %d has Content-Type %q, want application/problem+json: %.300s", what, a.status, ct, a.body)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Errorf("%s: problem document is not JSON: %v", what, err)
		return
	}
	for _, k := range []string{"type", "title", "status", "detail"} {
		if _, ok := m[k]; !ok {
			t.Errorf("%s: problem document lacks %q: %.300s", what, k, a.body)
		}
	}
}

// waitConnected waits until hostd reports the instance's agent connected.
func (h *hostd) waitConnected(t testing.TB, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last answer
	for time.Now().Before(deadline) {
		a, err := call(h.client, "GET", "/instances/"+id, nil)
		if err == nil && a.status == 200 {
			last = a
			var m map[string]any
			if json.Unmarshal(a.body, &m) == nil {
				if ag, ok := m["agent"].(map[string]any); ok && ag["state"] == "connected" {
					return
				}
				if m["state"] == "connected" || m["agent_state"] == "connected" {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("instance %s never connected: %s\n%s", id, last.body, h.stderr)
}

// auditEvents reads every audit event (following the cursor) matching query.
func (h *hostd) auditEvents(t testing.TB, query string) []map[string]any {
	t.Helper()
	var all []map[string]any
	after := ""
	for {
		q := "/audit?limit=10000"
		if query != "" {
			q += "&" + query
		}
		if after != "" {
			q += "&after=" + after
		}
		a := h.must(t, "GET", q, nil, 200)
		var page struct {
			Events []map[string]any `json:"events"`
			Next   string           `json:"next"`
		}
		if err := json.Unmarshal(a.body, &page); err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Events...)
		if len(page.Events) == 0 || page.Next == "" || page.Next == after {
			return all
		}
		after = page.Next
	}
}

// unixlessClient calls the API over TCP.
func unixlessClient(addr string) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		}}}
}

func newRequest(method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequest(method, "http://hostd"+path, body)
	if err == nil && body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, err
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// eachFrame hands each frame read from r to handle until the stream ends,
// passing over bytes that are no frame (a scripted guest reads what the
// host sends, which is not always whole).
func eachFrame(r *protocol.Reader, handle func(f protocol.Frame)) {
	for {
		f, err := r.Next()
		if err != nil {
			var fe *protocol.FrameError
			if errors.As(err, &fe) {
				continue
			}
			return
		}
		handle(f)
	}
}

// longRun is set under the build tag reliability (make reliability): the
// suites then use their long defaults.
var longRun bool

// pick returns the long value under the reliability tag, else the short one.
// parallel lets the short suites of `make test` run beside each other (go
// test's -parallel, by default as many as there are cores): they are about
// faults and bounds, not about what else the machine runs. The full-size
// runs of `make reliability` stay one at a time, so their figures (load
// latencies, fault counts) are the suite's own. TestSocketGroup never runs
// beside the others: while it runs, the vmpersona group exists and new
// sockets are root:vmpersona 0660, which the auth suite's nobody client
// could not reach.
func parallel(t *testing.T) {
	if !longRun {
		t.Parallel()
	}
}

// shortParallelism is how many short suites run at a time when -parallel
// is not given: four, not go test's default of one per core, since they
// mostly wait (for a server's 10 s header timeout, an exec's deadline,
// etcd's election) rather than compute: the package takes about 40 s
// alone instead of 60.
const shortParallelism = 4

// shortParallel sets -test.parallel to shortParallelism for the short
// suites, unless it was given.
func shortParallel() {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !longRun && !given {
		flag.Set("test.parallel", strconv.Itoa(shortParallelism))
	}
}

func pick[T any](short, long T) T {
	if longRun {
		return long
	}
	return short
}
