package reconcile

import (
	"testing"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// On one host (assignments in Badger): selectors by name and by UUID, a
// persona update that does not move the instance (rollout rules), an
// assignment whose persona is gone skipped for the next one, and the
// assignments applied on connect to an instance that was away.
func TestAssignmentsOnOneHost(t *testing.T) {
	h := newHost(t)
	h.createPersona(web())
	h.createPersona(protocol.Persona{Name: "db"})
	h.r.SetFacts(func(inst string) Facts {
		if inst == "vm2" {
			return Facts{UUID: "4DCB3F9A-0F0B-4C39-9E9B-3B0F1F2B1C11"}
		}
		return Facts{}
	})
	g1, g2 := newGuest(t), newGuest(t)
	h.add("vm1", g1)
	h.add("vm2", g2)
	h.waitConnected("vm1")
	h.waitConnected("vm2")
	put := func(a assignment.Assignment) {
		t.Helper()
		if _, _, err := h.st.PutAssignment(a, 0, ""); err != nil {
			t.Fatal(err)
		}
		h.r.Reassess()
	}
	active := func(name string) string { st, _ := h.m.Get(name); return activeName(st) }
	put(assignment.Assignment{Name: "by-name", Persona: "web", Selector: assignment.Selector{Instances: []string{"vm1"}}})
	put(assignment.Assignment{Name: "by-uuid", Persona: "db", Priority: 1, Selector: assignment.Selector{UUIDs: []string{"4dcb3f9a0f0b4c399e9b3b0f1f2b1c11"}}})
	waitFor(t, "vm1 on web", func() bool { return active("vm1") == "web" })
	waitFor(t, "vm2 on db", func() bool { return active("vm2") == "db" })

	// A new revision of web: vm1 keeps revision 1 (drifted) until a rollout.
	p := web()
	p.EnvironmentVariables = map[string]string{"APP_ENV": "prod"}
	h.updatePersona(p)
	h.r.Reassess()
	put(assignment.Assignment{Name: "noise", Persona: "web", Priority: -5, Selector: assignment.Selector{Instances: []string{"vm9"}}})
	waitFor(t, "a pass after the update", func() bool { return h.status("vm1").Sync == apitypes.SyncDrifted })
	if d := h.desired("vm1"); d.Revision != 1 || d.SetBy != store.DesiredByAssignment {
		t.Fatalf("vm1's desired state after the persona's update: %+v", d)
	}

	// vm2 goes away; meanwhile a higher assignment names a persona that is
	// then deleted, and another one names web: on reconnect vm2 runs web.
	g2.Kill()
	waitFor(t, "vm2 away", func() bool { st, _ := h.m.Get("vm2"); return st.State != agents.StateConnected })
	h.createPersona(protocol.Persona{Name: "gone"})
	put(assignment.Assignment{Name: "top", Persona: "gone", Priority: 100, Selector: assignment.Selector{UUIDs: []string{"4dcb3f9a-0f0b-4c39-9e9b-3b0f1f2b1c11"}}})
	if err := h.st.DeletePersona("gone", 0, true); err != nil {
		t.Fatal(err)
	}
	put(assignment.Assignment{Name: "second", Persona: "web", Priority: 50, Selector: assignment.Selector{Instances: []string{"vm2"}}})
	waitFor(t, "vm2's desired state to be web", func() bool { return h.desired("vm2").PersonaName() == "web" })
	g2.Start()
	waitFor(t, "vm2 on web after reconnecting", func() bool { return active("vm2") == "web" })
}
