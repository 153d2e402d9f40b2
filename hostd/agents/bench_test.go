package agents

import (
	"context"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// reportLatencies adds p50 and p99 of per-operation latencies to a benchmark.
func reportLatencies(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkExecTrue runs /bin/true in the real guest daemon through the
// manager: the host's full exec round trip over a unix socket. audited: the
// guest records every exec (--audit-exec), which the host ingests meanwhile.
func BenchmarkExecTrue(b *testing.B) {
	for _, bc := range []struct {
		name string
		args []string
	}{{"plain", nil}, {"audited", []string{"--audit-exec"}}} {
		b.Run(bc.name, func(b *testing.B) {
			g := newGuest(b, bc.args...)
			h := newHost(b, nil)
			h.add("vm", g.endpoint())
			h.waitState("vm", StateConnected)
			ctx := context.Background()
			req := protocol.Exec{Command: "/bin/true"}
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				res, err := h.m.Exec(ctx, "vm", req, nil)
				lat = append(lat, time.Since(start))
				if err != nil || res.ExitCode != 0 {
					b.Fatalf("exec: %+v, %v", res, err)
				}
			}
			reportLatencies(b, lat)
		})
	}
}

// BenchmarkLocalExecTrue is the floor: the same process started locally.
func BenchmarkLocalExecTrue(b *testing.B) {
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	reportLatencies(b, lat)
}
