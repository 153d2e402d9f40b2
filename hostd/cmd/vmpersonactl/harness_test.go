package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testbin"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// The binaries under test (internal/testbin builds them once per test run):
// vmpersonactl itself, the real host daemon and the real guest daemon. A
// daemon that does not build leaves its error here and the tests that need
// it skip, naming it.
var bins struct {
	ctl, hostd, guestd  string
	hostdErr, guestdErr error
}

func TestMain(m *testing.M) {
	if os.Getenv("VMP_TEST_PRINT_ARGV") != "" {
		// Run by the guest as an override target: show the argv it got.
		fmt.Println(strings.Join(os.Args, " "))
		os.Exit(0)
	}
	var err error
	if bins.ctl, err = testbin.Path(testbin.Ctl); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.hostd, bins.hostdErr = testbin.Path(testbin.Hostd)
	bins.guestd, bins.guestdErr = testbin.Path(testbin.Guestd)
	os.Exit(m.Run())
}

func needHostd(t testing.TB) {
	t.Helper()
	if bins.hostdErr != nil {
		t.Skipf("the real vmpersona-hostd does not build, so this test cannot run: %v", bins.hostdErr)
	}
}

func needGuestd(t testing.TB) {
	t.Helper()
	needHostd(t)
	if bins.guestdErr != nil {
		t.Skipf("the real vmpersona-guestd does not build, so this activate/exec test cannot run: %v", bins.guestdErr)
	}
}

// Tokens of the host daemon under test, one per role.
const (
	tokAdmin    = "admin-token-0123456789"
	tokOperator = "operator-token-0123456789"
	tokViewer   = "viewer-token-0123456789"
)

// daemons is a running host daemon, with a guest daemon behind instance
// "vm1" when the test asked for one.
type daemons struct {
	dir   string
	sock  string // the API's unix socket (root is admin there)
	url   string // the API over TCP (bearer tokens)
	hostd *proc
	args  []string // the host daemon's
}

// startDaemons starts the host daemon; withGuest also starts a guest
// daemon and declares it as instance vm1 (without one, vm1 points at a
// socket nobody listens on).
func startDaemons(t testing.TB, withGuest bool, hostdArgs ...string) *daemons {
	t.Helper()
	needHostd(t)
	if withGuest {
		needGuestd(t)
	}
	// Unix socket paths must be short: keep them out of t.TempDir()'s
	// long names.
	dir := testproc.ShortDir(t)
	guestSock := filepath.Join(dir, "guest.sock")
	if withGuest {
		_ = startProcess(t, "guestd", nil, bins.guestd, "--listen", "unix:"+guestSock,
			"--state-dir", filepath.Join(dir, "guest-state"), "--profile-file", filepath.Join(dir, "profile.sh"))
		testproc.WaitFor(t, "the guest daemon's socket", func() bool { _, err := os.Stat(guestSock); return err == nil })
	}
	tokens := filepath.Join(dir, "tokens.csv")
	csv := fmt.Sprintf("%s,alice,1001,\"admin\"\n%s,olivia,1002,\"operator\"\n%s,victor,1003,\"viewer\"\n", tokAdmin, tokOperator, tokViewer)
	if err := os.WriteFile(tokens, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemons{dir: dir, sock: filepath.Join(dir, "hostd.sock")}
	args := []string{"--data-dir", filepath.Join(dir, "data"),
		"--unix-socket", d.sock, "--listen", "127.0.0.1:0", "--libvirt-uri", "",
		"--token-auth-file", tokens, "--instance", "vm1=unix:" + guestSock,
		"--heartbeat", "500ms", "--log-format", "json"}
	d.args = append(args, hostdArgs...)
	d.startHostd(t)
	if withGuest {
		testproc.WaitFor(t, "the guest agent to connect", func() bool {
			r := d.ctl(t, "-o", "json", "instance", "get", "vm1")
			var in struct {
				Agent struct{ State string } `json:"agent"`
			}
			return r.code == 0 && json.Unmarshal([]byte(r.stdout), &in) == nil && in.Agent.State == "connected"
		})
	}
	return d
}

// createHardened creates the persona of hardenedJSON from a file.
func (d *daemons) createHardened(t *testing.T) {
	t.Helper()
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, t.TempDir(), "p.json", hardenedJSON)), 0, "create")
}

