package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/internal/testetcd"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// The fleet tier: three real etcd members (Debian's etcd-server, installed by
// make's test dependencies) on loopback ports with temporary data, two real
// hostds in fleet mode with real guests, and faults: kill -9 of a follower,
// of the leader, of two members (quorum lost), and a compaction while a host
// is down.

// waitUntil waits for what a fault's recovery brings (an election, a
// reconnection): longer than a start-up takes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testproc.WaitWithin(t, 90*time.Second, what, cond)
}

func metricValue(t *testing.T, h *hostd, name string) float64 {
	t.Helper()
	a := h.must(t, "GET", "/metrics", nil, 200)
	for line := range strings.SplitSeq(string(a.body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

type ack struct {
	n   int
	rev uint64
}

func etagRev(a answer) uint64 {
	v, _ := strconv.ParseUint(strings.Trim(a.header.Get("ETag"), `"`), 10, 64)
	return v
}

func TestFleetFaultsWithRealEtcd(t *testing.T) {
	parallel(t)
	c := testetcd.Start(t, 3)
	dir := testproc.ShortDir(t)
	fleetArgs := func(name string) []string {
		return []string{"--fleet-etcd", strings.Join(c.Endpoints(), ","), "--fleet-host", name, "--fleet-prefix", "/tier/"}
	}
	_, epA := startGuest(t, filepath.Join(dir, "ga"))
	_, epB := startGuest(t, filepath.Join(dir, "gb"))
	a := startHostd(t, filepath.Join(dir, "a"), filepath.Join(dir, "a.sock"), append(fleetArgs("a"), "--instance", "vm1="+epA)...)
	b := startHostd(t, filepath.Join(dir, "b"), filepath.Join(dir, "b.sock"), append(fleetArgs("b"), "--instance", "vm2="+epB)...)
	waitUntil(t, "both hosts connected", func() bool {
		return metricValue(t, a, "vmpersona_fleet_connected") == 1 && metricValue(t, b, "vmpersona_fleet_connected") == 1
	})
	body := func(n int) map[string]any {
		return map[string]any{"name": "load", "environment_variables": map[string]string{"N": strconv.Itoa(n)}}
	}
	a.must(t, "POST", "/personas", body(0), 201)

	// A writer on host A updates the persona all along; a reader on host B
	// checks that what B serves never goes back.
	var mu sync.Mutex
	var acks []ack
	var lastErr string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			r, err := call(a.client, "PUT", "/personas/load", body(n))
			mu.Lock()
			switch {
			case err == nil && r.status == 200:
				acks = append(acks, ack{n, etagRev(r)})
			case err == nil:
				lastErr = fmt.Sprintf("%d %s", r.status, r.body)
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	var backwards []string
	wg.Go(func() {
		var lastRev, lastFleet uint64
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := call(b.client, "GET", "/personas/load", nil)
			if err == nil && r.status == 200 {
				rev := etagRev(r)
				fr, _ := strconv.ParseUint(r.header.Get("Vmpersona-Fleet-Revision"), 10, 64)
				if rev < lastRev || fr < lastFleet {
					mu.Lock()
					backwards = append(backwards, fmt.Sprintf("revision %d after %d, fleet revision %d after %d", rev, lastRev, fr, lastFleet))
					mu.Unlock()
				}
				lastRev, lastFleet = max(lastRev, rev), max(lastFleet, fr)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	acked := func() int { mu.Lock(); defer mu.Unlock(); return len(acks) }
	progress := func(what string) {
		t.Helper()
		from := acked()
		start := time.Now()
		waitUntil(t, "writes to succeed "+what, func() bool { return acked() >= from+20 })
		t.Logf("%s: 20 more writes acknowledged in %v", what, time.Since(start).Round(time.Millisecond))
	}
	cli := c.Client(nil)
	defer cli.Close()
	progress("before any fault")

	// kill -9 of a follower: writes go on.
	lead := c.Leader(cli)
	follower := (lead + 1) % 3
	c.Kill(follower)
	progress("with a follower killed")
	c.Restart(follower)

	// kill -9 of the leader: writes stop until a new leader is elected.
	waitUntil(t, "a leader", func() bool { lead = c.Leader(cli); return lead >= 0 })
	killed := time.Now()
	before := acked()
	c.Kill(lead)
	waitUntil(t, "writes after the leader's death", func() bool { return acked() > before })
	t.Logf("leader kill -9: first acknowledged write %v later", time.Since(killed).Round(time.Millisecond))
	progress("after the leader was killed")
	c.Restart(lead)
	waitUntil(t, "three members serving", func() bool {
		for _, ep := range c.Endpoints() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := cli.Status(ctx, ep)
			cancel()
			if err != nil {
				return false
			}
		}
		return true
	})

	// kill -9 of two members: quorum lost.
	fullReadsB := metricValue(t, b, "vmpersona_fleet_full_reads_total")
	c.Kill(0)
	c.Kill(1)
	start := time.Now()
	r, err := call(b.client, "POST", "/personas", map[string]any{"name": "during-loss"})
	if err != nil || r.status != 503 {
		t.Fatalf("write without quorum: %v %d %s, want 503", err, r.status, r.body)
	}
	checkProblem(t, "write without quorum", r)
	t.Logf("write without quorum: 503 after %v", time.Since(start).Round(time.Millisecond))
	waitUntil(t, "b to report itself disconnected", func() bool { return metricValue(t, b, "vmpersona_fleet_connected") == 0 })
	got := b.must(t, "GET", "/personas/load", nil, 200)
	if got.header.Get("Vmpersona-Fleet-Stale-Since") == "" {
		t.Fatalf("read without quorum carries no Vmpersona-Fleet-Stale-Since: %v", got.header)
	}
	b.waitConnected(t, "vm2")
	b.must(t, "POST", "/instances/vm2/personas/load/activate", nil, 200)
	t.Logf("activation on b from its copy without quorum: ok")
	c.Restart(0)
	c.Restart(1)
	waitUntil(t, "b connected again", func() bool { return metricValue(t, b, "vmpersona_fleet_connected") == 1 })
	if n := metricValue(t, b, "vmpersona_fleet_full_reads_total"); n != fullReadsB {
		t.Fatalf("b read everything again after the quorum came back (%v full reads, was %v); it should catch up from its revision", n, fullReadsB)
	}
	if r := b.must(t, "GET", "/personas/during-loss", nil, 404); r.status != 404 {
		t.Fatal("unreachable")
	}
	progress("after the quorum came back")

	close(stop)
	wg.Wait()

	// Compaction while host B is down: B reads everything again.
	b.Kill()
	// Two writes while b is down: compacting at the second removes the
	// first, which b's watch would resume from.
	a.must(t, "PUT", "/personas/load", body(999_999), 200)
	a.must(t, "PUT", "/personas/load", body(1_000_000), 200)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cur, err := cli.Get(ctx, "compaction-marker")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, cur.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	b = startHostd(t, b.dataDir, b.sock, append(fleetArgs("b"), "--instance", "vm2="+epB)...)
	waitUntil(t, "b to read everything after the compaction", func() bool {
		return metricValue(t, b, "vmpersona_fleet_full_reads_total") == 1
	})

	// Zero acknowledged writes lost, nothing went backwards.
	mu.Lock()
	defer mu.Unlock()
	if len(backwards) > 0 {
		t.Fatalf("host b served older state after newer: %v", backwards)
	}
	for i := 1; i < len(acks); i++ {
		if acks[i].rev <= acks[i-1].rev {
			t.Fatalf("acknowledged write %d has revision %d after %d's %d", acks[i].n, acks[i].rev, acks[i-1].n, acks[i-1].rev)
		}
	}
	final := b.must(t, "GET", "/personas/load", nil, 200)
	var p struct {
		Env map[string]string `json:"environment_variables"`
	}
	json.Unmarshal(final.body, &p)
	if p.Env["N"] != "1000000" {
		t.Fatalf("b serves N=%s after the compaction, want the last write 1000000", p.Env["N"])
	}
	if last := acks[len(acks)-1]; etagRev(final) <= last.rev {
		t.Fatalf("final revision %d is not above the last acknowledged %d", etagRev(final), last.rev)
	}
	t.Logf("%d writes acknowledged across the faults, none lost; last error seen by the writer: %.200s", len(acks), lastErr)
}
