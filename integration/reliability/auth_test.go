package reliability

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

var (
	peerClientOnce sync.Once
	peerClientBin  string
	peerClientErr  error
)

func peerClient(t *testing.T) string {
	t.Helper()
	peerClientOnce.Do(func() {
		peerClientBin = filepath.Join(binDir, "peerclient")
		// The host programs' compile flags (scripts/build-programs): the
		// standard library is then already in the build cache from make
		// build, and only the client itself compiles (with plain flags, a
		// cold cache compiled some 180 packages of it again).
		out, err := exec.Command("go", "build", "-trimpath", "-buildmode=pie", "-gcflags=all=-dwarf=false", "-o", peerClientBin, "./testdata/peerclient").CombinedOutput()
		if err != nil {
			peerClientErr = fmt.Errorf("building peerclient: %v\n%s", err, out)
		}
		os.Chmod(peerClientBin, 0o755)
	})
	if peerClientErr != nil {
		t.Fatal(peerClientErr)
	}
	return peerClientBin
}

// authRoute is one endpoint with concrete parameters and the role it needs
// (0 none, 1 viewer, 2 operator, 3 admin).
type authRoute struct {
	method, path string
	role         int
}

var authRoutes = []authRoute{
	{"GET", "/healthz", 0}, {"GET", "/readyz", 0}, {"GET", "/metrics", 0}, {"GET", "/openapi.json", 0},
	{"GET", "/personas", 1}, {"GET", "/personas/authp", 1},
	{"GET", "/instances", 1}, {"GET", "/instances/vm1", 1}, {"GET", "/instances/vm1/active_persona", 1},
	{"POST", "/instances/vm1/personas/authp/activate", 2}, {"POST", "/instances/vm1/deactivate", 2}, {"POST", "/instances/vm1/exec", 2},
	{"POST", "/personas", 3}, {"PUT", "/personas/authp", 3}, {"DELETE", "/personas/authp", 3},
	{"POST", "/instances/vm1/enable", 3}, {"GET", "/audit", 3},
	{"PUT", "/instances/vm1/files?path=/dev/null", 3}, {"GET", "/instances/vm1/files?path=/etc/hostname", 3},
}

const (
	authAdmin    = "adm-tok-00000000000000000001"
	authOperator = "opr-tok-00000000000000000002"
	authViewer   = "vwr-tok-00000000000000000003"
)

