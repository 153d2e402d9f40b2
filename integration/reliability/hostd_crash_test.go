package reliability

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// overridePersona is active on the guest during the crash loops: each exec
// of "deploy" takes the override route, which the guest audits.
func overridePersona(name string) map[string]any {
	return map[string]any{
		"name":                  name,
		"environment_variables": map[string]string{"APP_ENV": "crash"},
		"command_overrides":     map[string]string{"deploy": "#!/bin/sh\necho dry-run \"$@\""},
		"restricted_commands":   []string{"rm"},
	}
}

// guestSpool reads the guest's acknowledged sequence and its unsent events.
func guestSpool(t testing.TB, stateDir string) (spoolID string, acked uint64, pending int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "audit-meta.json"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var m struct {
		SpoolID   string `json:"spool_id"`
		AckedUpTo uint64 `json:"acked_up_to"`
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("audit-meta.json: %v: %s", err, b)
		}
	}
	// The latest acknowledgement may be in audit-ack.json (written without
	// fsync; the guest takes the higher of the two, and so do we).
	if b, err := os.ReadFile(filepath.Join(stateDir, "audit-ack.json")); err == nil {
		var a struct {
			AckedUpTo uint64 `json:"acked_up_to"`
		}
		if json.Unmarshal(b, &a) == nil && a.AckedUpTo > m.AckedUpTo {
			m.AckedUpTo = a.AckedUpTo
		}
	}
	sp, err := os.ReadFile(filepath.Join(stateDir, "audit-spool.jsonl"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(sp), "\n") {
		var ev struct {
			Seq uint64 `json:"seq"`
		}
		if line != "" && json.Unmarshal([]byte(line), &ev) == nil && ev.Seq > m.AckedUpTo {
			pending++
		}
	}
	return m.SpoolID, m.AckedUpTo, pending
}

// checkGuestAudit waits for the guest's spool to drain and then checks that
// the host holds every guest event exactly once: sequence numbers 1..acked,
// no gap, no duplicate. It returns the number of guest events.
func checkGuestAudit(t testing.TB, h *hostd, instance, stateDir string) int {
	t.Helper()
	var acked uint64
	var pending int
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, acked, pending = guestSpool(t, stateDir)
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest spool still holds %d events (acked up to %d)", pending, acked)
		}
		time.Sleep(50 * time.Millisecond)
	}
	evs := h.auditEvents(t, "instance="+instance)
	seen := map[uint64]int{}
	for _, ev := range evs {
		if ev["source"] != "guest" {
			continue
		}
		seq, _ := ev["guest_seq"].(float64)
		seen[uint64(seq)]++
	}
	var dups, missing []uint64
	for s := uint64(1); s <= acked; s++ {
		switch seen[s] {
		case 0:
			missing = append(missing, s)
		case 1:
		default:
			dups = append(dups, s)
		}
	}
	if len(seen) != int(acked) || len(dups) > 0 || len(missing) > 0 {
		t.Fatalf("guest acknowledged %d events; host holds %d distinct seqs; duplicated %v; missing %v",
			acked, len(seen), head(dups), head(missing))
	}
	return int(acked)
}

func head(s []uint64) []uint64 {
	if len(s) > 20 {
		return s[:20]
	}
	return s
}

