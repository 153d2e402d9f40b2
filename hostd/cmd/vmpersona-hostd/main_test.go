package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testbin"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

var hostdBin, guestdBin string

func TestMain(m *testing.M) {
	var err error
	if hostdBin, err = testbin.Path(testbin.Hostd); err == nil {
		guestdBin, err = testbin.Path(testbin.Guestd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

type hostdProc struct {
	*testproc.Proc
	sock   string
	stderr *testproc.Output
}

// start runs the real host daemon with the given extra flags; it is killed
// when the test ends.
func start(t *testing.T, dataDir string, extra ...string) *hostdProc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hostd.sock")
	return startArgs(t, sock, append([]string{"--data-dir", dataDir, "--unix-socket", sock, "--libvirt-uri", "", "--heartbeat", "500ms"}, extra...)...)
}

func startArgs(t *testing.T, sock string, args ...string) *hostdProc {
	t.Helper()
	d := &hostdProc{sock: sock, stderr: &testproc.Output{}}
	cmd := exec.Command(hostdBin, args...)
	cmd.Stderr = d.stderr
	d.Proc = testproc.Start(t, cmd)
	d.WaitListening(t, sock, d.stderr)
	return d
}

func (d *hostdProc) client() *http.Client { return testproc.UnixHTTP(d.sock, 30*time.Second) }

func (d *hostdProc) do(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://hostd"+path, rd)
	res, err := d.client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	var m map[string]any
	json.NewDecoder(res.Body).Decode(&m)
	return res.StatusCode, m
}

func startGuest(t *testing.T, stateDir string) (string, func()) {
	t.Helper()
	return startGuestAt(t, filepath.Join(t.TempDir(), "agent.sock"), stateDir)
}

func startGuestAt(t *testing.T, sock, stateDir string) (string, func()) {
	t.Helper()
	cmd := exec.Command(guestdBin, "--listen", "unix:"+sock, "--state-dir", stateDir, "--profile-file", filepath.Join(stateDir, "profile.sh"))
	return "unix:" + sock, testproc.Start(t, cmd).Kill
}

func TestHelpAndVersion(t *testing.T) {
	out, err := exec.Command(hostdBin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--token-auth-file") || !strings.Contains(string(out), "Examples:") {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	out, err = exec.Command(hostdBin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "vmpersona-hostd "+testbin.Version()+" ") {
		t.Fatalf("--version: %v %s", err, out)
	}
	if err := exec.Command(hostdBin, "--no-such-flag").Run(); err == nil {
		t.Fatal("an unknown flag was accepted")
	}
}

// TestUnixSocketPeerIsAdmin: root on the unix socket needs no token.
func TestUnixSocketPeerIsAdmin(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the unix socket grants admin to root; these tests run as another user")
	}
	d := start(t, t.TempDir())
	if code, body := d.do(t, "GET", "/audit", nil); code != 200 {
		t.Fatalf("GET /audit over the unix socket as root: %d %v", code, body)
	}
	fi, err := os.Stat(d.sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want 0660 (%v)", fi.Mode().Perm(), err)
	}
}

func TestWorldReadableTokenFileRefused(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.csv")
	os.WriteFile(f, []byte("secret,alice,1,admin\n"), 0o644)
	cmd := exec.Command(hostdBin, "--data-dir", t.TempDir(), "--unix-socket", filepath.Join(t.TempDir(), "s"), "--libvirt-uri", "", "--token-auth-file", f)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "chmod 600") {
		t.Fatalf("a world-readable token file was accepted: %v\n%s", err, out)
	}
}

func TestTokensOverTCP(t *testing.T) {
	f := filepath.Join(t.TempDir(), "tokens.csv")
	os.WriteFile(f, []byte("s3cret-admin,alice,1,\"admin\"\ns3cret-view,victor,2,viewer\n"), 0o600)
	addr := testproc.FreeTCPAddr(t)
	start(t, t.TempDir(), "--listen", addr, "--token-auth-file", f)
	get := func(tok, path string) int {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	for _, c := range []struct {
		tok, path string
		want      int
	}{
		{"", "/personas", 401}, {"wrong", "/personas", 401}, {"s3cret-view", "/personas", 200},
		{"s3cret-view", "/audit", 403}, {"s3cret-admin", "/audit", 200}, {"", "/healthz", 200}, {"", "/readyz", 200},
	} {
		if got := get(c.tok, c.path); got != c.want {
			t.Errorf("GET %s with %q: %d, want %d", c.path, c.tok, got, c.want)
		}
	}
}

// TestSdNotifyReady: under systemd (Type=notify) the daemon reports READY=1
// once it serves.
func TestSdNotifyReady(t *testing.T) {
	ns := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", ns)
	start(t, t.TempDir())
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("no READY=1 from the daemon: %q %v", buf[:n], err)
	}
}

