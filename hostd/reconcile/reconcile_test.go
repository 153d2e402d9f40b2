package reconcile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

func web() protocol.Persona {
	return protocol.Persona{
		Name:                 "web",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging"},
		PostActivationScript: "#!/bin/sh\ntest -n \"$APP_ENV\"",
		RestrictedCommands:   []string{"rm"},
	}
}

// TestUpdateWhileActiveShowsDrift: a persona updated while an instance runs
// it is not re-applied by itself; the instance shows drifted until a rollout
// moves it, and the rollout then enforces the change.
func TestUpdateWhileActiveShowsDrift(t *testing.T) {
	h := newHost(t)
	h.connectGuest("vm")
	p := h.createPersona(web())
	h.activate("vm", p, "alice")
	st, _ := h.m.Get("vm")
	if s := h.status("vm"); s.Sync != apitypes.SyncInSync || s.Desired.Persona == nil || *s.Desired.Persona != "web" || s.Desired.Revision != p.Revision ||
		!s.Active.Confirmed || s.Active.BootID == "" || s.Active.BootID != st.BootID || s.Active.ActivationID != st.Active.ActivationID {
		t.Fatalf("status after activation: %+v", s)
	}

	up := web()
	up.RestrictedCommands = append(up.RestrictedCommands, "cat")
	p2 := h.updatePersona(up)
	s := h.status("vm")
	if s.Sync != apitypes.SyncDrifted || s.LatestRevision != p2.Revision || s.Desired.Revision != p.Revision || s.Active.Revision != p.Revision {
		t.Fatalf("status after an update: %+v, want drifted at desired revision %d, latest %d", s, p.Revision, p2.Revision)
	}
	if !strings.Contains(s.SyncReason, "rollout") {
		t.Errorf("drift reason %q does not say what moves it", s.SyncReason)
	}
	// The update did not reach the guest by itself.
	if res, err := h.exec("vm", "cat", "/dev/null"); err != nil || res.ExitCode != 0 {
		t.Fatalf("cat before the rollout: %+v, %v", res, err)
	}

	sum, err := h.r.Rollout(ctxTimeout(t, 60*time.Second), "web", RolloutRequest{}, "alice", nil)
	if err != nil || sum.Total != 1 || sum.Activated != 1 {
		t.Fatalf("rollout: %+v, %v", sum, err)
	}
	if s := h.status("vm"); s.Sync != apitypes.SyncInSync || s.Active.Revision != p2.Revision || s.Desired.Revision != p2.Revision {
		t.Errorf("status after the rollout: %+v", s)
	}
	var pe *protocol.Error
	if _, err := h.exec("vm", "cat", "/dev/null"); !errors.As(err, &pe) || pe.Code != protocol.CodeDenied {
		t.Errorf("cat after the rollout: %v, want denied", err)
	}
}

// TestDeliberateDeactivationSurvives: a new instance gets the default
// persona; once deliberately deactivated it stays bare across host
// restarts and a guest daemon killed with SIGKILL.
func TestDeliberateDeactivationSurvives(t *testing.T) {
	h := newHost(t)
	def := h.createPersona(protocol.Persona{Name: "baseline", DefaultPersona: true, RestrictedCommands: []string{"shutdown"}})
	g := newGuest(t)
	guests := map[string]*guest{"vm": g}
	h.add("vm", g)

	// A new instance gets the default persona, before it is published.
	st := h.waitConnected("vm")
	if activeName(st) != "baseline" {
		t.Fatalf("a new instance holds %q, want the default persona", activeName(st))
	}
	if d := h.desired("vm"); d.PersonaName() != "baseline" || d.Revision != def.Revision || d.SetBy != store.DesiredByDefault {
		t.Errorf("desired state of a new instance: %+v", d)
	}
	if evs := h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditDefaultActivation}); len(evs) != 1 || evs[0].Result != protocol.ResultActivated {
		t.Errorf("default_activation events: %+v", evs)
	}

	if res, err := h.r.Deactivate(ctxTimeout(t, 30*time.Second), "vm", "alice", 0); err != nil || res.Result != protocol.ResultDeactivated {
		t.Fatalf("deactivate: %+v, %v", res, err)
	}
	if d := h.desired("vm"); d.Persona != nil || d.SetBy != store.DesiredByDeactivation || d.Actor != "alice" {
		t.Errorf("desired state after deactivation: %+v", d)
	}

	check := func(when string) {
		t.Helper()
		st := h.waitConnected("vm")
		if st.Active != nil {
			t.Errorf("%s: the guest holds %q, want none (deliberately deactivated)", when, st.Active.Persona.Name)
		}
		if s := h.status("vm"); s.Sync != apitypes.SyncInSync {
			t.Errorf("%s: status %+v, want in_sync", when, s)
		}
	}
	h.restart(guests)
	check("after a host restart")
	h.restart(guests)
	check("after a second host restart")

	g.Kill()
	g.Start()
	// The manager reconnects on its own.
	waitFor(t, "a new session", func() bool {
		st, _ := h.m.Get("vm")
		return st.State == agents.StateConnected && st.ConnectedAt.After(time.Now().Add(-time.Minute)) && st.BootID != ""
	})
	check("after the guest daemon was killed")
	if evs := h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditDefaultActivation}); len(evs) != 1 {
		t.Errorf("default_activation events: %d, want only the first", len(evs))
	}
	if evs := h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditReconciled}); len(evs) != 0 {
		t.Errorf("reconciled events of a guest in step: %+v", evs)
	}
}

