package fleet

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testetcd"
)

// vm is a guest for a fleet host: its agent endpoint and labels.
type vm struct {
	ep     string
	labels map[string]string
}

// reconcilingHostd is a host daemon as vmpersona-hostd wires it in fleet
// mode: fleet backend, agent manager with the reconciler as its converger,
// the reconciler told of catalogue changes, REST API over real HTTP.
type reconcilingHostd struct {
	*hostd
	rec *reconcile.Reconciler

	mu     sync.Mutex
	labels map[string]map[string]string
}

func newReconcilingHostd(t *testing.T, name string, endpoints []string, hostLabels map[string]string, vms map[string]vm) *reconcilingHostd {
	t.Helper()
	h := &host{t: t, dir: t.TempDir(), cfg: Config{Endpoints: endpoints, Host: name, Prefix: "/test/", HostLabels: hostLabels}}
	h.open()
	m := metrics.New()
	// The periodic pass is out of the way: changes must arrive by the
	// catalogue's watch.
	rec := reconcile.New(reconcile.Config{Store: h.st, Metrics: m, Logger: testLogger(), DefaultPersona: true,
		Host: name, HostLabels: hostLabels, ReassessInterval: time.Hour})
	rh := &reconcilingHostd{rec: rec, labels: map[string]map[string]string{}}
	rec.SetFacts(func(inst string) reconcile.Facts {
		rh.mu.Lock()
		defer rh.mu.Unlock()
		return reconcile.Facts{Labels: rh.labels[inst]}
	})
	h.b.SetOnChange(rec.Reassess)
	rh.hostd = serveHostd(t, h, m, rec)
	for n, v := range vms {
		rh.add(n, v)
	}
	return rh
}

func (h *reconcilingHostd) add(name string, v vm) {
	h.t.Helper()
	h.mu.Lock()
	h.labels[name] = v.labels
	h.mu.Unlock()
	h.addInstance(name, v.ep)
}

// active is the persona the guest confirms ("" for none).
func (h *reconcilingHostd) active(name string) string {
	st, err := h.mgr.Get(name)
	if err != nil || st.Active == nil {
		return ""
	}
	return st.Active.Persona.Name
}

func (h *reconcilingHostd) waitActive(name, persona string) {
	h.t.Helper()
	waitFor(h.t, name+" on "+h.b.Host()+" to run "+persona, func() bool { return h.active(name) == persona })
}