// TestHostdCrashConsistency kills the real host daemon with SIGKILL while
// clients create and update personas over the unix socket and a real guest
// daemon delivers the audit events of overridden execs. After every restart
// the store must open and hold every write the API acknowledged; at the end
// the host's audit log must hold each guest event exactly once.
// RELIABILITY_CRASH_LOOPS sets the number of kills (10 in `make test`, 50
// in `make reliability`).
func TestHostdCrashConsistency(t *testing.T) {
	parallel(t)
	loops := envInt("RELIABILITY_CRASH_LOOPS", pick(10, 50))
	dir := testproc.ShortDir(t)
	dataDir := filepath.Join(dir, "data")
	sock := filepath.Join(dir, "hostd.sock")
	gdir := filepath.Join(dir, "guest")
	_, ep := startGuest(t, gdir, "--max-exec", "64")
	inst := "--instance=vm1=" + ep

	h := startHostd(t, dataDir, sock, inst)
	h.waitConnected(t, "vm1")
	h.must(t, "POST", "/personas", overridePersona("crashp"), 201)
	h.must(t, "POST", "/instances/vm1/personas/crashp/activate", nil, 200)

	// acked: persona name → highest revision the API acknowledged.
	var mu sync.Mutex
	acked := map[string]float64{}
	var writes, execsOK, execsFailed, transportErrs atomic.Int64

	for loop := 0; loop < loops; loop++ {
		if loop > 0 {
			h = startHostd(t, dataDir, sock, inst)
			// The store opened (the daemon listens only after it did):
			// every acknowledged write must be there.
			// The list is paged: follow next to its end.
			have := map[string]float64{}
			for path := "/personas"; path != ""; {
				a := h.must(t, "GET", path, nil, 200)
				var page struct {
					Personas []map[string]any `json:"personas"`
					Next     string           `json:"next"`
				}
				if err := json.Unmarshal(a.body, &page); err != nil {
					t.Fatalf("persona list: %v: %.300s", err, a.body)
				}
				for _, p := range page.Personas {
					name, _ := p["name"].(string)
					rev, _ := p["revision"].(float64)
					have[name] = rev
				}
				path = ""
				if page.Next != "" {
					path = "/personas?after=" + url.QueryEscape(page.Next)
				}
			}
			mu.Lock()
			for name, rev := range acked {
				got, ok := have[name]
				if !ok {
					t.Fatalf("loop %d: acknowledged persona %s (revision %v) is lost after kill -9", loop, name, rev)
				}
				if got < rev {
					t.Fatalf("loop %d: persona %s has revision %v, but revision %v was acknowledged", loop, name, got, rev)
				}
			}
			mu.Unlock()
			h.waitConnected(t, "vm1")
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 3; w++ {
			var mine []string
			i := -1
			untilClosed(&wg, stop, func() bool {
				i++
				if len(mine) > 0 && i%3 == 2 {
					name := mine[rand.IntN(len(mine))]
					p := overridePersona(name)
					p["environment_variables"] = map[string]string{"N": fmt.Sprint(i)}
					a, err := call(h.client, "PUT", "/personas/"+name, p)
					if err != nil {
						transportErrs.Add(1)
						return true
					}
					if a.status == 200 {
						rev, _ := a.json(t)["revision"].(float64)
						mu.Lock()
						if rev > acked[name] {
							acked[name] = rev
						}
						mu.Unlock()
						writes.Add(1)
					} else if a.status >= 500 {
						t.Errorf("PUT %s: %d %s", name, a.status, a.body)
					}
					return true
				}
				name := fmt.Sprintf("l%d-w%d-%d", loop, w, i)
				a, err := call(h.client, "POST", "/personas", overridePersona(name))
				if err != nil {
					transportErrs.Add(1)
					return true
				}
				if a.status != 201 {
					t.Errorf("POST %s: %d %s", name, a.status, a.body)
					return true
				}
				rev, _ := a.json(t)["revision"].(float64)
				mu.Lock()
				acked[name] = rev
				mu.Unlock()
				mine = append(mine, name)
				writes.Add(1)
				return true
			})
		}
		for range 2 {
			untilClosed(&wg, stop, func() bool {
				a, err := call(h.client, "POST", "/instances/vm1/exec", map[string]any{"command": "deploy", "args": []string{"x"}, "timeout_seconds": 10})
				switch {
				case err != nil:
					transportErrs.Add(1)
				case a.status == 200:
					execsOK.Add(1)
				case a.status == 503 || a.status == 504:
					execsFailed.Add(1) // the agent session was still coming up
					time.Sleep(10 * time.Millisecond)
				default:
					t.Errorf("exec: %d %s", a.status, a.body)
				}
				return true
			})
		}
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		close(stop) // no new requests; those in flight are cut by the kill
		h.Kill()    // SIGKILL
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}

	// One more start: the last kill's writes, then the audit log.
	h = startHostd(t, dataDir, sock, inst)
	h.waitConnected(t, "vm1")
	for name, rev := range acked {
		a := h.must(t, "GET", "/personas/"+name, nil, 200)
		if got, _ := a.json(t)["revision"].(float64); got < rev {
			t.Fatalf("persona %s: revision %v < acknowledged %v", name, got, rev)
		}
	}
	n := checkGuestAudit(t, h, "vm1", filepath.Join(gdir, "state"))
	if int64(n) < execsOK.Load() {
		t.Fatalf("guest recorded %d events but %d overridden execs were answered", n, execsOK.Load())
	}
	t.Logf("%d kill -9 loops: %d acknowledged persona writes (%d personas) all present; %d execs answered, %d 503/504 while reconnecting, %d requests cut by the kill; %d guest audit events, each exactly once",
		loops, writes.Load(), len(acked), execsOK.Load(), execsFailed.Load(), transportErrs.Load(), n)
}
