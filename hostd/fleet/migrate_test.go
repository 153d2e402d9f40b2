package fleet

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testetcd"
)

// A VM live-migrated from host a to host b keeps its persona: b has never
// seen it, finds the guest daemon holding web at its current revision, and
// adopts that as the desired state — no activation, so neither of web's
// scripts runs again, and not the fleet default either. The fleet-wide
// listing then shows the VM on b only.
//
// libvirt cannot migrate a VM here (there is no second libvirtd), so the
// hand-over is what discovery does on each side: a forgets the instance
// (libvirt reports the domain gone or migrated away: it stops managing it
// and deletes its record) and b starts managing the same guest endpoint
// (the domain appeared on b).
func TestMigratedVMKeepsItsPersonaOnTheNewHost(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	ep := startGuest(t)
	a := newReconcilingHostd(t, "a", c.Endpoints(), nil, map[string]vm{"vm1": {ep, nil}})
	b := newReconcilingHostd(t, "b", c.Endpoints(), nil, nil)
	a.waitConnected()
	b.waitConnected()

	marks := filepath.Join(t.TempDir(), "scripts-ran")
	web := persona("web", false)
	web.PreActivationScript = "#!/bin/sh\necho pre >> " + marks
	web.PostActivationScript = "#!/bin/sh\necho post >> " + marks
	if r := a.do("POST", "/personas", web); r.status != http.StatusCreated {
		t.Fatalf("create web: %d %v", r.status, r.body)
	}
	// A second revision, so that "the same revision" is not just the first.
	web.EnvironmentVariables = map[string]string{"APP_ENV": "prod"}
	if r := a.do("PUT", "/personas/web", web); r.status != http.StatusOK {
		t.Fatalf("update web: %d %v", r.status, r.body)
	}
	// A fleet default: what b would give a VM it did not adopt.
	if r := a.do("POST", "/personas", persona("fallback", true)); r.status != http.StatusCreated {
		t.Fatalf("create fallback: %d %v", r.status, r.body)
	}
	waitFor(t, "b's copy of the personas", func() bool { _, err := b.st.GetPersona("fallback"); return err == nil })
	if r := a.do("POST", "/instances/vm1/personas/web/activate", map[string]any{}); r.status != http.StatusOK {
		t.Fatalf("activate on a: %d %v", r.status, r.body)
	}
	a.waitActive("vm1", "web")
	da := a.desired("vm1")
	if da.PersonaName() != "web" || da.Revision != 2 {
		t.Fatalf("vm1's desired state on a: %+v, want web revision 2", da)
	}
	if ran, err := os.ReadFile(marks); err != nil || string(ran) != "pre\npost\n" {
		t.Fatalf("scripts after the activation on a: %q, %v", ran, err)
	}

	waitFor(t, "vm1 on a in the fleet listing", func() bool { return fmt.Sprint(b.fleetListing()) == fmt.Sprint([]fleetRow{{"a", "vm1", "web"}}) })

	// The hand-over.
	a.mgr.Forget("vm1", "static")
	if _, err := a.st.GetInstance("vm1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a's record of vm1 after it left: %v, want it deleted", err)
	}
	b.add("vm1", vm{ep, nil})
	b.waitActive("vm1", "web")

	db := b.desired("vm1")
	if db.PersonaName() != "web" || db.Revision != 2 || db.SetBy != store.DesiredByAdoption {
		t.Fatalf("vm1's desired state on b: %+v, want web revision 2 set by %q", db, store.DesiredByAdoption)
	}
	want := []fleetRow{{"b", "vm1", "web"}}
	waitFor(t, "vm1 on b only in the fleet listing", func() bool { return fmt.Sprint(a.fleetListing()) == fmt.Sprint(want) })
	if got := b.fleetListing(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("b's fleet listing %v, want %v", got, want)
	}
	// b's reconciler has looked at vm1 (it adopted it); one more pass over
	// the catalogue must not activate it either.
	b.rec.Reassess()
	waitFor(t, "vm1 still on web after a pass", func() bool { return b.active("vm1") == "web" })
	st, err := b.mgr.Get("vm1")
	if err != nil || st.Active == nil || st.Active.Revision != 2 {
		t.Fatalf("the guest's persona on b: %+v, %v; want web revision 2", st.Active, err)
	}
	if ran, err := os.ReadFile(marks); err != nil || string(ran) != "pre\npost\n" {
		t.Fatalf("scripts after the migration: %q, %v; want them not run again", ran, err)
	}
}
