//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/integration/vmenv"
	"github.com/vmpersona/vmpersona/protocol"
)

var hostdSeq atomic.Int32

// Hostd is a real vmpersona-hostd process with its own Badger directory and
// API socket.
type Hostd struct {
	t       *testing.T
	Dir     string
	Data    string
	Sock    string
	LogPath string
	args    []string
	cmd     *exec.Cmd
	exited  chan struct{}
	http    *http.Client
}

type hostdOptions struct {
	// Instances maps a static instance name to its endpoint (--instance).
	Instances map[string]string
	// LibvirtURI enables libvirt discovery; empty disables it.
	LibvirtURI string
}

// startHostd starts a host daemon and waits until its API answers. It is
// killed when the test ends; if the test failed, its log tail is printed.
func startHostd(t *testing.T, opts hostdOptions) *Hostd {
	t.Helper()
	n := hostdSeq.Add(1)
	h := &Hostd{t: t, Dir: filepath.Join(env.runDir, fmt.Sprintf("hostd-%d", n))}
	h.Data = filepath.Join(h.Dir, "data")
	h.Sock = filepath.Join(h.Dir, "api.sock")
	h.LogPath = filepath.Join(h.Dir, "hostd.log")
	if err := os.MkdirAll(h.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.args = []string{"--data-dir", h.Data, "--unix-socket", h.Sock, "--libvirt-uri", opts.LibvirtURI,
		"--log-level", "debug", "--log-format", "text"}
	names := make([]string, 0, len(opts.Instances))
	for name := range opts.Instances {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		h.args = append(h.args, "--instance", name+"="+opts.Instances[name])
	}
	h.http = vmenv.UnixClient(h.Sock, 2*time.Minute)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("hostd log %s (last 40 lines):\n%s", h.LogPath, h.LogTail(40))
		}
		h.Kill()
	})
	h.Start()
	return h
}

// Start (re)starts the daemon with its flags and data directory and waits
// for /healthz.
func (h *Hostd) Start() {
	h.t.Helper()
	logf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== integration: starting vmpersona-hostd %s\n", strings.Join(h.args, " "))
	cmd := exec.Command(env.hostd, h.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	exited, err := reg.StartProc(cmd, "vmpersona-hostd")
	logf.Close()
	if err != nil {
		h.t.Fatal(err)
	}
	h.cmd = cmd
	h.exited = exited
	waitFor(h.t, 30*time.Second, "hostd to answer /healthz", func() (bool, string) {
		select {
		case <-h.exited:
			h.t.Fatalf("vmpersona-hostd exited at start:\n%s", h.LogTail(20))
		default:
		}
		st, body, err := h.Do(http.MethodGet, "/healthz", nil, nil)
		return err == nil && st == http.StatusOK, fmt.Sprintf("%d %s %v", st, body, err)
	})
}

// Kill9 kills the daemon with SIGKILL (a crash) and waits for it.
func (h *Hostd) Kill9() { h.signal(syscall.SIGKILL) }

// Kill ends the daemon (SIGTERM, then SIGKILL after 10 s) if it runs.
func (h *Hostd) Kill() {
	if h.cmd == nil {
		return
	}
	select {
	case <-h.exited:
		return
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(10 * time.Second):
		h.signal(syscall.SIGKILL)
	}
}

func (h *Hostd) signal(s syscall.Signal) {
	_ = h.cmd.Process.Signal(s)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		h.t.Fatalf("vmpersona-hostd (pid %d) did not exit after %v", h.cmd.Process.Pid, s)
	}
}

