package reliability

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

const deniedDetail = "Error: Command not allowed in current persona"

// bypassEnv is a real hostd with a real guestd (vm1), the persona active.
type bypassEnv struct {
	h   *hostd
	dir string // scratch directory, visible to the guest (same machine)
}

func newBypassEnv(t *testing.T, persona map[string]any) *bypassEnv {
	t.Helper()
	dir := testproc.ShortDir(t)
	_, ep := startGuest(t, filepath.Join(dir, "guest"))
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), "--instance=vm1="+ep)
	h.waitConnected(t, "vm1")
	h.must(t, "POST", "/personas", persona, 201)
	h.must(t, "POST", "/instances/vm1/personas/"+persona["name"].(string)+"/activate", nil, 200)
	return &bypassEnv{h: h, dir: dir}
}

func (e *bypassEnv) exec(t *testing.T, req map[string]any) (answer, map[string]any) {
	t.Helper()
	if _, ok := req["timeout_seconds"]; !ok {
		req["timeout_seconds"] = 10
	}
	a, err := call(e.h.client, "POST", "/instances/vm1/exec", req)
	if err != nil {
		t.Fatalf("exec %v: %v", req, err)
	}
	var m map[string]any
	json.Unmarshal(a.body, &m)
	return a, m
}

// victim creates a file that a successful rm would delete.
func (e *bypassEnv) victim(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// TestRestrictionBypass tries every way we know to run a restricted command
// (rm) through the real guest daemon. Each is refused with 403 and the
// seed's message before any process starts (the victim file survives), or
// is documented here as outside what a routing table can decide, with the
// reason and the answer (allowlist mode).
func TestRestrictionBypass(t *testing.T) {
	parallel(t)
	e := newBypassEnv(t, map[string]any{
		"name":                "locked",
		"restricted_commands": []string{"rm", "/usr/bin/shred"},
		"command_overrides": map[string]string{
			"deploy":  "#!/bin/sh\nrm -f \"$@\"",
			"cleanup": "/usr/bin/rm",
		},
	})
	// Links to rm in the scratch directory (same filesystem as /usr/bin, so
	// a hard link is possible: checked below).
	sym := filepath.Join(e.dir, "innocent")
	if err := os.Symlink("/usr/bin/rm", sym); err != nil {
		t.Fatal(err)
	}
	symChain := filepath.Join(e.dir, "innocent2")
	os.Symlink(sym, symChain)
	hard := filepath.Join(e.dir, "hardrm")
	if err := os.Link("/usr/bin/rm", hard); err != nil {
		t.Fatalf("hard link to /usr/bin/rm: %v (the scratch directory must be on the same filesystem)", err)
	}
	pathDir := filepath.Join(e.dir, "evilpath")
	os.MkdirAll(pathDir, 0o755)
	os.Symlink("/usr/bin/rm", filepath.Join(pathDir, "tidy"))

	refused := []struct {
		name string
		req  map[string]any
	}{
		{"name", map[string]any{"command": "rm"}},
		{"absolute /usr/bin/rm", map[string]any{"command": "/usr/bin/rm"}},
		{"absolute /bin/rm (merged /usr alias)", map[string]any{"command": "/bin/rm"}},
		{"dot segments", map[string]any{"command": "/usr/bin/../bin/./rm"}},
		{"double slashes", map[string]any{"command": "//usr//bin//rm"}},
		{"relative ./rm from /usr/bin", map[string]any{"command": "./rm", "cwd": "/usr/bin"}},
		{"relative ../bin/rm from /usr/lib", map[string]any{"command": "../bin/rm", "cwd": "/usr/lib"}},
		{"relative bin/rm from /", map[string]any{"command": "bin/rm", "cwd": "/"}},
		{"symlink", map[string]any{"command": sym}},
		{"symlink chain", map[string]any{"command": symChain}},
		{"relative symlink", map[string]any{"command": "./innocent", "cwd": e.dir}},
		{"hard link", map[string]any{"command": hard}},
		{"restricted by path, named by name", map[string]any{"command": "shred"}},
		{"restricted by path, via /bin", map[string]any{"command": "/bin/shred"}},
		{"override target restricted, named directly", map[string]any{"command": "/usr/bin/rm", "args": []string{"-f"}}},
		{"stream mode", map[string]any{"command": "rm"}},
	}
	for _, c := range refused {
		v := e.victim(t, "victim-"+strings.NewReplacer("/", "_", " ", "_").Replace(c.name))
		c.req["args"] = append(anyStrings(c.req["args"]), v)
		path := "/instances/vm1/exec"
		if c.name == "stream mode" {
			path += "?stream=true"
		}
		a, err := call(e.h.client, "POST", path, withTimeout(c.req))
		if err != nil {
			t.Fatal(err)
		}
		if a.status != 403 || !strings.Contains(string(a.body), deniedDetail) {
			t.Errorf("%s: %v answered %d, want 403 %q: %.300s", c.name, c.req, a.status, deniedDetail, a.body)
		} else {
			checkProblem(t, c.name, a)
		}
		if !exists(v) {
			t.Errorf("%s: the victim file was deleted", c.name)
		}
	}

	// A request may not set PATH at all: refused (400) naming the
	// variable, for a restricted command and for "tidy", which exists only
	// in the request's PATH (as a link to rm).
	for _, cmd := range []string{"rm", "tidy"} {
		v := e.victim(t, "victim-path-"+cmd)
		a, _ := e.exec(t, map[string]any{"command": cmd, "args": []string{v}, "env": map[string]string{"PATH": pathDir}})
		if a.status != 400 || !strings.Contains(string(a.body), "PATH") || !exists(v) {
			t.Errorf("%s with PATH in the request's env: %d (want 400 naming PATH), victim exists %v: %.300s", cmd, a.status, exists(v), a.body)
		}
	}

	var v string
	var a answer

	// Different case: this filesystem is case-sensitive, so RM and
	// /USR/BIN/RM name nothing and are refused as not found (422), before
	// anything runs. On a case-insensitive filesystem the path would resolve
	// to rm's inode, which the device+inode match refuses; no such
	// filesystem can be mounted on these machines (no mount privilege in CI
	// containers), so that case is documented, not run.
	for _, cmd := range []string{"RM", "/USR/BIN/RM", "/usr/bin/Rm"} {
		v := e.victim(t, "victim-case")
		a, _ := e.exec(t, map[string]any{"command": cmd, "args": []string{v}})
		if (a.status != 422 && a.status != 403) || !exists(v) {
			t.Errorf("case variant %s: %d, victim exists %v: %.300s", cmd, a.status, exists(v), a.body)
		}
	}

	// Arguments are passed as argv, never through a shell: no injection.
	marker := filepath.Join(e.dir, "injected")
	inj := []string{"; rm -rf " + marker, "$(touch " + marker + ")", "`touch " + marker + "`", "&& touch " + marker, "\n touch " + marker, "--version"}
	a, m := e.exec(t, map[string]any{"command": "echo", "args": inj})
	if a.status != 200 || exists(marker) {
		t.Errorf("argument injection: %d, marker created %v: %.300s", a.status, exists(marker), a.body)
	} else if out, _ := m["stdout"].(string); out != strings.Join(inj, " ")+"\n" {
		t.Errorf("arguments were altered: %q", out)
	}
	// A command string with options in it is one (nonexistent) name.
	v = e.victim(t, "victim-optname")
	a, _ = e.exec(t, map[string]any{"command": "rm -rf " + v})
	if a.status != 403 && a.status != 422 || !exists(v) {
		t.Errorf("command \"rm -rf …\": %d, victim exists %v", a.status, exists(v))
	}
	// Options injected into an allowed command's arguments are that
	// command's business: find -delete is find, not rm. Documented below.

	// What a command runs in turn: with kernel enforcement (the default
	// where the guest kernel has Landlock, as this machine's has) the
	// kernel refuses rm to everything an exec starts.
	//  1. sh -c 'rm …' (sh is not restricted): sh runs, its rm does not.
	v = e.victim(t, "victim-shc")
	a, _ = e.exec(t, map[string]any{"command": "sh", "args": []string{"-c", "rm " + v}})
	if a.status != 200 || !exists(v) {
		t.Errorf("sh -c rm: %d, victim exists %v (the kernel refuses rm to sh's children)", a.status, exists(v))
	}
	//  2. An override that calls the restricted command runs, and its rm is
	//     refused the same way.
	v = e.victim(t, "victim-override")
	a, m = e.exec(t, map[string]any{"command": "deploy", "args": []string{v}})
	if a.status != 200 || m["route"] != "override" || !exists(v) {
		t.Errorf("override calling rm: %d route %v, victim exists %v (the kernel refuses rm to overrides too)", a.status, m["route"], exists(v))
	}
	//  3. A copy of rm under another name is another file (no shared inode):
	//     only the allowlist, or deny_exec_writable for a copy in a writable
	//     place, catches it.
	cp := filepath.Join(e.dir, "myrm")
	if out, err := exec.Command("cp", "/usr/bin/rm", cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	v = e.victim(t, "victim-copy")
	a, _ = e.exec(t, map[string]any{"command": cp, "args": []string{v}})
	if a.status != 200 || exists(v) {
		t.Errorf("a copy of rm: %d, victim exists %v (documented as out of scope in restrict mode)", a.status, exists(v))
	}

	// Audit: every refusal above was recorded by the guest as a denial.
	checkGuestAudit(t, e.h, "vm1", filepath.Join(e.dir, "guest", "state"))
	denials := e.h.auditEvents(t, "instance=vm1&type=denial")
	if len(denials) < len(refused) {
		t.Errorf("%d denial events audited, want at least %d", len(denials), len(refused))
	}
}

// TestAllowlistClosesBypasses shows allowlist mode refusing what restrict
// mode cannot decide: sh -c, a copy of rm, a symlink to an allowed command
// under another name is still that command.
func TestAllowlistClosesBypasses(t *testing.T) {
	parallel(t)
	e := newBypassEnv(t, map[string]any{
		"name":              "allow",
		"allowed_commands":  []string{"echo", "ls"},
		"command_overrides": map[string]string{"deploy": "#!/bin/sh\necho deploying \"$@\""},
	})
	cp := filepath.Join(e.dir, "myrm")
	if out, err := exec.Command("cp", "/usr/bin/rm", cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	named := filepath.Join(e.dir, "echo") // a file merely named like an allowed command
	if out, err := exec.Command("cp", "/usr/bin/rm", named).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	for _, c := range []map[string]any{
		{"command": "sh", "args": []string{"-c", "rm VICTIM"}},
		{"command": "rm", "args": []string{"VICTIM"}},
		{"command": cp, "args": []string{"VICTIM"}},
		{"command": named, "args": []string{"VICTIM"}},
		{"command": "./echo", "cwd": e.dir, "args": []string{"VICTIM"}},
		{"command": "env", "args": []string{"rm", "VICTIM"}},
		{"command": "busybox", "args": []string{"rm", "VICTIM"}},
	} {
		v := e.victim(t, "victim")
		for i, a := range c["args"].([]string) {
			if a == "VICTIM" {
				c["args"].([]string)[i] = v
			}
		}
		a, _ := e.exec(t, c)
		if !exists(v) {
			t.Errorf("allowlist: %v deleted the victim (%d)", c, a.status)
		}
		if a.status != 403 && a.status != 422 {
			t.Errorf("allowlist: %v answered %d, want 403 (or 422 for a command the guest lacks): %.300s", c, a.status, a.body)
		}
	}
	for _, c := range []map[string]any{{"command": "echo", "args": []string{"ok"}}, {"command": "/bin/ls"}, {"command": "deploy"}} {
		if a, _ := e.exec(t, c); a.status != 200 {
			t.Errorf("allowlist: allowed %v answered %d: %.300s", c, a.status, a.body)
		}
	}
}

func anyStrings(v any) []string {
	s, _ := v.([]string)
	return append([]string(nil), s...)
}

func withTimeout(req map[string]any) map[string]any {
	if _, ok := req["timeout_seconds"]; !ok {
		req["timeout_seconds"] = 10
	}
	return req
}
