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
	dir := t.TempDir()
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, dir, "p.json", hardenedJSON)), 0, "create")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.ctl, "-o", "json", "instances", "--watch", "--interval", "50ms")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VMPERSONA_SOCKET=" + d.sock}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	prev := ""
	next := func() []apitypes.Instance {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("watch ended: %v", lines.Err())
		}
		if lines.Text() == prev {
			t.Fatalf("watch printed an unchanged list again: %s", prev)
		}
		prev = lines.Text()
		var l struct{ Instances []apitypes.Instance }
		if err := json.Unmarshal(lines.Bytes(), &l); err != nil {
			t.Fatalf("watch line %q: %v", lines.Bytes(), err)
		}
		return l.Instances
	}
	// The guest may still be connecting: read until it is.
	for l := next(); len(l) != 1 || l[0].Agent.State != "connected"; l = next() {
	}
	want(t, d.ctl(t, "activate", "vm1", "hardened"), 0, "activate")
	for l := next(); len(l) != 1 || l[0].ActivePersona == nil || *l[0].ActivePersona != "hardened"; l = next() {
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch interrupted: %v, want exit 0", err)
	}
}

// TestActiveWatch: active --watch shows the instance's persona again when
// it changes.
func TestActiveWatch(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, dir, "p.json", hardenedJSON)), 0, "create")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.ctl, "-o", "json", "active", "vm1", "-w", "--interval", "50ms")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "VMPERSONA_SOCKET=" + d.sock}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	next := func() apitypes.ActivePersona {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("watch ended: %v", lines.Err())
		}
		var ap apitypes.ActivePersona
		if err := json.Unmarshal(lines.Bytes(), &ap); err != nil {
			t.Fatalf("watch line %q: %v", lines.Bytes(), err)
		}
		return ap
	}
	if ap := next(); ap.Persona != nil {
		t.Fatalf("first: %+v", ap)
	}
	want(t, d.ctl(t, "activate", "vm1", "hardened"), 0, "activate")
	for ap := next(); ap.Persona == nil || ap.Persona.Name != "hardened" || ap.Stale; ap = next() {
	}
	cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch interrupted: %v, want exit 0", err)
	}
}
