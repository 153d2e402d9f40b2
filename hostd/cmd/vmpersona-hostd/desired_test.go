package main

import (
	"path/filepath"
	"testing"
	"time"
)

// activePersonaName answers the persona GET /instances/{id}/active_persona
// names, "" for none.
func activePersonaName(t *testing.T, d *hostdProc, id string) string {
	t.Helper()
	code, ap := d.do(t, "GET", "/instances/"+id+"/active_persona", nil)
	if code != 200 {
		t.Fatalf("active persona of %s: %d %v", id, code, ap)
	}
	p, _ := ap["persona"].(map[string]any)
	if p == nil {
		return ""
	}
	name, _ := p["name"].(string)
	return name
}

// TestDeactivationSurvivesRestarts: with a default persona defined, a
// deliberately deactivated instance stays bare when the host daemon
// restarts and when its guest daemon is killed with SIGKILL and started
// again; the default persona is imposed once, on the new instance.
func TestDeactivationSurvivesRestarts(t *testing.T) {
	dataDir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	guestState := t.TempDir()
	d := start(t, dataDir, "--instance", "vm1=unix:"+sock)
	if code, body := d.do(t, "POST", "/personas", map[string]any{"name": "base", "default_persona": true}); code != 201 {
		t.Fatalf("create: %d %v", code, body)
	}
	_, stopGuest := startGuestAt(t, sock, guestState)
	waitAgent(t, d, "vm1")
	if name := activePersonaName(t, d, "vm1"); name != "base" {
		t.Fatalf("a new instance holds %q, want the default persona", name)
	}
	if code, body := d.do(t, "POST", "/instances/vm1/deactivate", nil); code != 200 {
		t.Fatalf("deactivate: %d %v", code, body)
	}

	d.Kill()
	d = start(t, dataDir, "--instance", "vm1=unix:"+sock)
	waitAgent(t, d, "vm1")
	if name := activePersonaName(t, d, "vm1"); name != "" {
		t.Errorf("after a host restart the instance holds %q, want none", name)
	}

	_, before := d.do(t, "GET", "/instances/vm1", nil)
	stopGuest()
	startGuestAt(t, sock, guestState)
	waitReconnected(t, d, "vm1", before)
	if name := activePersonaName(t, d, "vm1"); name != "" {
		t.Errorf("after the guest daemon was killed the instance holds %q, want none", name)
	}
	code, inst := d.do(t, "GET", "/instances/vm1", nil)
	if code != 200 || inst["sync"] != "in_sync" {
		t.Errorf("instance: %d %v, want sync in_sync", code, inst)
	}
	if desired, _ := inst["desired"].(map[string]any); desired == nil || desired["persona"] != nil {
		t.Errorf("desired: %v, want persona null", inst["desired"])
	}
	code, audit := d.do(t, "GET", "/audit?type=default_activation", nil)
	if evs, _ := audit["events"].([]any); code != 200 || len(evs) != 1 {
		t.Errorf("default activation audit: %d %v, want one event", code, audit)
	}
}

// waitReconnected waits for a session newer than the one in before.
func waitReconnected(t *testing.T, d *hostdProc, id string, before map[string]any) {
	t.Helper()
	old, _ := before["agent"].(map[string]any)
	for i := 0; i < 1500; i++ {
		_, inst := d.do(t, "GET", "/instances/"+id, nil)
		if a, _ := inst["agent"].(map[string]any); a != nil && a["state"] == "connected" && a["connected_at"] != old["connected_at"] {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("agent of %s never reconnected: %s", id, d.stderr)
}
