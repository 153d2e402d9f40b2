package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procSample is what a process has used so far, over all its threads.
type procSample struct {
	switches int64         // voluntary + nonvoluntary context switches
	cpu      time.Duration // time on a CPU
}

// sampleProc sums /proc/PID/task/*/status context switches and
// /proc/PID/task/*/schedstat run time (nanoseconds; utime+stime from
// /proc/PID/stat, in ticks, where schedstat is missing). Threads that ended
// before the sample are not counted: for an idle process, nothing.
func sampleProc(pid int) (procSample, error) {
	var s procSample
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return s, err
	}
	schedstat := true
	for _, t := range tasks {
		dir := filepath.Join(fmt.Sprintf("/proc/%d/task", pid), t.Name())
		b, err := os.ReadFile(filepath.Join(dir, "status"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			for _, k := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if v, ok := strings.CutPrefix(l, k); ok {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					s.switches += n
				}
			}
		}
		if b, err := os.ReadFile(filepath.Join(dir, "schedstat")); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				s.cpu += time.Duration(n)
			}
		} else {
			schedstat = false
		}
	}
	if !schedstat {
		self, _, err := cpuTimes(pid)
		if err != nil {
			return s, err
		}
		s.cpu = self
	}
	return s, nil
}

// idleRates samples processes twice, d apart: context switches per second
// and CPU milliseconds per second of each.
func idleRates(ctx context.Context, d time.Duration, pids ...int) (switches, cpuMs []float64, err error) {
	before := make([]procSample, len(pids))
	for i, p := range pids {
		if before[i], err = sampleProc(p); err != nil {
			return nil, nil, err
		}
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	case <-time.After(d):
	}
	el := time.Since(t0).Seconds()
	for i, p := range pids {
		a, err := sampleProc(p)
		if err != nil {
			return nil, nil, err
		}
		switches = append(switches, float64(a.switches-before[i].switches)/el)
		cpuMs = append(cpuMs, float64(a.cpu-before[i].cpu)/1e6/el)
	}
	return switches, cpuMs, nil
}

// idle: a connected guest daemon with no traffic beside qemu-ga, both over
// the same window, while a third guest daemon is stopped (SIGSTOP) under a
// host daemon of its own to measure how long a hung guest takes to be
// noticed.
func (b *bench) idle(ctx context.Context) error {
	window := 10 * time.Second
	if b.cfg.quick {
		window = 5 * time.Second
	}
	hung := make(chan error, 1)
	go func() { hung <- b.hungGuest(ctx) }()
	sw, cpu, err := idleRates(ctx, window, b.guestd.pid(), b.qgad.pid())
	if err != nil {
		return err
	}
	// The target counts the daemon's own wakeups and answering the
	// host's heartbeat: this window holds both (the next row, none due,
	// the daemon's own alone).
	b.add(row{fmt.Sprintf("1. idle guestd (connected, host heartbeat %s): context switches/s, all threads, %s", b.cfg.heartbeat, window),
		fmt.Sprintf("%.1f/s (≈ %.1f per heartbeat answered)", sw[0], sw[0]*b.cfg.heartbeat.Seconds()),
		fmt.Sprintf("qemu-ga %.1f/s", sw[1]), "", "≤ 3/s", metLE(sw[0], 3)})
	b.add(row{"1. idle guestd CPU", fmt.Sprintf("%.3f ms/s", cpu[0]), fmt.Sprintf("qemu-ga %.3f ms/s", cpu[1]), "", "reported", "—"})
	return <-hung
}

// hungGuest: a connected guest daemon is stopped with SIGSTOP; the figure is
// the time until its host daemon reports the agent no longer connected.
func (b *bench) hungGuest(ctx context.Context) error {
	sock, g, err := b.startGuest(ctx, "hung")
	if err != nil {
		return err
	}
	defer g.stop()
	hsock := filepath.Join(b.dir, "hostd-hung.sock")
	hp, err := b.startHostd(ctx, "hostd-hung-data", hsock, []string{"hung=unix:" + sock})
	if err != nil {
		return err
	}
	defer hp.stop()
	c := unixClient(hsock, 2)
	defer c.CloseIdleConnections()
	if err := waitConnected(ctx, c, 1, 30*time.Second); err != nil {
		return err
	}
	if err := g.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	defer g.cmd.Process.Signal(syscall.SIGCONT)
	t0 := time.Now()
	for {
		v, err := metric(ctx, c, "vmpersona_agents_connected")
		if err == nil && v < 1 {
			break
		}
		if time.Since(t0) > time.Minute {
			return fmt.Errorf("the stopped guest still counts as connected after %s", time.Since(t0).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	d := time.Since(t0)
	b.add(row{"2. a hung guest (SIGSTOP) is noticed: agent no longer connected after",
		fmt.Sprintf("%.1f s", d.Seconds()), fmt.Sprintf("heartbeat %s: silence 3 intervals + probe 3 intervals", b.cfg.heartbeat), "", "reported", "—"})
	return nil
}

// machineShare is the share of the whole machine (all CPUs) that cpu over
// wall represents.
func machineShare(cpu, wall time.Duration) float64 {
	return float64(cpu) / (float64(wall) * float64(runtime.NumCPU()))
}
