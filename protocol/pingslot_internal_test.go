package protocol

import (
	"testing"
	"time"
)

// TestPingSlot: a host's Ping goes out at the first tenth of the interval on
// the clock at or after it is due — never before, never more than a tenth
// later — so that pings due within the same tenth share one wakeup.
func TestPingSlot(t *testing.T) {
	hb := 2 * time.Second
	grid := hb / 10
	base := time.Date(2026, 12, 1, 5, 0, 0, 0, time.UTC)
	for _, off := range []time.Duration{0, 1, 57 * time.Millisecond, grid - 1, grid, grid + 1, 7*grid + 123*time.Microsecond} {
		at := base.Add(off)
		got := pingSlot(at, hb)
		if got.Before(at) || got.Sub(at) >= grid {
			t.Errorf("due %v: slot %v, want within [due, due+%v)", off, got.Sub(base), grid)
		}
		if got.UnixNano()%int64(grid) != 0 {
			t.Errorf("due %v: slot %v is not on the %v grid", off, got.Sub(base), grid)
		}
	}
	if a, b := pingSlot(base.Add(1), hb), pingSlot(base.Add(grid-1), hb); !a.Equal(b) {
		t.Errorf("pings due within one tenth go out at %v and %v", a.Sub(base), b.Sub(base))
	}
	if at := base.Add(3); !pingSlot(at, 5).Equal(at) {
		t.Error("an interval too short for a grid must not move the ping")
	}
}
