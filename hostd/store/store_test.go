package store

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openAt(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openTemp(t testing.TB) *Store {
	t.Helper()
	return openAt(t, t.TempDir(), Options{})
}

func persona(name string) protocol.Persona {
	return protocol.Persona{
		Name:                 name,
		EnvironmentVariables: map[string]string{"APP_ENV": "staging"},
		PreActivationScript:  "#!/bin/sh\necho preparing",
		CommandOverrides:     map[string]string{"deploy": "#!/bin/sh\necho dry-run", "ls": "/usr/local/bin/safe-ls"},
		RestrictedCommands:   []string{"rm", "shutdown"},
	}
}

func mustCreate(t testing.TB, s *Store, p protocol.Persona) protocol.Persona {
	t.Helper()
	out, err := s.CreatePersona(p)
	if err != nil {
		t.Fatalf("CreatePersona(%s): %v", p.Name, err)
	}
	return out
}

func TestPersonaCRUD(t *testing.T) {
	s := openTemp(t)

	if _, err := s.GetPersona("hardened"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPersona before create = %v, want ErrNotFound", err)
	}
	in := persona("hardened")
	in.Revision = 99 // server-kept: ignored
	in.CreatedAt = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	before := time.Now()
	created := mustCreate(t, s, in)
	if created.Revision != 1 {
		t.Errorf("created revision = %d, want 1", created.Revision)
	}
	if created.CreatedAt.Before(before.Add(-time.Second)) || created.CreatedAt.Location() != time.UTC || !created.UpdatedAt.Equal(created.CreatedAt) {
		t.Errorf("created times = %v / %v, want now in UTC, equal", created.CreatedAt, created.UpdatedAt)
	}
	got, err := s.GetPersona("hardened")
	if err != nil {
		t.Fatal(err)
	}
	if !samePersona(got, created) {
		t.Errorf("GetPersona = %+v, want %+v", got, created)
	}
	if got.AllowedCommands == nil {
		t.Error("GetPersona did not normalise allowed_commands to an empty list")
	}

	if _, err := s.CreatePersona(persona("hardened")); !errors.Is(err, ErrExists) {
		t.Errorf("second CreatePersona = %v, want ErrExists", err)
	}

	upd := persona("hardened")
	upd.EnvironmentVariables = map[string]string{"APP_ENV": "prod"}
	updated, err := s.UpdatePersona(upd, 0)
	if err != nil {
		t.Fatal(err)
	}
	if updated.Revision != 2 || !updated.CreatedAt.Equal(created.CreatedAt) || updated.UpdatedAt.Before(created.UpdatedAt) {
		t.Errorf("updated = rev %d created %v updated %v; want rev 2, created kept, updated later", updated.Revision, updated.CreatedAt, updated.UpdatedAt)
	}
	got, _ = s.GetPersona("hardened")
	if got.EnvironmentVariables["APP_ENV"] != "prod" || got.Revision != 2 {
		t.Errorf("after update GetPersona = %+v", got)
	}

	if _, err := s.UpdatePersona(persona("missing"), 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdatePersona(missing) = %v, want ErrNotFound", err)
	}
	if err := s.DeletePersona("missing", 0, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeletePersona(missing) = %v, want ErrNotFound", err)
	}
	if err := s.DeletePersona("hardened", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPersona("hardened"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetPersona after delete = %v, want ErrNotFound", err)
	}
	// The name is free again and starts over at revision 1.
	if p := mustCreate(t, s, persona("hardened")); p.Revision != 1 {
		t.Errorf("recreated revision = %d, want 1", p.Revision)
	}
}

func samePersona(a, b protocol.Persona) bool {
	if !a.CreatedAt.Equal(b.CreatedAt) || !a.UpdatedAt.Equal(b.UpdatedAt) {
		return false
	}
	a.CreatedAt, a.UpdatedAt = b.CreatedAt, b.UpdatedAt
	return reflect.DeepEqual(a, b)
}

func TestCreateValidates(t *testing.T) {
	s := openTemp(t)
	p := persona("ok")
	p.RestrictedCommands = []string{"rm", ""}
	_, err := s.CreatePersona(p)
	var ve *validate.Error
	if !errors.As(err, &ve) || ve.Field != "restricted_commands[1]" || !errors.Is(err, validate.ErrInvalid) {
		t.Fatalf("CreatePersona(invalid) = %v, want *validate.Error on restricted_commands[1]", err)
	}
	if _, err := s.UpdatePersona(protocol.Persona{Name: "Bad"}, 0); !errors.Is(err, validate.ErrInvalid) {
		t.Fatalf("UpdatePersona(bad name) = %v, want validate.ErrInvalid", err)
	}
	if list, _ := s.ListPersonas(); len(list) != 0 {
		t.Fatalf("invalid persona was stored: %+v", list)
	}
}

func TestListPersonasSorted(t *testing.T) {
	s := openTemp(t)
	list, err := s.ListPersonas()
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("ListPersonas on empty store = %#v, %v; want empty non-nil", list, err)
	}
	for _, n := range []string{"zeta", "alpha", "m.1", "m-1", "m_1", "0"} {
		mustCreate(t, s, persona(n))
	}
	list, err = s.ListPersonas()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list {
		names = append(names, p.Name)
	}
	want := []string{"0", "alpha", "m-1", "m.1", "m_1", "zeta"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("ListPersonas names = %v, want %v", names, want)
	}
}

func TestIfMatch(t *testing.T) {
	s := openTemp(t)
	mustCreate(t, s, persona("p"))
	if _, err := s.UpdatePersona(persona("p"), 2); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("UpdatePersona(ifMatch 2 at rev 1) = %v, want ErrPreconditionFailed", err)
	}
	if p, err := s.UpdatePersona(persona("p"), 1); err != nil || p.Revision != 2 {
		t.Fatalf("UpdatePersona(ifMatch 1) = rev %d, %v; want rev 2", p.Revision, err)
	}
	if _, err := s.UpdatePersona(persona("p"), 1); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("stale UpdatePersona = %v, want ErrPreconditionFailed", err)
	}
	if p, _ := s.GetPersona("p"); p.Revision != 2 {
		t.Fatalf("a refused update changed the revision to %d", p.Revision)
	}
	if err := s.DeletePersona("p", 1, false); !errors.Is(err, ErrPreconditionFailed) {
		t.Fatalf("DeletePersona(stale ifMatch) = %v, want ErrPreconditionFailed", err)
	}
	if err := s.DeletePersona("p", 2, false); err != nil {
		t.Fatalf("DeletePersona(ifMatch 2) = %v", err)
	}
}

