package agents

import (
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// TestAuditNotHeldByLongActivation: a guest's audit batch waits for an
// activation of its instance in flight only briefly; while an activation
// holds the instance for a long time, the guest's audit events are still
// stored.
func TestAuditNotHeldByLongActivation(t *testing.T) {
	h := newHost(t, nil)
	h.connectGuest("vm")
	a, err := h.m.agent("vm")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.acquire(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer a.release()
	before := len(h.audit(store.AuditQuery{Instance: "vm", Type: protocol.AuditExec}))
	if _, err := h.m.Exec(ctxTimeout(t, 10*time.Second), "vm", protocol.Exec{Command: "true"}, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(h.audit(store.AuditQuery{Instance: "vm", Type: protocol.AuditExec})) == before {
		if time.Now().After(deadline) {
			t.Fatal("the exec's audit event was not stored while an activation held the instance")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
