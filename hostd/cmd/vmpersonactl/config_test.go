package main

import (
	"os"
	"strings"
	"testing"
)

// TestConfigContexts: the configuration file's contexts choose the daemon;
// --context and VMPERSONA_CONTEXT pick one, flags and environment win, an
// unknown context is a usage error naming those that exist.
func TestConfigContexts(t *testing.T) {
	d := startDaemons(t, false)
	dir := t.TempDir()
	cfg := writeFile(t, dir, "config.yaml", `current-context: here
contexts:
  here:
    socket: `+d.sock+`
  nowhere:
    socket: `+dir+`/none.sock
`)
	env := []string{"VMPERSONA_CONFIG=" + cfg}
	r := runCtl(t, env, "", "persona", "list", "-o", "json")
	want(t, r, 0, "current context")
	if !strings.Contains(r.stdout, `"personas"`) {
		t.Errorf("current context: %s", r)
	}
	r = runCtl(t, env, "", "--context", "nowhere", "persona", "list")
	if r.code != exitGeneral || !strings.Contains(r.stderr, dir+"/none.sock") {
		t.Errorf("--context nowhere: %s", r)
	}
	r = runCtl(t, append(env, "VMPERSONA_CONTEXT=nowhere"), "", "persona", "list")
	if r.code != exitGeneral || !strings.Contains(r.stderr, dir+"/none.sock") {
		t.Errorf("VMPERSONA_CONTEXT=nowhere: %s", r)
	}
	// A flag wins over the context.
	r = runCtl(t, env, "", "--context", "nowhere", "--socket", d.sock, "persona", "list")
	want(t, r, 0, "--socket beside --context")
	r = runCtl(t, env, "", "--context", "elsewhere", "persona", "list")
	if r.code != exitUsage || !strings.Contains(r.stderr, `no context "elsewhere"`) || !strings.Contains(r.stderr, "here, nowhere") {
		t.Errorf("unknown context: %s", r)
	}
	// XDG_CONFIG_HOME locates the file too.
	xdg := t.TempDir()
	writeFile(t, mkdir(t, xdg+"/vmpersona"), "config.yaml", "current-context: nowhere\ncontexts:\n  nowhere:\n    socket: "+dir+"/none.sock\n")
	r = runCtl(t, []string{"XDG_CONFIG_HOME=" + xdg}, "", "persona", "list")
	if r.code != exitGeneral || !strings.Contains(r.stderr, dir+"/none.sock") {
		t.Errorf("XDG_CONFIG_HOME: %s", r)
	}
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
