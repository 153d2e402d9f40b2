package agents

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The instance shows the guest kernel's enforcement level: the Landlock
// ABI the real guest daemon reports in its handshake.
func TestStatusShowsLandlockABI(t *testing.T) {
	want, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		want = 0
	}
	g := newGuest(t)
	h := newHost(t, nil)
	h.startManager()
	h.add("vm", g.endpoint())
	st := h.waitState("vm", StateConnected)
	if st.LandlockABI != int(want) {
		t.Fatalf("status shows Landlock ABI %d, this kernel has %d", st.LandlockABI, want)
	}
}