// TestRestartKeepsStateAndReconciles: personas and the active persona survive
// kill -9 of hostd; the restarted daemon reconciles with the guest.
func TestRestartKeepsStateAndReconciles(t *testing.T) {
	data := t.TempDir()
	ep, _ := startGuest(t, t.TempDir())
	d := start(t, data, "--instance", "vm1="+ep)
	waitAgent(t, d, "vm1")
	for _, name := range []string{"alpha", "beta", "gamma"} {
		if code, body := d.do(t, "POST", "/personas", map[string]any{"name": name, "environment_variables": map[string]string{"WHO": name}}); code != 201 {
			t.Fatalf("create %s: %d %v", name, code, body)
		}
	}
	if code, body := d.do(t, "POST", "/instances/vm1/personas/beta/activate", nil); code != 200 {
		t.Fatalf("activate: %d %v", code, body)
	}
	d.Kill()

	d = start(t, data, "--instance", "vm1="+ep)
	code, list := d.do(t, "GET", "/personas", nil)
	if code != 200 || len(list["personas"].([]any)) != 3 {
		t.Fatalf("after kill -9: %d %v", code, list)
	}
	waitAgent(t, d, "vm1")
	code, ap := d.do(t, "GET", "/instances/vm1/active_persona", nil)
	if p, _ := ap["persona"].(map[string]any); code != 200 || p == nil || p["name"] != "beta" || ap["stale"] != false {
		t.Fatalf("active persona after restart: %d %v", code, ap)
	}
	code, ex := d.do(t, "POST", "/instances/vm1/exec", map[string]any{"command": "printenv", "args": []string{"WHO"}})
	if code != 200 || ex["stdout"] != "beta\n" {
		t.Fatalf("exec after restart: %d %v", code, ex)
	}
}

// TestGuestGoneMidRequest: a guest killed while a command runs yields an
// answer (503), not a hang, and the API keeps serving.
func TestGuestGoneMidRequest(t *testing.T) {
	ep, stop := startGuest(t, t.TempDir())
	d := start(t, t.TempDir(), "--instance", "vm1="+ep)
	waitAgent(t, d, "vm1")
	type answer struct {
		code int
		body map[string]any
	}
	ch := make(chan answer, 1)
	go func() {
		code, body := d.do(t, "POST", "/instances/vm1/exec", map[string]any{"command": "sleep", "args": []string{"30"}})
		ch <- answer{code, body}
	}()
	time.Sleep(300 * time.Millisecond)
	stop()
	select {
	case a := <-ch:
		if a.code != 503 && a.code != 504 {
			t.Fatalf("exec on a vanished guest: %d %v", a.code, a.body)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("exec on a vanished guest hung")
	}
	if code, _ := d.do(t, "GET", "/instances/vm1", nil); code != 200 {
		t.Fatalf("API after the guest vanished: %d", code)
	}
}

func waitAgent(t *testing.T, d *hostdProc, id string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		_, inst := d.do(t, "GET", "/instances/"+id, nil)
		if a, _ := inst["agent"].(map[string]any); a != nil && a["state"] == "connected" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("agent of %s never connected: %s", id, d.stderr)
}

// TestDefaultPersonaOnConnect: a guest that connects holding no persona gets
// the default persona, and the audit log says so.
func TestDefaultPersonaOnConnect(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	d := start(t, t.TempDir(), "--instance", "vm1=unix:"+sock)
	if code, body := d.do(t, "POST", "/personas", map[string]any{"name": "base", "default_persona": true,
		"environment_variables": map[string]string{"TIER": "base"}}); code != 201 {
		t.Fatalf("create: %d %v", code, body)
	}
	startGuestAt(t, sock, t.TempDir())
	waitAgent(t, d, "vm1")
	code, ap := d.do(t, "GET", "/instances/vm1/active_persona", nil)
	if p, _ := ap["persona"].(map[string]any); code != 200 || p == nil || p["name"] != "base" {
		t.Fatalf("active persona after connect: %d %v", code, ap)
	}
	code, audit := d.do(t, "GET", "/audit?type=default_activation", nil)
	if evs, _ := audit["events"].([]any); code != 200 || len(evs) != 1 {
		t.Fatalf("default activation audit: %d %v", code, audit)
	}
}

// TestLibvirtDomainsListed: with libvirt's built-in test driver, the daemon
// lists its domain, resolves it by UUID, and says why its agent cannot be
// reached.
func TestLibvirtDomainsListed(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "hostd.sock")
	d := startArgs(t, sock, "--data-dir", t.TempDir(), "--unix-socket", sock, "--libvirt-uri", "test:///default")
	var inst map[string]any
	for i := 0; i < 500; i++ {
		var code int
		code, inst = d.do(t, "GET", "/instances/test", nil)
		if code == 200 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if inst["source"] != "libvirt" || inst["state"] != "running" || !strings.Contains(fmt.Sprint(inst["reason"]), "instance enable") {
		t.Fatalf("libvirt test domain: %v", inst)
	}
	uuid, _ := inst["uuid"].(string)
	if code, byUUID := d.do(t, "GET", "/instances/"+uuid, nil); code != 200 || byUUID["id"] != "test" {
		t.Fatalf("GET by UUID %q: %d %v", uuid, code, byUUID)
	}
	code, p := d.do(t, "POST", "/instances/test/exec", map[string]any{"command": "true"})
	if code != 503 || !strings.Contains(fmt.Sprint(p["detail"]), "channel") {
		t.Fatalf("exec on a domain without the channel: %d %v", code, p)
	}
}
