package reconcile

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// TestRolloutStopsAtMaxFailures: 50 real guests hold revision 1; revision 2's
// post-activation script fails on some of them. A rollout with max_parallel
// 5 and max_failures 3 stops starting instances once 3 have failed, the
// failed ones roll back to revision 1 (sync failed, with the script's
// output), the ones never started keep revision 1 (drifted), and every
// instance gets exactly one result.
func TestRolloutStopsAtMaxFailures(t *testing.T) {
	const n, maxParallel, maxFailures = 50, 5, 3
	h := newHost(t)
	h.noDefault = true
	names := make([]string, n)
	failing := map[string]bool{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	guests := map[string]*guest{}
	for i := range n {
		names[i] = fmt.Sprintf("vm%02d", i)
		// Guests 20 to 29 refuse revision 2: its post-activation script
		// checks a variable their daemon's environment carries.
		env := []string{}
		if i >= 20 && i < 30 {
			env = append(env, "ROLLOUT_REFUSE=1")
			failing[names[i]] = true
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			g := newGuest(t, env...)
			mu.Lock()
			guests[name] = g
			mu.Unlock()
		}(names[i])
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, name := range slices.Sorted(maps.Keys(guests)) {
		h.add(name, guests[name])
	}
	for _, name := range names {
		h.waitConnected(name)
	}
	p1 := h.createPersona(protocol.Persona{Name: "web", EnvironmentVariables: map[string]string{"TIER": "one"}})
	first, err := h.r.Rollout(ctxTimeout(t, 5*time.Minute), "web", RolloutRequest{Instances: names, MaxParallel: 10, MaxFailures: 1}, "alice", nil)
	if err != nil || first.Activated != n {
		t.Fatalf("first rollout: %+v, %v", first, err)
	}
	t.Logf("first rollout: %d instances activated, max_parallel 10, in %.1f ms", first.Activated, first.DurationMillis)

	p2 := h.updatePersona(protocol.Persona{Name: "web", EnvironmentVariables: map[string]string{"TIER": "two"},
		PostActivationScript: "#!/bin/sh\nif [ -n \"$ROLLOUT_REFUSE\" ]; then echo \"refused on this guest\" >&2; exit 9; fi"})
	for _, name := range names {
		if s := h.status(name); s.Sync != apitypes.SyncDrifted {
			t.Fatalf("%s after the update: %s, want drifted", name, s.Sync)
		}
	}

	var (
		results []RolloutResult
		rmu     sync.Mutex
	)
	sum, err := h.r.Rollout(ctxTimeout(t, 5*time.Minute), "web", RolloutRequest{MaxParallel: maxParallel, MaxFailures: maxFailures}, "alice", func(res RolloutResult) {
		rmu.Lock()
		results = append(results, res)
		rmu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary: %+v", sum)

	// Every instance has exactly one result, and the counts add up.
	seen := map[string]RolloutResult{}
	for _, r := range results {
		if _, dup := seen[r.Instance]; dup {
			t.Errorf("%s reported twice", r.Instance)
		}
		seen[r.Instance] = r
	}
	if len(seen) != n || sum.Total != n || sum.Activated+sum.Failed+sum.Skipped != n || sum.InSync != 0 || sum.Pending != 0 {
		t.Fatalf("%d results for %d instances; summary %+v", len(seen), n, sum)
	}
	// It stopped at max_failures: at least that many failed, and no more
	// than could have been in flight when the limit was reached.
	if sum.Failed < maxFailures || sum.Failed > maxFailures+maxParallel-1 || !sum.Stopped || sum.Skipped == 0 {
		t.Errorf("summary %+v: want it stopped after %d failures (at most %d in flight)", sum, maxFailures, maxParallel)
	}

	for _, name := range names {
		r := seen[name]
		st, err := h.m.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		s := h.status(name)
		switch r.Result {
		case apitypes.RolloutActivated:
			if failing[name] || st.Active == nil || st.Active.Revision != p2.Revision || s.Sync != apitypes.SyncInSync {
				t.Errorf("%s activated: holds %+v, sync %s", name, st.Active, s.Sync)
			}
		case apitypes.RolloutRolledBack:
			if !failing[name] || r.Script == nil || r.Script.ExitCode != 9 || !strings.Contains(r.Script.Stderr, "refused") || r.Phase != "post" {
				t.Errorf("%s rolled back: %+v", name, r)
			}
			if st.Active == nil || st.Active.Revision != p1.Revision || s.Sync != apitypes.SyncFailed || s.SyncScript == nil {
				t.Errorf("%s after a rollback: holds %+v, status %+v; want revision %d, failed", name, st.Active, s, p1.Revision)
			}
		case apitypes.RolloutSkipped:
			if st.Active == nil || st.Active.Revision != p1.Revision || s.Sync != apitypes.SyncDrifted || s.Desired.Revision != p1.Revision {
				t.Errorf("%s skipped: holds %+v, status %+v; want revision %d, drifted", name, st.Active, s, p1.Revision)
			}
		default:
			t.Errorf("%s: result %+v", name, r)
		}
		if r.From == nil || r.From.Revision != p1.Revision {
			t.Errorf("%s: from %+v, want revision %d", name, r.From, p1.Revision)
		}
	}
	// Nothing past the failing block was started: instances are started in
	// name order, and the limit is reached within the block.
	for i := 30; i < n; i++ {
		if r := seen[names[i]]; r.Result != apitypes.RolloutSkipped {
			t.Errorf("%s was started after max_failures: %+v", names[i], r)
		}
	}

	started := h.audit(store.AuditQuery{Type: store.AuditRolloutStarted})
	finished := h.audit(store.AuditQuery{Type: store.AuditRolloutFinished})
	if len(started) != 2 || len(finished) != 2 || finished[len(finished)-1].Result != "stopped" {
		t.Errorf("rollout audit: started %+v, finished %+v", started, finished)
	}
}
