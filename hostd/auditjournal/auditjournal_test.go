package auditjournal

import (
	"testing"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// entry is one journal entry as the follower sent it. The journal itself
// (journald's socket) does not run on these machines, so entries are
// recorded instead; the store is a real Badger store.
type entry struct {
	msg    string
	pri    journal.Priority
	fields map[string]string
}

// TestFollowerCopiesNewEvents: events stored after the follower starts
// reach the journal once each, in order, with their members as fields;
// events from before are not replayed.
func TestFollowerCopiesNewEvents(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.AppendAudit(store.AuditEvent{Type: protocol.AuditPersonaCreated, Persona: "old", Source: store.SourceHost}); err != nil {
		t.Fatal(err)
	}
	var got []entry
	f := New(st, func(msg string, pri journal.Priority, fields map[string]string) error {
		got = append(got, entry{msg, pri, fields})
		return nil
	}, nil)
	if _, err := st.AppendAudit(
		store.AuditEvent{Type: protocol.AuditActivation, Instance: "vm1", Persona: "hardened", Actor: "alice", Result: "activated", Source: store.SourceHost},
		store.AuditEvent{Type: protocol.AuditDenial, Instance: "vm1", Persona: "hardened", Command: "rm", Route: "denied"},
	); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Step(); err != nil || n != 2 {
		t.Fatalf("Step = %d, %v; want the 2 new events", n, err)
	}
	if len(got) != 2 {
		t.Fatalf("sent %d entries", len(got))
	}
	a, d := got[0], got[1]
	if a.fields["VMPERSONA_TYPE"] != "activation" || a.fields["VMPERSONA_INSTANCE"] != "vm1" || a.fields["VMPERSONA_ACTOR"] != "alice" ||
		a.fields["VMPERSONA_RESULT"] != "activated" || a.fields["VMPERSONA_AUDIT_ID"] == "" || a.fields["SYSLOG_IDENTIFIER"] != "vmpersona-hostd" ||
		a.pri != journal.PriInfo || a.msg != `audit activation instance="vm1" persona="hardened" actor="alice" result="activated"` {
		t.Errorf("activation entry: %+v", a)
	}
	if d.fields["VMPERSONA_COMMAND"] != "rm" || d.fields["VMPERSONA_SOURCE"] != "host" || d.pri != journal.PriNotice {
		t.Errorf("denial entry: %+v", d)
	}
	if _, ok := a.fields["VMPERSONA_COMMAND"]; ok {
		t.Errorf("an empty member became a field: %v", a.fields)
	}
	if n, err := f.Step(); err != nil || n != 0 {
		t.Errorf("second Step = %d, %v; want nothing new", n, err)
	}
	if _, err := st.AppendAudit(store.AuditEvent{Type: protocol.AuditPersonaDeleted, Persona: "hardened", Source: store.SourceHost}); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Step(); err != nil || n != 1 || got[2].fields["VMPERSONA_TYPE"] != "persona_deleted" {
		t.Errorf("third Step = %d, %v, %+v", n, err, got[len(got)-1])
	}
}