// LogTail returns the last n lines of the daemon's log.
func (h *Hostd) LogTail(n int) string {
	b, err := os.ReadFile(h.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return tail(string(b), n)
}

// Do sends one request to the REST API. in is marshalled as JSON; when out is
// not nil and the answer is a 2xx, the body is decoded into it.
func (h *Hostd) Do(method, path string, in, out any) (int, []byte, error) {
	return vmenv.DoJSON(h.http, 2*time.Minute, method, path, in, out)
}

// Must sends a request and fails the test unless the status is want.
func (h *Hostd) Must(want int, method, path string, in, out any) []byte {
	h.t.Helper()
	st, raw, err := h.Do(method, path, in, out)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	if st != want {
		h.t.Fatalf("%s %s: status %d, want %d: %s", method, path, st, want, raw)
	}
	return raw
}

// ctlResult is the outcome of one vmpersonactl run.
type ctlResult struct {
	Stdout, Stderr string
	Code           int
}

// Ctl runs the real vmpersonactl against this daemon's socket.
func (h *Hostd) Ctl(args ...string) ctlResult {
	h.t.Helper()
	return h.CtlIn(nil, args...)
}

// CtlIn runs vmpersonactl with stdin as its standard input.
func (h *Hostd) CtlIn(stdin []byte, args ...string) ctlResult {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.ctl, append([]string{"--socket", h.Sock}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := ctlResult{Stdout: so.String(), Stderr: se.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		h.t.Fatalf("vmpersonactl %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// MustCtl runs vmpersonactl and fails the test unless it exits 0.
func (h *Hostd) MustCtl(args ...string) string {
	h.t.Helper()
	r := h.Ctl(args...)
	if r.Code != 0 {
		h.t.Fatalf("vmpersonactl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// --- helpers over the API -------------------------------------------------

func (h *Hostd) CreatePersona(p protocol.Persona) {
	h.t.Helper()
	h.Must(http.StatusCreated, http.MethodPost, "/personas", p, nil)
}

func (h *Hostd) Instance(id string) (apitypes.Instance, int) {
	var doc apitypes.Instance
	st, _, _ := h.Do(http.MethodGet, "/instances/"+id, nil, &doc)
	return doc, st
}

func (h *Hostd) Active(id string) apitypes.ActivePersona {
	h.t.Helper()
	var doc apitypes.ActivePersona
	h.Must(http.StatusOK, http.MethodGet, "/instances/"+id+"/active_persona", nil, &doc)
	return doc
}

func (h *Hostd) Activate(id, persona string) apitypes.ActivationResult {
	h.t.Helper()
	var doc apitypes.ActivationResult
	h.Must(http.StatusOK, http.MethodPost, "/instances/"+id+"/personas/"+persona+"/activate", nil, &doc)
	return doc
}

// Exec runs a command through the API; status is the HTTP status, and for a
// non-200 answer the problem document is returned.
func (h *Hostd) Exec(id string, req apitypes.ExecRequest) (apitypes.ExecResult, apitypes.Problem, int) {
	h.t.Helper()
	var doc apitypes.ExecResult
	var prob apitypes.Problem
	st, raw, err := h.Do(http.MethodPost, "/instances/"+id+"/exec", req, &doc)
	if err != nil {
		h.t.Fatalf("exec %s on %s: %v", req.Command, id, err)
	}
	if st != http.StatusOK {
		_ = json.Unmarshal(raw, &prob)
	}
	return doc, prob, st
}

// MustExec runs a command and fails unless it ran (200) with exit code 0.
func (h *Hostd) MustExec(id string, cmd string, args ...string) apitypes.ExecResult {
	h.t.Helper()
	doc, prob, st := h.Exec(id, apitypes.ExecRequest{Command: cmd, Args: args, TimeoutSeconds: 60})
	if st != http.StatusOK || doc.ExitCode != 0 {
		h.t.Fatalf("exec %s %v on %s: status %d exit %d: %+v stdout=%q stderr=%q", cmd, args, id, st, doc.ExitCode, prob, doc.Stdout, doc.Stderr)
	}
	return doc
}

func (h *Hostd) Audit(query string) []apitypes.AuditEvent {
	h.t.Helper()
	var doc struct {
		Events []apitypes.AuditEvent `json:"events"`
	}
	h.Must(http.StatusOK, http.MethodGet, "/audit?"+query, nil, &doc)
	return doc.Events
}

func (h *Hostd) Metrics() string {
	h.t.Helper()
	return string(h.Must(http.StatusOK, http.MethodGet, "/metrics", nil, nil))
}

// WaitConnected waits until the instance's agent is connected and returns
// the instance document and how long it took.
func (h *Hostd) WaitConnected(id string, timeout time.Duration) (apitypes.Instance, time.Duration) {
	h.t.Helper()
	var doc apitypes.Instance
	d := waitFor(h.t, timeout, "agent of "+id+" connected", func() (bool, string) {
		var st int
		doc, st = h.Instance(id)
		return st == http.StatusOK && doc.Agent.State == "connected", fmt.Sprintf("status %d agent %+v", st, doc.Agent)
	})
	return doc, d
}

// WaitActive waits until the instance's agent is connected and confirms
// persona as active (not stale); persona "" waits for no persona.
func (h *Hostd) WaitActive(id, persona string, timeout time.Duration) (apitypes.ActivePersona, time.Duration) {
	h.t.Helper()
	var doc apitypes.ActivePersona
	d := waitFor(h.t, timeout, fmt.Sprintf("persona %q active on %s", persona, id), func() (bool, string) {
		doc = apitypes.ActivePersona{}
		st, raw, err := h.Do(http.MethodGet, "/instances/"+id+"/active_persona", nil, &doc)
		if err != nil || st != http.StatusOK {
			return false, fmt.Sprintf("%d %s %v", st, raw, err)
		}
		name := ""
		if doc.Persona != nil {
			name = doc.Persona.Name
		}
		return name == persona && !doc.Stale, string(raw)
	})
	return doc, d
}
