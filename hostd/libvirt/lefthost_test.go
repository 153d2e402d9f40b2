package libvirt

import (
	"errors"
	"path/filepath"
	"testing"

	lv "libvirt.org/go/libvirt"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/internal/teststore"
)

// Only libvirt's "gone" and "migrated away" signals make the host drop an
// instance's record; a shutdown, a crash, or an incoming migration do not.
func TestLeftHost(t *testing.T) {
	for _, c := range []struct {
		what   string
		exists bool
		state  lv.DomainState
		reason int
		want   bool
	}{
		{"undefined, or a transient domain that stopped", false, 0, 0, true},
		{"stopped: migrated away", true, lv.DOMAIN_SHUTOFF, int(lv.DOMAIN_SHUTOFF_MIGRATED), true},
		{"shut down", true, lv.DOMAIN_SHUTOFF, int(lv.DOMAIN_SHUTOFF_SHUTDOWN), false},
		{"destroyed", true, lv.DOMAIN_SHUTOFF, int(lv.DOMAIN_SHUTOFF_DESTROYED), false},
		{"crashed while shut off", true, lv.DOMAIN_SHUTOFF, int(lv.DOMAIN_SHUTOFF_CRASHED), false},
		{"crashed", true, lv.DOMAIN_CRASHED, 0, false},
		{"running after an incoming migration", true, lv.DOMAIN_RUNNING, int(lv.DOMAIN_RUNNING_MIGRATED), false},
		{"paused for a migration", true, lv.DOMAIN_PAUSED, int(lv.DOMAIN_PAUSED_MIGRATION), false},
	} {
		if got := leftHost(c.exists, c.state, c.reason); got != c.want {
			t.Errorf("%s: leftHost = %v, want %v", c.what, got, c.want)
		}
	}
}

// Through libvirt's test driver: a domain that is shut off keeps its
// instance record; once undefined its record is deleted. (A migration
// cannot be made here: the test driver has no second host.)
func TestUndefinedDomainDropsItsRecord(t *testing.T) {
	c := control(t)
	st := teststore.Open(t, t.TempDir())
	mgr := agents.NewManager(agents.Config{Store: st})
	t.Cleanup(mgr.Close)
	d := newDiscovery(t, testURI, mgr, true)
	testproc.WaitFor(t, "the first resync", func() bool { _, ok := d.Lookup("test"); return ok })

	for _, n := range []string{"vmp-left", "vmp-stays"} {
		if err := st.PutInstance(store.InstanceRecord{Instance: n}); err != nil {
			t.Fatal(err)
		}
	}
	dom := define(t, c, "vmp-left", domOpts{channelPath: filepath.Join(t.TempDir(), "left.sock"), start: true})
	waitState(t, d, "vmp-left", agents.InstanceRunning)
	if err := dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, "vmp-left", agents.InstanceShutoff)
	if _, err := st.GetInstance("vmp-left"); err != nil {
		t.Fatalf("a domain that was shut off lost its record: %v", err)
	}
	if err := dom.Undefine(); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, "vmp-left's record deleted", func() bool {
		_, err := st.GetInstance("vmp-left")
		return errors.Is(err, store.ErrNotFound)
	})
	if _, err := st.GetInstance("vmp-stays"); err != nil {
		t.Fatalf("another instance's record went too: %v", err)
	}
}
