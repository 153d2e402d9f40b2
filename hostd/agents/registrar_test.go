package agents

import (
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/teststore"
)

// TestRegistrar: a discovery source adds, moves and removes only its own
// instances; a name taken by another source is refused.
func TestRegistrar(t *testing.T) {
	m := NewManager(Config{Logger: slog.New(slog.DiscardHandler)})
	defer m.Close()
	dir := t.TempDir()
	ep := func(n string) Endpoint { return Endpoint{Kind: KindUnix, Path: filepath.Join(dir, n)} }
	if err := m.Add("static1", ep("s.sock"), "static"); err != nil {
		t.Fatal(err)
	}
	r := NewRegistrar(m, "libvirt")
	if err := r.Manage("vm1", ep("a.sock")); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Get("vm1"); err != nil || st.Source != "libvirt" || st.Endpoint != ep("a.sock").String() {
		t.Fatalf("after Manage: %+v %v", st, err)
	}
	if err := r.Manage("vm1", ep("b.sock")); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Get("vm1"); st.Endpoint != ep("b.sock").String() {
		t.Fatalf("endpoint not moved: %+v", st)
	}
	if err := r.Manage("static1", ep("x.sock")); !errors.Is(err, ErrExists) {
		t.Fatalf("a static instance's name was taken: %v", err)
	}
	r.Unmanage("static1") // not its own: must stay
	if _, err := m.Get("static1"); err != nil {
		t.Fatalf("Unmanage removed another source's instance: %v", err)
	}
	r.UnmanageAll()
	if _, err := m.Get("vm1"); !errors.Is(err, ErrUnknownInstance) {
		t.Fatalf("vm1 after UnmanageAll: %v", err)
	}
}

// A source's Forget (the domain left the host) removes its instance and
// deletes the instance record, also for an instance it no longer managed;
// another source's instance of the same name keeps both.
func TestRegistrarForgetDeletesTheRecord(t *testing.T) {
	st := teststore.Open(t, t.TempDir())
	m := NewManager(Config{Store: st, Logger: slog.New(slog.DiscardHandler)})
	defer m.Close()
	dir := t.TempDir()
	ep := func(n string) Endpoint { return Endpoint{Kind: KindUnix, Path: filepath.Join(dir, n)} }
	for _, n := range []string{"vm1", "vm2", "static1"} {
		if err := st.PutInstance(store.InstanceRecord{Instance: n}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Add("static1", ep("s.sock"), "static"); err != nil {
		t.Fatal(err)
	}
	r := NewRegistrar(m, "libvirt")
	if err := r.Manage("vm1", ep("a.sock")); err != nil {
		t.Fatal(err)
	}
	gone := func(n string) bool { _, err := st.GetInstance(n); return errors.Is(err, store.ErrNotFound) }

	r.Forget("vm1")
	if _, err := m.Get("vm1"); !errors.Is(err, ErrUnknownInstance) || !gone("vm1") {
		t.Fatalf("vm1 after Forget: managed %v, record gone %v", err, gone("vm1"))
	}
	r.Forget("vm2") // shut down earlier, so no longer managed
	if !gone("vm2") {
		t.Fatal("vm2's record survived Forget")
	}
	r.Forget("static1")
	if _, err := m.Get("static1"); err != nil || gone("static1") {
		t.Fatalf("Forget touched another source's instance: %v, record gone %v", err, gone("static1"))
	}
}