// Concurrent If-Match updates from the same revision: exactly one wins.
func TestIfMatchConcurrent(t *testing.T) {
	s := openTemp(t)
	mustCreate(t, s, persona("p"))
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			p := persona("p")
			p.EnvironmentVariables = map[string]string{"WRITER": fmt.Sprint(i)}
			_, errs[i] = s.UpdatePersona(p, 1)
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrPreconditionFailed):
			t.Errorf("unexpected error %v", err)
		}
	}
	if p, _ := s.GetPersona("p"); wins != 1 || p.Revision != 2 {
		t.Fatalf("%d writers won, revision %d; want exactly 1 and revision 2", wins, p.Revision)
	}
}

func TestDefaultPersona(t *testing.T) {
	s := openTemp(t)
	if _, ok, err := s.DefaultPersona(); ok || err != nil {
		t.Fatalf("DefaultPersona on empty store = %v, %v", ok, err)
	}
	a := persona("a")
	a.DefaultPersona = true
	mustCreate(t, s, a)
	if p, ok, err := s.DefaultPersona(); !ok || err != nil || p.Name != "a" {
		t.Fatalf("DefaultPersona = %s, %v, %v; want a", p.Name, ok, err)
	}

	b := persona("b")
	b.DefaultPersona = true
	_, err := s.CreatePersona(b)
	var dc *DefaultConflictError
	if !errors.As(err, &dc) || dc.Current != "a" || !errors.Is(err, ErrDefaultConflict) {
		t.Fatalf("second default CreatePersona = %v, want *DefaultConflictError{Current: a}", err)
	}
	if _, err := s.GetPersona("b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused default persona was stored: %v", err)
	}

	b.DefaultPersona = false
	mustCreate(t, s, b)
	b.DefaultPersona = true
	if _, err := s.UpdatePersona(b, 0); !errors.As(err, &dc) || dc.Current != "a" {
		t.Fatalf("UpdatePersona making b default = %v, want conflict naming a", err)
	}
	// a stays default across an update that keeps the flag.
	if _, err := s.UpdatePersona(a, 0); err != nil {
		t.Fatal(err)
	}
	// a gives up the default: b may take it.
	a.DefaultPersona = false
	if _, err := s.UpdatePersona(a, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.DefaultPersona(); ok {
		t.Fatal("DefaultPersona still set after a gave it up")
	}
	if _, err := s.UpdatePersona(b, 0); err != nil {
		t.Fatalf("UpdatePersona making b default = %v", err)
	}
	if p, ok, _ := s.DefaultPersona(); !ok || p.Name != "b" {
		t.Fatalf("DefaultPersona = %s, %v; want b", p.Name, ok)
	}
	// Deleting the default frees the claim.
	if err := s.DeletePersona("b", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.DefaultPersona(); ok {
		t.Fatal("DefaultPersona still set after deleting it")
	}
	c := persona("c")
	c.DefaultPersona = true
	mustCreate(t, s, c)
}

// Concurrent creates of two defaults: exactly one wins.
func TestDefaultConcurrent(t *testing.T) {
	s := openTemp(t)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			p := persona(fmt.Sprintf("d%d", i))
			p.DefaultPersona = true
			_, errs[i] = s.CreatePersona(p)
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		if err == nil {
			wins++
		} else if !errors.Is(err, ErrDefaultConflict) {
			t.Errorf("unexpected error %v", err)
		}
	}
	list, _ := s.ListPersonas()
	defaults := 0
	for _, p := range list {
		if p.DefaultPersona {
			defaults++
		}
	}
	if wins != 1 || defaults != 1 {
		t.Fatalf("%d creates won, %d defaults stored; want 1 and 1", wins, defaults)
	}
}