func (h *reconcilingHostd) desired(name string) store.DesiredState {
	h.t.Helper()
	d, err := h.st.GetDesired(name)
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

// An assignment by label written through one host activates on the matching
// VMs of every host; priorities decide overlaps; an explicit activation or
// deactivation of one VM still wins for it; a new VM gets its assignment
// before the fleet default.
func TestAssignmentsDriveDesiredStateOnEveryHost(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	web := map[string]string{"role": "web"}
	db := map[string]string{"role": "db"}
	a := newReconcilingHostd(t, "a", c.Endpoints(), map[string]string{"rack": "1"}, map[string]vm{
		"web1": {startGuest(t), web}, "db1": {startGuest(t), db}, "web9": {startGuest(t), web},
	})
	b := newReconcilingHostd(t, "b", c.Endpoints(), map[string]string{"rack": "2"}, map[string]vm{
		"web2": {startGuest(t), web}, "web3": {startGuest(t), web},
	})
	a.waitConnected()
	b.waitConnected()
	for _, p := range []string{"hardened", "staging", "fallback"} {
		if r := a.do("POST", "/personas", persona(p, p == "fallback")); r.status != http.StatusCreated {
			t.Fatalf("create %s: %d %v", p, r.status, r.body)
		}
	}
	waitFor(t, "b's copy of the personas", func() bool { _, err := b.st.GetPersona("staging"); return err == nil })
	// Deliberate choices on single VMs, before any assignment.
	for _, x := range []struct {
		h       *reconcilingHostd
		vm, act string
	}{{b, "web3", "/instances/web3/personas/staging/activate"}, {a, "web9", "/instances/web9/deactivate"}} {
		waitFor(t, x.vm+" connected", func() bool { st, err := x.h.mgr.Get(x.vm); return err == nil && st.State == agents.StateConnected })
		if r := x.h.do("POST", x.act, map[string]any{}); r.status != http.StatusOK {
			t.Fatalf("%s: %d %v", x.act, r.status, r.body)
		}
	}
	// The VMs were first seen before the default existed, or explicitly set:
	// none of them runs the default.
	for _, n := range []string{"web1", "db1"} {
		waitFor(t, n+" connected", func() bool { st, err := a.mgr.Get(n); return err == nil && st.State == agents.StateConnected })
	}

	// By label, through host a: every host's web VMs.
	if r := a.do("PUT", "/assignments/web", webAssignment("hardened", 10)); r.status != http.StatusCreated {
		t.Fatalf("assignment: %d %v", r.status, r.body)
	}
	a.waitActive("web1", "hardened")
	b.waitActive("web2", "hardened")
	if d := b.desired("web2"); d.SetBy != store.DesiredByAssignment || d.Actor != "assignment:web" {
		t.Fatalf("web2's desired state: %+v", d)
	}
	// By host label, lower priority: rack 1's VMs not selected by "web".
	rack1 := map[string]any{"persona": "staging", "priority": 5, "selector": map[string]any{"host_labels": map[string]string{"rack": "1"}}}
	if r := b.do("PUT", "/assignments/rack1", rack1); r.status != http.StatusCreated {
		t.Fatalf("assignment rack1: %d %v", r.status, r.body)
	}
	a.waitActive("db1", "staging")
	// Raising its priority over "web" takes web1 too, not web2 (rack 2).
	rack1["priority"] = 20
	if r := b.do("PUT", "/assignments/rack1", rack1); r.status != http.StatusOK {
		t.Fatalf("assignment rack1 priority 20: %d %v", r.status, r.body)
	}
	a.waitActive("web1", "staging")

	// A new VM on b: its assignment, not the fleet default.
	b.add("web4", vm{startGuest(t), web})
	b.waitActive("web4", "hardened")
	// A new VM no assignment selects: the fleet default.
	b.add("other", vm{startGuest(t), nil})
	b.waitActive("other", "fallback")

	// Settled: the explicit choices held through all of it.
	b.waitActive("web2", "hardened")
	if got := b.active("web3"); got != "staging" {
		t.Errorf("web3 was activated explicitly with staging; an assignment replaced it with %q", got)
	}
	if got := a.active("web9"); got != "" {
		t.Errorf("web9 was deactivated explicitly; an assignment activated %q", got)
	}
	if got := b.active("web2"); got != "hardened" {
		t.Errorf("web2 (rack 2) runs %q, want hardened", got)
	}
	// Deleting an assignment deactivates nothing.
	if r := a.do("DELETE", "/assignments/rack1", nil); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %v", r.status, r.body)
	}
	waitFor(t, "a's copy without rack1", func() bool { _, err := a.st.GetAssignment("rack1"); return err != nil })
	// A later change that moves web1 is a pass by which db1 was looked at
	// again (a pass looks at every instance).
	probe := map[string]any{"persona": "hardened", "priority": 100, "selector": map[string]any{"instances": []string{"web1"}}}
	if r := a.do("PUT", "/assignments/probe", probe); r.status != http.StatusCreated {
		t.Fatalf("probe: %d %v", r.status, r.body)
	}
	a.waitActive("web1", "hardened")
	if got := a.active("db1"); got != "staging" {
		t.Errorf("db1 runs %q after its assignment was deleted, want staging kept", got)
	}
}

