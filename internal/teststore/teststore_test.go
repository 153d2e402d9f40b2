package teststore

import (
	"testing"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Audit reads past the store's default page: every matching event.
func TestAuditReadsEveryEvent(t *testing.T) {
	st := Open(t, t.TempDir())
	defer st.Close()
	if p := CreatePersona(t, st, protocol.Persona{Name: "web"}); p.Revision != 1 {
		t.Fatalf("created %+v, want revision 1", p)
	}
	const n = 150
	evs := make([]store.AuditEvent, n)
	for i := range evs {
		evs[i] = store.AuditEvent{Instance: "vm", Type: protocol.AuditDenial, Command: "rm"}
	}
	if _, err := st.AppendAudit(evs...); err != nil {
		t.Fatal(err)
	}
	if got := Audit(t, st, store.AuditQuery{Instance: "vm"}); len(got) != n {
		t.Fatalf("Audit = %d events, want %d", len(got), n)
	}
}
