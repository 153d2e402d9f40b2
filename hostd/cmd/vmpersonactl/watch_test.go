package main

import (
	"testing"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// TestInstancesWatch: instances --watch prints the list once, then again
// only when it changes (one JSON line each with -o json), and ends with
// exit 0 when interrupted.
func TestInstancesWatch(t *testing.T) {
	d := startDaemons(t, true)
	d.createHardened(t)

	w := d.startLines(t, "-o", "json", "instances", "--watch", "--interval", "50ms")
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
	if code := w.interrupt(); code != 0 {
		t.Errorf("watch interrupted: exit %d, want 0", code)
	}
}

// TestActiveWatch: active --watch shows the instance's persona again when
// it changes.
func TestActiveWatch(t *testing.T) {
	d := startDaemons(t, true)
	d.createHardened(t)
	w := d.startLines(t, "-o", "json", "active", "vm1", "-w", "--interval", "50ms")
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
	if code := w.interrupt(); code != 0 {
		t.Errorf("watch interrupted: exit %d, want 0", code)
	}
}
