package main

import (
	"context"
	"fmt"
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

// measure runs op b.N times and reports the quantiles of its duration.
func measure(b *testing.B, op func() error) {
	b.Helper()
	ds := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := op(); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
	}
	reportQuantiles(b, ds)
}

// execFailure is an exec that failed or whose command did.
func execFailure(res apitypes.ExecResult, err error) error {
	if err != nil || res.ExitCode != 0 {
		return fmt.Errorf("exec: %+v %v", res, err)
	}
	return nil
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
	measure(b, func() error {
		res, err := c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "/bin/true"})
		return execFailure(res, err)
	})
}

func BenchmarkClientExecStreamTrue(b *testing.B) {
	d := startDaemonsB(b, true)
	c := benchClient(b, d)
	ctx := context.Background()
	measure(b, func() error {
		res, err := c.ExecStream(ctx, "vm1", apitypes.ExecRequest{Command: "/bin/true"}, io.Discard, io.Discard)
		return execFailure(res, err)
	})
}

func BenchmarkClientGetPersona(b *testing.B) {
	d := startDaemonsB(b, false)
	c := benchClient(b, d)
	ctx := context.Background()
	if _, err := c.CreatePersona(ctx, protocol.Persona{Name: "bench", RestrictedCommands: []string{"rm"}}); err != nil {
		b.Fatal(err)
	}
	measure(b, func() error {
		_, err := c.GetPersona(ctx, "bench")
		return err
	})
}

// The whole command as a user types it: process start, flag parsing,
// connection, exec, exit.
func BenchmarkCLIExecTrue(b *testing.B) {
	d := startDaemonsB(b, true)
	measure(b, func() error {
		cmd := exec.Command(bins.ctl, "exec", "vm1", "--", "/bin/true")
		cmd.Env = []string{"VMPERSONA_SOCKET=" + d.sock}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("vmpersonactl exec: %v %s", err, out)
		}
		return nil
	})
}