// TestConvergeOnReconnect: a guest that lost its persona (state wiped, a
// new image) gets its desired one back on reconnect, at the desired
// revision, even after the persona moved on; a guest holding it is left
// alone (no script runs, nothing audited).
func TestConvergeOnReconnect(t *testing.T) {
	h := newHost(t)
	g := h.connectGuest("vm")
	pp := web()
	pp.PreActivationScript = "#!/bin/sh\necho run >> " + g.Dir + "/runs"
	p := h.createPersona(pp)
	h.activate("vm", p, "alice")
	up := pp
	up.RestrictedCommands = []string{"rm", "cat"}
	h.updatePersona(up)

	// Reconnects with the guest in step: nothing runs again.
	h.restart(map[string]*guest{"vm": g})
	h.waitConnected("vm")
	if evs := h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditReconciled}); len(evs) != 0 {
		t.Errorf("reconciled events of a guest in step: %+v", evs)
	}

	// The guest loses its state: the desired revision comes back.
	g.Kill()
	if err := removeAll(g.StateDir); err != nil {
		t.Fatal(err)
	}
	g.Start()
	var st agents.AgentStatus
	waitFor(t, "the desired persona back", func() bool {
		st, _ = h.m.Get("vm")
		return st.State == agents.StateConnected && st.Active != nil
	})
	if st.Active.Persona.Name != "web" || st.Active.Revision != p.Revision {
		t.Errorf("after reconnect the guest holds %+v, want web revision %d", st.Active, p.Revision)
	}
	if s := h.status("vm"); s.Sync != apitypes.SyncDrifted {
		t.Errorf("status: %+v, want drifted (revision %d desired, persona moved on)", s, p.Revision)
	}
	// The record's correction (the guest lost its persona) and the
	// convergence are both audited, once.
	var converged []store.AuditEvent
	for _, ev := range h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditReconciled}) {
		if ev.Result == protocol.ResultActivated {
			converged = append(converged, ev)
		}
	}
	if len(converged) != 1 || !strings.Contains(converged[0].Detail, "no persona") {
		t.Errorf("convergence events: %+v, want one activation", converged)
	}
	// The pre-activation script ran for the activation and for the
	// convergence of the wiped guest, never for a reconnect in step.
	runs, err := os.ReadFile(g.Dir + "/runs")
	if err != nil || strings.Count(string(runs), "run") != 2 {
		t.Errorf("script runs: %q, %v; want 2", runs, err)
	}
}

// TestFailedConvergence: a desired persona whose script fails shows failed
// with the script's output; the guest keeps what it had.
func TestFailedConvergence(t *testing.T) {
	h := newHost(t)
	h.connectGuest("vm")
	bad := web()
	bad.Name = "bad"
	bad.PostActivationScript = "#!/bin/sh\necho cannot start the service >&2\nexit 7"
	p := h.createPersona(bad)
	res, err := h.r.Activate(ctxTimeout(t, 30*time.Second), "vm", p, "alice", ReasonAPI, 0)
	if err != nil || res.Result != protocol.ResultRolledBack {
		t.Fatalf("activate: %+v, %v", res, err)
	}
	s := h.status("vm")
	if s.Sync != apitypes.SyncFailed || s.SyncScript == nil || s.SyncScript.ExitCode != 7 || !strings.Contains(s.SyncScript.Stderr, "cannot start") ||
		s.Active.Persona != nil || !strings.Contains(s.SyncReason, "rolled_back") {
		t.Errorf("status after a failed activation: %+v", s)
	}
}

