package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// TestInstancesWatch: instances --watch prints the list once, then again
// only when it changes (one JSON line each with -o json), and ends with
// exit 0 when interrupted.
func TestInstancesWatch(t *testing.T) {
	d := startDaemons(t, true)
	d.createHardened(t)

	w := d.startWatch(t, "-o", "json", "instances", "--watch", "--interval", "50ms")
	prev := ""
	next := func() []apitypes.Instance {
		t.Helper()
		var l struct{ Instances []apitypes.Instance }
		line := w.next(&l)
		if line == prev {
			t.Fatalf("watch printed an unchanged list again: %s", prev)
		}
		prev = line
		return l.Instances
	}
	// The guest may still be connecting: read until it is.
	for l := next(); len(l) != 1 || l[0].Agent.State != "connected"; l = next() {
	}
	want(t, d.ctl(t, "activate", "vm1", "hardened"), 0, "activate")
	for l := next(); len(l) != 1 || l[0].ActivePersona == nil || *l[0].ActivePersona != "hardened"; l = next() {
	}
	w.interrupt()
}

// TestActiveWatch: active --watch shows the instance's persona again when
// it changes.
func TestActiveWatch(t *testing.T) {
	d := startDaemons(t, true)
	d.createHardened(t)
	w := d.startWatch(t, "-o", "json", "active", "vm1", "-w", "--interval", "50ms")
	next := func() apitypes.ActivePersona {
		t.Helper()
		var ap apitypes.ActivePersona
		w.next(&ap)
		return ap
	}
	if ap := next(); ap.Persona != nil {
		t.Fatalf("first: %+v", ap)
	}
	want(t, d.ctl(t, "activate", "vm1", "hardened"), 0, "activate")
	for ap := next(); ap.Persona == nil || ap.Persona.Name != "hardened" || ap.Stale; ap = next() {
	}
	w.interrupt()
}

// watcher is a running vmpersonactl --watch with JSON output.
type watcher struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines *bufio.Scanner
}

// startWatch runs vmpersonactl with args against the daemon; it is ended
// when the test ends at the latest.
func (d *daemons) startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bins.ctl, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VMPERSONA_SOCKET=" + d.sock}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return &watcher{t: t, cmd: cmd, lines: bufio.NewScanner(out)}
}

// next decodes the next line printed into v and returns the line.
func (w *watcher) next(v any) string {
	w.t.Helper()
	if !w.lines.Scan() {
		w.t.Fatalf("watch ended: %v", w.lines.Err())
	}
	if err := json.Unmarshal(w.lines.Bytes(), v); err != nil {
		w.t.Fatalf("watch line %q: %v", w.lines.Bytes(), err)
	}
	return w.lines.Text()
}

// interrupt sends SIGINT: watching must end with exit 0.
func (w *watcher) interrupt() {
	w.t.Helper()
	w.cmd.Process.Signal(syscall.SIGINT)
	if err := w.cmd.Wait(); err != nil {
		w.t.Errorf("watch interrupted: %v, want exit 0", err)
	}
}
