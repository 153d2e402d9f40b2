package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSamplesPct(t *testing.T) {
	var s samples
	for i := 100; i >= 1; i-- { // unsorted on purpose
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {1, time.Millisecond}} {
		if got := s.pct(tc.p); got != tc.want {
			t.Errorf("pct(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if s[0] != 100*time.Millisecond {
		t.Error("pct sorted the samples in place")
	}
	if (samples{}).pct(50) != 0 {
		t.Error("pct of no samples is not 0")
	}
}

func TestParseBenchOutput(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/vmpersona/vmpersona/guestd/routing
BenchmarkRoute/default-name-2         	  200000	      5508 ns/op	       0 B/op	       0 allocs/op
BenchmarkIngestGuestAudit-2   	     146	   7769893 ns/op	     12870 events/s
PASS
ok  	github.com/vmpersona/vmpersona/guestd/routing	3.1s
`
	res, order := parseBenchOutput(out)
	if len(order) != 2 || order[0] != "BenchmarkRoute/default-name-2" || order[1] != "BenchmarkIngestGuestAudit-2" {
		t.Fatalf("order = %q", order)
	}
	r := res["BenchmarkRoute/default-name-2"]
	if r["ns/op"] != "5508" || r["allocs/op"] != "0" || r["B/op"] != "0" {
		t.Errorf("routing metrics = %v", r)
	}
	if got := res["BenchmarkIngestGuestAudit-2"]["events/s"]; got != "12870" {
		t.Errorf("events/s = %q", got)
	}
}

func TestParseMetric(t *testing.T) {
	body := `# HELP vmpersona_audit_events_total Audit events stored.
# TYPE vmpersona_audit_events_total counter
vmpersona_audit_events_total{type="override"} 7
vmpersona_audit_events_total{type="activation"} 3
vmpersona_audit_events_total_extra 100
vmpersona_agents_connected 1000
`
	if v, err := parseMetric(body, "vmpersona_audit_events_total"); err != nil || v != 10 {
		t.Errorf("audit events = %v, %v; want 10 (labels summed, other families ignored)", v, err)
	}
	if v, err := parseMetric(body, "vmpersona_agents_connected"); err != nil || v != 1000 {
		t.Errorf("agents = %v, %v", v, err)
	}
	if _, err := parseMetric(body, "vmpersona_missing"); err == nil {
		t.Error("a missing metric is not an error")
	}
	if v, err := parseMetric(body, `vmpersona_audit_events_total{type="activation"}`); err != nil || v != 3 {
		t.Errorf("one label set = %v, %v; want 3", v, err)
	}
}

func TestProcFiles(t *testing.T) {
	rss, err := rssKiB(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("rssKiB(self) = %d, %v", rss, err)
	}
	// Burn a little CPU so that at least one tick is accounted.
	deadline := time.Now().Add(50 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
		_ = x * x
	}
	self, _, err := cpuTimes(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("cpuTimes(self) = %v, %v", self, err)
	}
	if memAvailableKiB() <= 0 {
		t.Error("no MemAvailable")
	}
	a, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for x := 0; x < 1000; x++ {
		time.Sleep(time.Microsecond) // a voluntary context switch each
	}
	b, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if b.switches-a.switches < 100 || b.cpu <= a.cpu {
		t.Errorf("sampleProc(self): %d context switches and %v CPU over 1,000 sleeps", b.switches-a.switches, b.cpu-a.cpu)
	}
}

// TestLatenciesInterleave checks that every side is measured n times and
// that the sides alternate in batches (not one after the other).
func TestLatenciesInterleave(t *testing.T) {
	var trace []string
	mk := func(name string) side {
		return side{name, func() error { trace = append(trace, name); return nil }}
	}
	res, err := latencies(context.Background(), 6, 2, mk("a"), mk("b"))
	if err != nil {
		t.Fatal(err)
	}
	if len(res["a"]) != 6 || len(res["b"]) != 6 {
		t.Fatalf("samples: a %d, b %d", len(res["a"]), len(res["b"]))
	}
	// Warm-up a, b; then rounds of 2: a a b b, b b a a, a a b b.
	want := "a b a a b b b b a a a a b b"
	if got := strings.Join(trace, " "); got != want {
		t.Errorf("order %q, want %q", got, want)
	}
	boom := errors.New("boom")
	if _, err := latencies(context.Background(), 1, 1, side{"x", func() error { return boom }}); !errors.Is(err, boom) {
		t.Errorf("error not passed on: %v", err)
	}
}

func TestThroughputCountsErrors(t *testing.T) {
	boom := errors.New("boom")
	n := 0
	res := throughput(context.Background(), 1, 20*time.Millisecond, 2, side{"x", func() error {
		n++
		if n%2 == 0 {
			return boom
		}
		return nil
	}})
	r := res["x"]
	if r.ops == 0 || r.errs == 0 || !errors.Is(r.firstErr, boom) {
		t.Errorf("ops %d errs %d first %v", r.ops, r.errs, r.firstErr)
	}
	if r.ops+r.errs != int64(n) {
		t.Errorf("ops+errs = %d, calls %d", r.ops+r.errs, n)
	}
	if r.elapsed < 40*time.Millisecond {
		t.Errorf("elapsed %v for two 20 ms segments", r.elapsed)
	}
}

// TestProcsStopAll starts real processes and checks that stopAll ends
// every one of them, by PID.
func TestProcsStopAll(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary on PATH: cannot start a test process")
	}
	ps := &procs{}
	var started []*proc
	for range 3 {
		p, err := ps.start("sleep", sleep, "60")
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, p)
	}
	ps.stopAll()
	for _, p := range started {
		if !p.exited() {
			t.Errorf("pid %d still running", p.pid())
		}
	}
	if len(ps.list) != 0 {
		t.Error("stopAll left processes registered")
	}
}

// TestServeBare runs the reference server's code (in the benchmark it runs
// in a child process; here in a goroutine, serving until the test binary
// exits) and reads the fixed bytes back.
func TestServeBare(t *testing.T) {
	dir := t.TempDir()
	body := filepath.Join(dir, "body.json")
	if err := os.WriteFile(body, []byte(`{"name":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "bare.sock")
	go serveBare([]string{sock, body, "application/json", `"3"`})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitSocket(ctx, sock, nil, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c := unixClient(sock, 2)
	got, err := do(ctx, c, "GET", "/personas/x", nil, 200)
	if err != nil || string(got) != `{"name":"x"}` {
		t.Fatalf("GET = %q, %v", got, err)
	}
	if _, err := do(ctx, c, "GET", "/other", nil, 200); err == nil {
		t.Error("an unknown path answered 200")
	}
	if code := serveBare([]string{"too", "few"}); code != 2 {
		t.Errorf("bad arguments: exit code %d", code)
	}
}