// TestActivationIsOneHostWrite: an activation through the reconciler writes
// its desired state, the instance record and the request's audit event in
// one commit, after the guest answered; a failed one writes the desired
// state (with the request's event) on its own, so it stays pending; both
// are there after a restart.
func TestActivationIsOneHostWrite(t *testing.T) {
	h := &host{t: t, dir: t.TempDir(), noDefault: true, writes: &countingStore{}}
	h.start()
	t.Cleanup(h.stop)
	g := h.connectGuest("vm")
	ok := h.createPersona(web())
	bad := web()
	bad.Name = "bad"
	bad.PreActivationScript = "#!/bin/sh\nexit 3"
	bad = h.createPersona(bad)
	h.writes.counts()

	req := store.AuditEvent{Type: store.AuditActivationRequested, Actor: "alice", Detail: "one write"}
	res, err := h.r.Activate(ctxTimeout(t, 30*time.Second), "vm", ok, "alice", ReasonAPI, 0, req)
	if err != nil || res.Result != protocol.ResultActivated {
		t.Fatalf("activate: %+v, %v", res, err)
	}
	if n := h.writes.counts(); n != [3]int{0, 0, 1} {
		t.Errorf("writes of an activation (desired alone, record alone, both): %v, want one of both", n)
	}
	if d := h.desired("vm"); d.PersonaName() != ok.Name || d.SetBy != store.DesiredByActivation || d.Actor != "alice" {
		t.Errorf("desired state after the activation: %+v", d)
	}

	req.Detail = "failed"
	res, err = h.r.Activate(ctxTimeout(t, 30*time.Second), "vm", bad, "bob", ReasonAPI, 0, req)
	if err != nil || res.Result != protocol.ResultAborted {
		t.Fatalf("activate bad: %+v, %v", res, err)
	}
	if n := h.writes.counts(); n != [3]int{1, 0, 0} {
		t.Errorf("writes of an aborted activation: %v, want the desired state alone", n)
	}
	if s := h.status("vm"); s.Sync != apitypes.SyncFailed || s.Desired.Persona == nil || *s.Desired.Persona != "bad" {
		t.Errorf("status after an aborted activation: %+v", s)
	}
	for _, detail := range []string{"one write", "failed"} {
		n := 0
		for _, ev := range h.audit(store.AuditQuery{Instance: "vm", Type: store.AuditActivationRequested}) {
			if ev.Detail == detail {
				n++
			}
		}
		if n != 1 {
			t.Errorf("request event %q stored %d times, want once", detail, n)
		}
	}

	h.restart(map[string]*guest{"vm": g})
	if d := h.desired("vm"); d.PersonaName() != "bad" || d.Actor != "bob" {
		t.Errorf("desired state after a restart: %+v", d)
	}
}

// TestNewInstanceWithoutDefault: with no default persona, a new instance
// is recorded as desiring none, and a default persona defined later does
// not reach it.
func TestNewInstanceWithoutDefault(t *testing.T) {
	h := newHost(t)
	g := h.connectGuest("vm")
	if d := h.desired("vm"); d.Persona != nil {
		t.Fatalf("desired: %+v", d)
	}
	h.createPersona(protocol.Persona{Name: "baseline", DefaultPersona: true})
	h.restart(map[string]*guest{"vm": g})
	if st := h.waitConnected("vm"); st.Active != nil {
		t.Errorf("an instance seen before got %q", st.Active.Persona.Name)
	}
}

func removeAll(dir string) error { return os.RemoveAll(dir) }

// TestStatusShowsActivationUnderWay: while an activation runs (its desired
// state is written only with its outcome), the instance's status already
// shows the persona it is being moved to, pending; then in sync.
func TestStatusShowsActivationUnderWay(t *testing.T) {
	h := newHost(t)
	h.connectGuest("vm")
	first := h.createPersona(web())
	h.activate("vm", first, "alice")
	release := filepath.Join(t.TempDir(), "release")
	t.Cleanup(func() { os.WriteFile(release, nil, 0o644) })
	slow := h.createPersona(protocol.Persona{Name: "slow",
		PreActivationScript: "#!/bin/sh\nwhile [ ! -e " + release + " ]; do sleep 0.02; done"})
	done := make(chan error, 1)
	go func() {
		res, err := h.r.Activate(ctxTimeout(t, 60*time.Second), "vm", slow, "bob", ReasonAPI, 0)
		if err == nil && res.Result != protocol.ResultActivated {
			err = errors.New("result " + res.Result)
		}
		done <- err
	}()
	var s Status
	testproc.WaitWithin(t, 20*time.Second, "the status to show the activation under way", func() bool {
		s = h.status("vm")
		return s.Desired.Persona != nil && *s.Desired.Persona == "slow"
	})
	if s.Sync != apitypes.SyncPending || s.Desired.Actor != "bob" || s.Desired.Revision != slow.Revision ||
		s.Active.Persona == nil || *s.Active.Persona != "web" || !strings.Contains(s.SyncReason, "applying") {
		t.Errorf("status during the activation: %+v", s)
	}
	// Not yet in the store: it is written with the outcome.
	if d := h.desired("vm"); d.PersonaName() != "web" {
		t.Errorf("stored desired state during the activation: %+v", d)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := h.status("vm"); s.Sync != apitypes.SyncInSync || *s.Desired.Persona != "slow" || *s.Active.Persona != "slow" {
		t.Errorf("status after the activation: %+v", s)
	}
}