func TestDeleteInUse(t *testing.T) {
	s := openTemp(t)
	p := mustCreate(t, s, persona("p"))
	mustCreate(t, s, persona("other"))
	for _, inst := range []string{"vm2", "vm1"} {
		if err := s.PutInstance(InstanceRecord{Instance: inst, Persona: &p, Revision: p.Revision, ActivationID: "act-" + inst}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutInstance(InstanceRecord{Instance: "vm3"}); err != nil { // no persona
		t.Fatal(err)
	}
	err := s.DeletePersona("p", 0, false)
	var iu *InUseError
	if !errors.As(err, &iu) || !errors.Is(err, ErrInUse) || !reflect.DeepEqual(iu.Instances, []string{"vm1", "vm2"}) {
		t.Fatalf("DeletePersona(in use) = %v, want *InUseError{vm1, vm2}", err)
	}
	if _, err := s.GetPersona("p"); err != nil {
		t.Fatalf("refused delete removed the persona: %v", err)
	}
	if err := s.DeletePersona("other", 0, false); err != nil {
		t.Fatalf("DeletePersona(unused) = %v", err)
	}
	if err := s.DeletePersona("p", 0, true); err != nil {
		t.Fatalf("DeletePersona(force) = %v", err)
	}
	if _, err := s.GetPersona("p"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("forced delete left the persona: %v", err)
	}
	// The records still say what the guests hold.
	if r, _ := s.GetInstance("vm1"); r.Persona == nil || r.Persona.Name != "p" {
		t.Fatalf("forced delete changed instance records: %+v", r)
	}
}

func TestInstanceRecords(t *testing.T) {
	s := openTemp(t)
	if _, err := s.GetInstance("vm1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetInstance(never recorded) = %v, want ErrNotFound", err)
	}
	if list, err := s.ListInstances(); err != nil || list == nil || len(list) != 0 {
		t.Fatalf("ListInstances empty = %#v, %v", list, err)
	}
	p := mustCreate(t, s, persona("p"))
	act := time.Date(2026, 11, 26, 10, 0, 0, 123, time.FixedZone("X", 3600))
	rec := InstanceRecord{Instance: "vm1", Persona: &p, Revision: 1, ActivationID: "a1", ActivatedAt: act, BootID: "boot-1"}
	if err := s.PutInstance(rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetInstance("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Persona == nil || !samePersona(*got.Persona, p) || got.Revision != 1 || got.ActivationID != "a1" ||
		!got.ActivatedAt.Equal(act) || got.BootID != "boot-1" || got.UpdatedAt.IsZero() {
		t.Fatalf("GetInstance = %+v", got)
	}
	if got.ActivatedAt.Location() != time.UTC {
		t.Errorf("ActivatedAt not stored in UTC: %v", got.ActivatedAt)
	}
	// Replace with "no persona".
	if err := s.PutInstance(InstanceRecord{Instance: "vm1", BootID: "boot-2"}); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.GetInstance("vm1"); got.Persona != nil || got.BootID != "boot-2" {
		t.Fatalf("after reset GetInstance = %+v", got)
	}
	for _, n := range []string{"vm3", "a-vm", "vm2"} {
		if err := s.PutInstance(InstanceRecord{Instance: n}); err != nil {
			t.Fatal(err)
		}
	}
	list, _ := s.ListInstances()
	var names []string
	for _, r := range list {
		names = append(names, r.Instance)
	}
	if want := []string{"a-vm", "vm1", "vm2", "vm3"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("ListInstances = %v, want %v", names, want)
	}
	if err := s.DeleteInstance("vm2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetInstance("vm2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetInstance after DeleteInstance = %v", err)
	}
	for _, bad := range []string{"", "a\x00b", "\xff"} {
		if err := s.PutInstance(InstanceRecord{Instance: bad}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("PutInstance(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestReopenPersists(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	d := persona("d")
	d.DefaultPersona = true
	p, _ := s.CreatePersona(d)
	p, _ = s.UpdatePersona(d, 0)
	if err := s.PutInstance(InstanceRecord{Instance: "vm1", Persona: &p, Revision: p.Revision}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.AppendAudit(AuditEvent{Type: AuditPersonaCreated, Persona: "d"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "sp", Events: []protocol.AuditEvent{{Seq: 1, Type: "exec"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := s.GetPersona("d"); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetPersona after Close = %v, want ErrClosed", err)
	}

	s2 := openAt(t, dir, Options{})
	got, err := s2.GetPersona("d")
	if err != nil || got.Revision != 2 {
		t.Fatalf("after reopen GetPersona = rev %d, %v", got.Revision, err)
	}
	if dp, ok, _ := s2.DefaultPersona(); !ok || dp.Name != "d" {
		t.Fatal("default lost on reopen")
	}
	if r, err := s2.GetInstance("vm1"); err != nil || r.Persona == nil || r.Persona.Revision != 2 {
		t.Fatalf("after reopen GetInstance = %+v, %v", r, err)
	}
	// The guest batch is still deduplicated after the reopen.
	if _, ins, err := s2.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "sp", Events: []protocol.AuditEvent{{Seq: 1, Type: "exec"}}}); err != nil || len(ins) != 0 {
		t.Fatalf("re-ingest after reopen inserted %d, %v", len(ins), err)
	}
	// New IDs sort after the old ones (the sequence survives the reopen).
	more, err := s2.AppendAudit(AuditEvent{Type: AuditPersonaUpdated, Time: evs[0].Time})
	if err != nil {
		t.Fatal(err)
	}
	if more[0].ID <= evs[0].ID {
		t.Fatalf("ID after reopen %s does not sort after %s for the same time", more[0].ID, evs[0].ID)
	}
	all, _ := s2.QueryAudit(AuditQuery{})
	if len(all) != 3 {
		t.Fatalf("after reopen %d audit events, want 3", len(all))
	}
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	openAt(t, dir, Options{})
	if s, err := Open(dir, Options{Logger: quietLogger()}); err == nil {
		s.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
}

// Badger's own logs reach the slog logger given in Options.
func TestBadgerLogsViaSlog(t *testing.T) {
	var buf syncBuffer
	s := openAt(t, t.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err := s.Ready(); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ready after Close = %v, want ErrClosed", err)
	}
	if out := buf.String(); !strings.Contains(out, "lib=badger") {
		t.Fatalf("no Badger log line reached slog; got:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A persona near the validator's total limit (about 15 MiB of scripts) is
// stored, read, updated and listed like any other.
func TestLargePersona(t *testing.T) {
	s := openTemp(t)
	p := persona("big")
	p.PreActivationScript = "#!/bin/sh\n" + strings.Repeat("#", rules.MaxScriptLen-10)
	p.CommandOverrides = map[string]string{}
	for i := range 13 {
		p.CommandOverrides[fmt.Sprintf("c%d", i)] = "#!/bin/sh\n" + strings.Repeat(string(rune('a'+i)), rules.MaxScriptLen-10)
	}
	mustCreate(t, s, p)
	p.PostActivationScript = p.PreActivationScript
	if _, err := s.UpdatePersona(p, 1); err != nil {
		t.Fatalf("UpdatePersona(big) = %v", err)
	}
	got, err := s.GetPersona("big")
	if err != nil || got.Revision != 2 || got.CommandOverrides["c12"] != p.CommandOverrides["c12"] || got.PostActivationScript != p.PreActivationScript {
		t.Fatalf("GetPersona(big) = rev %d, %v (content intact: %v)", got.Revision, err, got.CommandOverrides["c12"] == p.CommandOverrides["c12"])
	}
	if list, err := s.ListPersonas(); err != nil || len(list) != 1 {
		t.Fatalf("ListPersonas = %d, %v", len(list), err)
	}
}