// A fleet rollout asked through one host is run by every host on its own
// instances, with the limits asked; each host's progress is readable from
// any host.
func TestFleetRolloutRunsOnEveryHost(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	web := map[string]string{"role": "web"}
	a := newReconcilingHostd(t, "a", c.Endpoints(), nil, map[string]vm{"a1": {startGuest(t), web}, "a2": {startGuest(t), web}})
	b := newReconcilingHostd(t, "b", c.Endpoints(), nil, map[string]vm{"b1": {startGuest(t), web}})
	a.waitConnected()
	b.waitConnected()
	if r := a.do("POST", "/personas", persona("web", false)); r.status != http.StatusCreated {
		t.Fatalf("create: %d %v", r.status, r.body)
	}
	if r := a.do("PUT", "/assignments/web", webAssignment("web", 1)); r.status != http.StatusCreated {
		t.Fatalf("assignment: %d %v", r.status, r.body)
	}
	for _, x := range []struct {
		h  *reconcilingHostd
		vm string
	}{{a, "a1"}, {a, "a2"}, {b, "b1"}} {
		x.h.waitActive(x.vm, "web")
	}
	upd := persona("web", false)
	upd.RestrictedCommands = []string{"rm"}
	if r := a.do("PUT", "/personas/web", upd); r.status != http.StatusOK {
		t.Fatalf("update: %d %v", r.status, r.body)
	}
	// Not rolled out by itself: revision 1 everywhere.
	if r := b.do("GET", "/fleet/rollouts/web", nil); r.status != http.StatusNotFound {
		t.Fatalf("GET before any fleet rollout: %d %v", r.status, r.body)
	}
	if r := b.do("POST", "/fleet/rollouts/web", map[string]any{"max_parallel": -1}); r.status != http.StatusUnprocessableEntity && r.status != http.StatusBadRequest || r.body["field"] != "max_parallel" {
		t.Fatalf("bad max_parallel: %d %v", r.status, r.body)
	}
	r := b.do("POST", "/fleet/rollouts/web", map[string]any{"max_parallel": 2})
	if r.status != http.StatusAccepted || r.body["revision"] != 2.0 {
		t.Fatalf("fleet rollout: %d %v", r.status, r.body)
	}
	id := r.body["id"]
	var st map[string]any
	waitFor(t, "both hosts done", func() bool {
		st = a.do("GET", "/fleet/rollouts/web", nil).body
		hosts, _ := st["hosts"].([]any)
		if len(hosts) != 2 {
			return false
		}
		for _, h := range hosts {
			if h.(map[string]any)["state"] != "done" {
				return false
			}
		}
		return true
	})
	if st["rollout"].(map[string]any)["id"] != id {
		t.Fatalf("rollout id %v, want %v", st["rollout"], id)
	}
	want := map[string]float64{"a": 2, "b": 1}
	for _, h := range st["hosts"].([]any) {
		hm := h.(map[string]any)
		sum := hm["summary"].(map[string]any)
		if sum["activated"] != want[hm["host"].(string)] || sum["total"] != want[hm["host"].(string)] || sum["failed"] != 0.0 {
			t.Errorf("host %v: summary %v", hm["host"], sum)
		}
		res, _ := hm["results"].([]any)
		if len(res) != int(want[hm["host"].(string)]) {
			t.Errorf("host %v: results %v", hm["host"], res)
		}
		for _, x := range res {
			if xm := x.(map[string]any); xm["result"] != "activated" || xm["duration_ms"] == 0.0 {
				t.Errorf("host %v: result %v (want activated, with its duration)", hm["host"], xm)
			}
		}
	}
	for _, x := range []struct {
		h  *reconcilingHostd
		vm string
	}{{a, "a1"}, {a, "a2"}, {b, "b1"}} {
		st, _ := x.h.mgr.Get(x.vm)
		if st.Active == nil || st.Active.Revision != 2 {
			t.Errorf("%s runs %+v after the fleet rollout, want web revision 2", x.vm, st.Active)
		}
	}

	// Host a reads the whole catalogue again (as after a restart or a
	// compaction) and sees the request once more: it reported it done, so
	// it does not run it twice. A second rollout, run by the same worker
	// after it, is the point by which the first was looked at.
	if err := a.b.fullLoad(context.Background()); err != nil {
		t.Fatal(err)
	}
	r = a.do("POST", "/fleet/rollouts/web", map[string]any{})
	if r.status != http.StatusAccepted {
		t.Fatalf("second fleet rollout: %d %v", r.status, r.body)
	}
	id2 := r.body["id"]
	waitFor(t, "host a done with the second rollout", func() bool {
		st := a.do("GET", "/fleet/rollouts/web", nil).body
		if st["rollout"].(map[string]any)["id"] != id2 {
			return false
		}
		for _, h := range st["hosts"].([]any) {
			if hm := h.(map[string]any); hm["host"] == "a" && hm["state"] == "done" {
				return true
			}
		}
		return false
	})
	evs, err := a.st.QueryAudit(store.AuditQuery{Type: store.AuditRolloutStarted, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 {
		t.Errorf("host a started %d rollouts, want 2 (the first, not again after the re-read, and the second)", len(evs))
	}
}
