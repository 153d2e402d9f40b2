package agents

import (
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// TestReconnectBackoff watches the connection loop retry an absent socket in
// a synctest bubble (virtual time): waits grow from 100 ms with jitter, are
// capped at 5 s, and an endpoint change retries at once.
func TestReconnectBackoff(t *testing.T) {
	dir := testproc.ShortDir(t)
	synctest.Test(t, func(t *testing.T) {
		var (
			mu       sync.Mutex
			attempts []time.Time
			eps      []Endpoint
		)
		m := NewManager(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		m.dialHook = func(ep Endpoint) {
			mu.Lock()
			defer mu.Unlock()
			attempts = append(attempts, time.Now())
			eps = append(eps, ep)
		}
		absent := Endpoint{Kind: KindUnix, Path: filepath.Join(dir, "absent.sock")}
		if err := m.Add("vm", absent, "static"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(60 * time.Second)
		synctest.Wait()

		mu.Lock()
		got := append([]time.Time(nil), attempts...)
		mu.Unlock()
		// Waits of at least 50, 100, 200 ... ms and at most 5 s: between
		// 17 and 30 attempts in a minute.
		if len(got) < 17 || len(got) > 30 {
			t.Errorf("%d attempts in 60 s, want 17..30", len(got))
		}
		ceiling := 100 * time.Millisecond
		for i := 1; i < len(got); i++ {
			gap := got[i].Sub(got[i-1])
			if gap < ceiling/2 || gap > ceiling {
				t.Errorf("wait %d: %v, want within [%v, %v]", i, gap, ceiling/2, ceiling)
			}
			ceiling = min(2*ceiling, 5*time.Second)
		}
		if st, _ := m.Get("vm"); st.State != StateDisconnected || st.LastError == "" {
			t.Errorf("status: %+v", st)
		}

		// An endpoint change does not wait for the backoff.
		moved := Endpoint{Kind: KindUnix, Path: filepath.Join(dir, "moved.sock")}
		before := len(got)
		if err := m.SetEndpoint("vm", moved); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		mu.Lock()
		if len(attempts) != before+1 || eps[len(eps)-1] != moved || !attempts[len(attempts)-1].Equal(time.Now()) {
			t.Errorf("after SetEndpoint at %v: %d attempts (want %d), last at %v to %v",
				time.Now(), len(attempts), before+1, attempts[len(attempts)-1], eps[len(eps)-1])
		}
		mu.Unlock()
		m.Close()
	})
}

func TestNextEpoch(t *testing.T) {
	a := &agent{}
	prev := a.nextEpoch()
	for range 10000 {
		e := a.nextEpoch()
		if e == 0 || e == prev {
			t.Fatalf("epoch %d after %d", e, prev)
		}
		prev = e
	}
}

func TestJitter(t *testing.T) {
	for _, d := range []time.Duration{backoffMin, time.Second, backoffMax} {
		for range 1000 {
			if j := Jitter(d); j < d/2 || j > d {
				t.Fatalf("Jitter(%v) = %v", d, j)
			}
		}
	}
}