// TestAuthorisationMatrix runs every route against the real daemon as every
// kind of caller: over TCP with no token, a bad token, and the three roles;
// over the unix socket as root (admin by peer credentials) and as nobody
// (uid 65534, not in group vmpersona: no role without a token). Every
// refusal is a 401 or 403 problem document and is audited.
func TestAuthorisationMatrix(t *testing.T) {
	parallel(t)
	if os.Geteuid() != 0 {
		t.Skip("the unix peer cases need root: the test runs a client as nobody via SysProcAttr.Credential")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody on this machine: ", err)
	}
	if g, err := user.LookupGroup("vmpersona"); err == nil {
		gids, _ := nobody.GroupIds()
		for _, id := range gids {
			if id == g.Gid {
				t.Skip("nobody is in group vmpersona here; the non-member case cannot run")
			}
		}
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	client := peerClient(t)

	dir := testproc.ShortDir(t)
	os.Chmod(dir, 0o755)
	tokFile := filepath.Join(dir, "tokens.csv")
	os.WriteFile(tokFile, []byte(authAdmin+",alice,1,admin\n"+authOperator+",oscar,2,operator\n"+authViewer+",victor,3,viewer\n"), 0o600)

	// The token file is refused at start when its group or others can
	// read it (as ssh refuses such a key).
	for _, mode := range []os.FileMode{0o644, 0o640} {
		os.Chmod(tokFile, mode)
		out, err := exec.Command(hostdBin, "--data-dir", filepath.Join(dir, "d0"), "--unix-socket", filepath.Join(dir, "s0.sock"),
			"--libvirt-uri", "", "--token-auth-file", tokFile).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "readable") || !strings.Contains(string(out), "chmod 600") {
			t.Fatalf("a token file of mode %04o was accepted: %v %s", mode, err, out)
		}
	}
	os.Chmod(tokFile, 0o600)

	addr := testproc.FreeTCPAddr(t)
	gdir := filepath.Join(dir, "guest")
	_, ep := startGuest(t, gdir)
	sock := filepath.Join(dir, "hostd.sock")
	h := startHostd(t, filepath.Join(dir, "data"), sock, "--listen", addr, "--token-auth-file", tokFile, "--instance=vm1="+ep)
	h.waitConnected(t, "vm1")

	// The daemon's socket is 0660: nobody cannot even connect.
	run := func(lines []string) []string {
		t.Helper()
		cmd := exec.Command(client, sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("peerclient as nobody: %v", err)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	if got := run([]string{"GET /personas"}); !strings.Contains(got[0], "permission denied") {
		t.Fatalf("nobody connected to the 0660 socket: %v", got)
	}
	// Relax the socket (as a careless admin might) to test the peer
	// credential check itself: it must still refuse nobody.
	os.Chmod(sock, 0o666)

	tcp := unixlessClient(addr)
	failuresBefore := len(h.auditEvents(t, "type=auth_failure"))
	refusals := 0
	type caller struct {
		name  string
		token string
		role  int // -1: no valid identity (401)
	}
	tcpCallers := []caller{{"tcp no token", "", -1}, {"tcp bad token", "not-a-token", -1},
		{"tcp viewer", authViewer, 1}, {"tcp operator", authOperator, 2}, {"tcp admin", authAdmin, 3}}
	check := func(who string, r authRoute, role int, status string) {
		t.Helper()
		code, _ := strconv.Atoi(status)
		switch {
		case r.role == 0 || role >= r.role:
			if code == 401 || code == 403 || code == 0 {
				t.Errorf("%s %s %s: %s, want access", who, r.method, r.path, status)
			}
		case role < 0:
			refusals++
			if code != 401 {
				t.Errorf("%s %s %s: %s, want 401", who, r.method, r.path, status)
			}
		default:
			refusals++
			if code != 403 {
				t.Errorf("%s %s %s: %s, want 403", who, r.method, r.path, status)
			}
		}
	}
	for _, c := range tcpCallers {
		for _, r := range authRoutes {
			hdr := []string{}
			if c.token != "" {
				hdr = []string{"Authorization", "Bearer " + c.token}
			}
			body := any(nil)
			if r.method == "POST" || r.method == "PUT" {
				body = `{"name":"authp","command":"true"}`
			}
			a, err := call(tcp, r.method, r.path, body, hdr...)
			if err != nil {
				t.Fatal(err)
			}
			check(c.name, r, c.role, strconv.Itoa(a.status))
			if a.status == 401 || a.status == 403 {
				checkProblem(t, c.name+" "+r.path, a)
			}
		}
	}
	// Unix socket as root: admin without a token; a bad token still loses.
	for _, r := range authRoutes {
		a, err := call(h.client, r.method, r.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		check("unix root", r, 3, strconv.Itoa(a.status))
		a, _ = call(h.client, r.method, r.path, nil, "Authorization", "Bearer wrong")
		check("unix root bad token", r, -1, strconv.Itoa(a.status))
	}
	// Unix socket as nobody: no role from the socket; a token still works.
	var lines []string
	for _, r := range authRoutes {
		lines = append(lines, r.method+" "+r.path, r.method+" "+r.path+" "+authViewer)
	}
	got := run(lines)
	if len(got) != len(lines) {
		t.Fatalf("peerclient answered %d lines for %d requests: %v", len(got), len(lines), got)
	}
	for i, r := range authRoutes {
		check("unix nobody", r, -1, got[2*i])
		check("unix nobody viewer token", r, 1, got[2*i+1])
	}
	// Every refusal is counted; the audit log keeps a sample bounded per
	// source (tcp 127.0.0.1, unix root, unix nobody) and says how many it
	// left out.
	if n := h.authFailuresCounted(t); n != refusals {
		t.Errorf("%d refusals but vmpersona_auth_failures_total is %d", refusals, n)
	}
	after := h.auditEvents(t, "type=auth_failure")
	if n := len(after) - failuresBefore; n < 3 || n > refusals {
		t.Errorf("%d refusals from 3 sources but %d auth_failure events audited", refusals, n)
	}
	sawNobody := false
	for _, ev := range after {
		if ev["actor"] == "nobody" {
			sawNobody = true
		}
	}
	if !sawNobody {
		t.Errorf("no auth_failure event names the unix peer nobody")
	}
	t.Logf("%d routes × 9 callers; %d refusals, each counted, %d audited", len(authRoutes), refusals, len(after)-failuresBefore)
}