// createNamed creates an empty persona of that name from standard input.
func (d *daemons) createNamed(t *testing.T, name string) {
	t.Helper()
	r := runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, `{"name":"`+name+`"}`, "persona", "create", "-f", "-")
	want(t, r, 0, "create "+name)
}

func (d *daemons) startHostd(t testing.TB) {
	t.Helper()
	d.hostd = startProcess(t, "hostd", nil, bins.hostd, d.args...)
	testproc.WaitFor(t, "the host daemon's TCP listener", func() bool {
		d.url = tcpAddr(d.hostd.logs.String())
		return d.url != ""
	})
}

// tcpAddr finds the TCP listener in the host daemon's JSON log.
func tcpAddr(logs string) string {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l struct {
			Msg     string `json:"msg"`
			Addr    string `json:"addr"`
			Network string `json:"network"`
			TLS     bool   `json:"tls"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "API listening" && l.Network == "tcp" {
			if l.TLS {
				return "https://" + l.Addr
			}
			return "http://" + l.Addr
		}
	}
	return ""
}

// proc is a running daemon.
type proc struct {
	*testproc.Proc
	name string
	logs *testproc.Output
}

// stop ends the daemon: SIGTERM, then SIGKILL if it does not stop.
func (p *proc) stop() { p.Stop(10 * time.Second) }

// startProcess runs a daemon until the test ends and collects its output.
func startProcess(t testing.TB, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, logs: &testproc.Output{}}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	p.Proc = testproc.Start(t, cmd)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, lastLines(p.logs.String(), 40))
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// background is vmpersonactl running in the background against the
// daemons (a follow, a watch, a command to interrupt); it is ended when the
// test ends at the latest.
type background struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *testproc.Output // unless lines reads it (startLines)
	stderr *testproc.Output
	lines  *bufio.Scanner
}

// start runs vmpersonactl with args in the background.
func (d *daemons) start(t *testing.T, args ...string) *background {
	t.Helper()
	return d.startBackground(t, false, args)
}

// startLines runs vmpersonactl with args in the background, its standard
// output read line by line (next).
func (d *daemons) startLines(t *testing.T, args ...string) *background {
	t.Helper()
	return d.startBackground(t, true, args)
}

func (d *daemons) startBackground(t *testing.T, lines bool, args []string) *background {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bins.ctl, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VMPERSONA_SOCKET=" + d.sock}
	b := &background{t: t, cmd: cmd, stdout: &testproc.Output{}, stderr: &testproc.Output{}}
	cmd.Stdout, cmd.Stderr = b.stdout, b.stderr
	if lines {
		cmd.Stdout = nil
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		b.lines = bufio.NewScanner(out)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return b
}

// next decodes the next line printed into v and returns the line.
func (b *background) next(v any) string {
	b.t.Helper()
	if !b.lines.Scan() {
		b.t.Fatalf("vmpersonactl %s ended: %v", b.cmd.Args[1:], b.lines.Err())
	}
	if err := json.Unmarshal(b.lines.Bytes(), v); err != nil {
		b.t.Fatalf("line %q: %v", b.lines.Bytes(), err)
	}
	return b.lines.Text()
}

// interrupt sends SIGINT, as Ctrl-C does, and answers the exit code.
func (b *background) interrupt() int {
	b.t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGINT); err != nil {
		b.t.Fatal(err)
	}
	err := b.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	b.t.Fatalf("vmpersonactl %s: %v", b.cmd.Args[1:], err)
	return -1
}

// result is one run of vmpersonactl.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs vmpersonactl against the daemon's unix socket (as root: admin).
func (d *daemons) ctl(t testing.TB, args ...string) result {
	t.Helper()
	return runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, "", args...)
}

// ctlTCP runs vmpersonactl over TCP with a token ("" for none).
func (d *daemons) ctlTCP(t testing.TB, token string, args ...string) result {
	t.Helper()
	env := []string{"VMPERSONA_URL=" + d.url}
	if token != "" {
		env = append(env, "VMPERSONA_TOKEN="+token)
	}
	return runCtl(t, env, "", args...)
}

// runCtl runs the vmpersonactl binary with env added to a clean
// environment and stdin as its standard input.
func runCtl(t testing.TB, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.ctl, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + t.TempDir()}, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("vmpersonactl %q: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// want fails the test unless r exited with code.
func want(t *testing.T, r result, code int, what string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("%s: want exit %d, got %s", what, code, r)
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
