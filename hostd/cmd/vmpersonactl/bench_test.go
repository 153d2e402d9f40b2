package main

import (
	"context"
	"io"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// Benchmarks of the paths a user waits on, against the real daemons:
// through the typed client (REST over the unix socket, the host daemon, the
// guest protocol, a process in the "guest") and through the vmpersonactl
// binary (plus its own start). Each also reports p50 and p99.

var startDaemonsB = startDaemons

func reportQuantiles(b *testing.B, ds []time.Duration) {
	b.Helper()
	if len(ds) == 0 {
		return
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	q := func(p float64) float64 { return float64(ds[int(p*float64(len(ds)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

func benchClient(b *testing.B, d *daemons) *apiclient.Client {
	b.Helper()
	c, err := apiclient.New(apiclient.Config{URL: "unix:" + d.sock})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c
}

func BenchmarkClientExecTrue(b *testing.B) {
	d := startDaemonsB(b, true)
	c := benchClient(b, d)
	ctx := context.Background()
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "/bin/true"})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("exec: %+v %v", res, err)
		}
		ds = append(ds, time.Since(start))
	}
	reportQuantiles(b, ds)
}

func BenchmarkClientExecStreamTrue(b *testing.B) {
	d := startDaemonsB(b, true)
	c := benchClient(b, d)
	ctx := context.Background()
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := c.ExecStream(ctx, "vm1", apitypes.ExecRequest{Command: "/bin/true"}, io.Discard, io.Discard)
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("exec: %+v %v", res, err)
		}
		ds = append(ds, time.Since(start))
	}
	reportQuantiles(b, ds)
}

func BenchmarkClientGetPersona(b *testing.B) {
	d := startDaemonsB(b, false)
	c := benchClient(b, d)
	ctx := context.Background()
	if _, err := c.CreatePersona(ctx, protocol.Persona{Name: "bench", RestrictedCommands: []string{"rm"}}); err != nil {
		b.Fatal(err)
	}
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := c.GetPersona(ctx, "bench"); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	reportQuantiles(b, ds)
}

// The whole command as a user types it: process start, flag parsing,
// connection, exec, exit.
func BenchmarkCLIExecTrue(b *testing.B) {
	d := startDaemonsB(b, true)
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		cmd := exec.Command(bins.ctl, "exec", "vm1", "--", "/bin/true")
		cmd.Env = []string{"VMPERSONA_SOCKET=" + d.sock}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("vmpersonactl exec: %v %s", err, out)
		}
		ds = append(ds, time.Since(start))
	}
	reportQuantiles(b, ds)
}
