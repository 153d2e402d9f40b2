// Package teststore makes the host store's calls for tests, failing the
// test on an error, so that the tests of the agent manager, the reconciler
// and others read as what they check.
package teststore

import (
	"log/slog"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Open opens the real Badger store in dir, logging nowhere.
func Open(t testing.TB, dir string) *store.Store {
	t.Helper()
	st, err := store.Open(dir, store.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Audit is every event matching q, up to the largest page.
func Audit(t testing.TB, st *store.Store, q store.AuditQuery) []store.AuditEvent {
	t.Helper()
	q.Limit = store.MaxAuditLimit
	evs, err := st.QueryAudit(q)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// CreatePersona creates p and returns it as stored.
func CreatePersona(t testing.TB, st *store.Store, p protocol.Persona) protocol.Persona {
	t.Helper()
	out, err := st.CreatePersona(p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
