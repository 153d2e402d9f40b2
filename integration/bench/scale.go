package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/guestd/server"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/transport"
)

// readEvery paces each reader of the scale figure.
const readEvery = 2 * time.Millisecond

// memReserveKiB is left free for everything else on the machine when
// deciding how many real guest daemons to start.
const memReserveKiB = 6 << 20

// scale: one host daemon with many connected agents: real guest daemon
// processes as far as memory allows, then the real guest server code
// in-process (each with its own state directory and unix socket).
func (b *bench) scale(ctx context.Context) error {
	if b.cfg.skipScale {
		b.add(row{"5. scale", "skipped (-skip-scale)", "", "", "", "—"})
		return nil
	}
	n := b.cfg.agents
	sdir := filepath.Join(b.dir, "s")
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		return err
	}
	sock := func(i int) string { return filepath.Join(sdir, fmt.Sprintf("%04d.sock", i)) }
	gdir := func(i int) string { return filepath.Join(sdir, fmt.Sprintf("%04d", i)) }

	// The guest daemons share one CPU group, as a KVM host's guests do.
	var (
		group    *cpuGroup
		groupErr error
	)
	if !b.cfg.flatGuests {
		g, err := newCPUGroup(fmt.Sprintf("vmpersona-bench-guests-%d", os.Getpid()))
		if err != nil {
			b.note("scale: the guest daemons ran beside hostd as plain processes: no CPU cgroup of their own (%v)", err)
		} else {
			group = g
			defer func() {
				if err := group.remove(); err != nil {
					slog.Warn("scale: removing the guests' CPU group", "dir", group.dir, "err", err)
				}
			}()
		}
	}

	// Real processes first, while memory allows.
	avail := memAvailableKiB()
	real := 0
	var guests []*proc
	startReal := func(i int) error {
		if err := os.MkdirAll(gdir(i), 0o700); err != nil {
			return err
		}
		p, err := b.ps.start(fmt.Sprintf("guestd-%04d", i), b.bins.guestd, "--listen", "unix:"+sock(i), "--state-dir", gdir(i),
			"--profile-file", filepath.Join(gdir(i), "profile.sh"), "--log-level", "error")
		if err != nil {
			return err
		}
		guests = append(guests, p)
		if group != nil {
			if err := group.add(p.pid()); err != nil && groupErr == nil {
				groupErr = fmt.Errorf("guest daemon %d: %w", i, err)
			}
		}
		return nil
	}
	limit := n
	for i := 0; i < n && i < limit; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := startReal(i); err != nil {
			slog.Warn("scale: cannot start more guest daemons", "started", i, "err", err)
			break
		}
		real = i + 1
		if real == 20 {
			// Estimate the memory of one from the first twenty.
			for j, p := range guests {
				if err := waitSocket(ctx, sock(j), p, 20*time.Second); err != nil {
					return err
				}
			}
			time.Sleep(500 * time.Millisecond)
			tot := 0
			for _, p := range guests {
				if k, err := rssKiB(p.pid()); err == nil {
					tot += k
				}
			}
			per := max(tot/len(guests), 1024)
			// Connected, each grows a little: count 1.5× the idle size.
			limit = max(20, (avail-memReserveKiB)*2/(per*3))
			slog.Info("scale: real guest daemons", "rss_each_kib", per, "mem_available_kib", avail, "limit", limit)
		}
	}
	for j, p := range guests {
		if err := waitSocket(ctx, sock(j), p, 30*time.Second); err != nil {
			return err
		}
	}
	// The rest in-process.
	gctx, gcancel := context.WithCancel(ctx)
	var gwg sync.WaitGroup
	defer func() { gcancel(); gwg.Wait() }()
	for i := real; i < n; i++ {
		if err := startInProcess(gctx, &gwg, gdir(i), sock(i)); err != nil {
			return fmt.Errorf("in-process guest %d: %w", i, err)
		}
	}
	how := fmt.Sprintf("%d real guestd processes", real)
	if real < n {
		how = fmt.Sprintf("%d real guestd processes + %d in-process guest servers", real, n-real)
	}
	slog.Info("scale: guests up", "agents", n, "how", how)
	if groupErr != nil {
		b.note("scale: not every guest daemon went into the guests' CPU group, first: %v", groupErr)
	}
	if group != nil {
		b.note("scale: the %d guest daemons ran in a CPU cgroup of their own (%s), as a KVM host's guests run under libvirt's machine.slice beside the host's services (-flat-guests: beside hostd as plain processes)", real, group.dir)
	}

	instances := make([]string, n)
	for i := range n {
		instances[i] = fmt.Sprintf("g%04d=unix:%s", i, sock(i))
	}
	hsock := filepath.Join(b.dir, "hostd-scale.sock")
	hp, err := b.startHostd(ctx, "hostd-scale-data", hsock, instances)
	if err != nil {
		return err
	}
	defer hp.stop()
	c := unixClient(hsock, n+16)
	defer c.CloseIdleConnections()
	t0 := time.Now()
	if err := waitConnected(ctx, c, n, 3*time.Minute); err != nil {
		return err
	}
	connectTime := time.Since(t0)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(3 * time.Second):
	}
	rss, err := rssKiB(hp.pid())
	if err != nil {
		return err
	}
	base := b.hostdRSS1
	perAgent := float64(rss-base) / float64(max(n-1, 1)) // KiB
	b.add(row{fmt.Sprintf("5. hostd RSS per connected agent (%d agents: %s)", n, how),
		fmt.Sprintf("%.1f KiB (RSS %.1f MiB)", perAgent, float64(rss)/1024),
		fmt.Sprintf("1 agent: %.1f MiB", float64(base)/1024), "", "≤ 64 KiB", metLE(perAgent, 64)})
	b.note("scale: %d agents connected %s after hostd started", n, connectTime.Round(time.Millisecond))

	// The idle agents' cost: every real guest daemon over one window, the
	// host pinging each once a heartbeat interval.
	window := 10 * time.Second
	if b.cfg.quick {
		window = 5 * time.Second
	}
	var idle0 time.Duration
	hIdle0, _ := sampleProc(hp.pid())
	for _, p := range guests {
		if sp, err := sampleProc(p.pid()); err == nil {
			idle0 += sp.cpu
		}
	}
	tw := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(window):
	}
	var idle1 time.Duration
	for _, p := range guests {
		if sp, err := sampleProc(p.pid()); err == nil {
			idle1 += sp.cpu
		}
	}
	hIdle1, _ := sampleProc(hp.pid())
	share := machineShare(idle1-idle0, time.Since(tw))
	b.add(row{fmt.Sprintf("1. %d idle connected agents' share of the machine (%d cores, %s)", len(guests), runtime.NumCPU(), window),
		fmt.Sprintf("%.2f %%", 100*share), fmt.Sprintf("hostd pinging them: %.2f %%", 100*machineShare(hIdle1.cpu-hIdle0.cpu, time.Since(tw))), "", "< 2 %", metLE(share, 0.02)})

	// Activation of one persona on all at once, in rounds alternating two
	// personas (each round a real change), reads meanwhile.
	for _, name := range []string{"scale-a", "scale-b"} {
		body := fmt.Sprintf(`{"name":%q,"environment_variables":{"SCALE":%q},"pre_activation_script":"#!/bin/sh\ntrue","post_activation_script":"#!/bin/sh\ntrue"}`, name, name)
		if _, err := do(ctx, c, "POST", "/personas", []byte(body), 201); err != nil {
			return err
		}
	}
	pre, post := filepath.Join(b.dir, "pre.sh"), filepath.Join(b.dir, "post.sh")
	for _, f := range []string{pre, post} {
		if err := os.WriteFile(f, []byte(trueScript+"\n"), 0o755); err != nil {
			return err
		}
	}
	refRate := func() *rate {
		return throughput(ctx, 32, b.cfg.segDur, 1, side{"scripts", func() error {
			if err := bareRun(pre); err != nil {
				return err
			}
			return bareRun(post)
		}})["scripts"]
	}
	ref1 := refRate()

	// Two readers meanwhile, each on its own connection: a persona (a
	// store read) and an instance (the agent manager's state), each 500
	// reads a second (a busy dashboard). Back to back, their own CPU and
	// hostd's for them took a share of the two cores that grew as reads
	// got faster, and the activation rate fell with it.
	readPaths := []string{"/personas/scale-a", "/instances/g%04d"}
	reads := []*scaleReads{{every: readEvery}, {every: readEvery}}
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	for j, rp := range readPaths {
		rc := unixClient(hsock, 2)
		defer rc.CloseIdleConnections()
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			k := 0
			reads[j].run(ctx, func() error {
				k++
				path := rp
				if strings.Contains(rp, "%") {
					path = fmt.Sprintf(rp, k%n)
				}
				_, err := do(ctx, rc, "GET", path, nil, 200)
				return err
			}, stop)
		}()
	}
	// Sessions that end meanwhile are false drops: every guest is alive.
	counter := func(name string) float64 {
		v, err := metric(ctx, c, name)
		if err != nil {
			return -1
		}
		return v
	}
	ended0, probed0 := counter("vmpersona_agent_sessions_ended_total"), counter(`vmpersona_agent_liveness_probes_total{outcome="answered"}`)
	// CPU spent meanwhile by hostd and the guest daemon processes (their
	// trivial scripts live too briefly for tick-based accounting).
	cpu := func() (h, g time.Duration) {
		h, _, _ = cpuTimes(hp.pid())
		for _, p := range guests {
			s, _, _ := cpuTimes(p.pid())
			g += s
		}
		return
	}
	const rounds = 5
	var (
		failed     int
		firstErr   error
		roundRates []float64
		totalEl    time.Duration
		hcpu, gcpu time.Duration
	)
	for r := range rounds {
		persona := []string{"scale-a", "scale-b"}[r%2]
		var errs atomic.Int64
		var first atomic.Value
		var wg sync.WaitGroup
		h0, g0 := cpu()
		ta := time.Now()
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := do(ctx, c, "POST", fmt.Sprintf("/instances/g%04d/personas/%s/activate", i, persona), nil, 200)
				if err != nil {
					errs.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}()
		}
		wg.Wait()
		el := time.Since(ta)
		h1, g1 := cpu()
		hcpu, gcpu, totalEl = hcpu+h1-h0, gcpu+g1-g0, totalEl+el
		failed += int(errs.Load())
		if e, ok := first.Load().(error); ok && firstErr == nil {
			firstErr = e
		}
		roundRates = append(roundRates, float64(n-int(errs.Load()))/el.Seconds())
		slog.Info("scale: activation round", "round", r+1, "persona", persona, "took", el.Round(time.Millisecond), "failed", errs.Load())
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	close(stop)
	rwg.Wait()
	ended1, probed1 := counter("vmpersona_agent_sessions_ended_total"), counter(`vmpersona_agent_liveness_probes_total{outcome="answered"}`)
	b.note("scale activation CPU over %d rounds: %.2f s wall × %d cores = %.2f s available; hostd used %.2f s, the %d guest daemon processes %.2f s (the scripts they ran are not counted)",
		rounds, totalEl.Seconds(), runtime.NumCPU(), float64(runtime.NumCPU())*totalEl.Seconds(), hcpu.Seconds(), len(guests), gcpu.Seconds())
	drops := "not counted (no vmpersona_agent_sessions_ended_total)"
	dropsN := -1.0
	if ended0 >= 0 && ended1 >= 0 {
		dropsN = ended1 - ended0
		drops = fmt.Sprintf("%.0f", dropsN)
	}
	probes := ""
	if probed0 >= 0 && probed1 >= 0 {
		probes = fmt.Sprintf("; %.0f silent agents probed and kept", probed1-probed0)
	}
	met := "NO"
	if dropsN == 0 && failed == 0 {
		met = "yes"
	}
	b.add(row{fmt.Sprintf("2. liveness under load: %d rounds activating all %d agents", rounds, n),
		fmt.Sprintf("%s false session drops, %d failed activations%s", drops, failed, probes), "", "", "0 drops, 0 failed", met})
	if failed > 0 {
		b.note("scale activation: %d of %d failed, first: %v", failed, rounds*n, firstErr)
	}
	ref2 := refRate()
	refPerSec := float64(ref1.ops+ref2.ops) / (ref1.elapsed + ref2.elapsed).Seconds()
	med := slices.Clone(roundRates)
	slices.Sort(med)
	actRate := med[len(med)/2]
	ratio := actRate / refPerSec
	rr := make([]string, len(roundRates))
	for i, v := range roundRates {
		rr[i] = fmt.Sprintf("%.0f", v)
	}
	b.add(row{fmt.Sprintf("5. activate one persona on all %d at once (median of %d rounds)", n, rounds),
		fmt.Sprintf("%.0f activations/s (rounds: %s /s)", actRate, strings.Join(rr, ", ")),
		fmt.Sprintf("pre+post spawned directly, 32 in flight: %.0f/s", refPerSec),
		fmt.Sprintf("%.2f×", ratio), "≥ 0.5×", metGE(ratio, 0.5)})
	for j, rp := range readPaths {
		r := reads[j]
		r.mu.Lock()
		p99, p50 := r.lat.pct(99), r.lat.pct(50)
		nreads, rerrs, rerr := len(r.lat), r.errs, r.err
		r.mu.Unlock()
		b.add(row{"5. API read p99 during those activations: GET " + strings.Replace(rp, "g%04d", "{id}", 1),
			fmt.Sprintf("%s (p50 %s, n=%d, %d errors)", ms(p99), ms(p50), nreads, rerrs), "", "", "< 50 ms", metLE(float64(p99)/1e6, 50)})
		if rerrs > 0 {
			b.note("scale reads %s: %d errors, first: %v", rp, rerrs, rerr)
		}
	}
	return nil
}

// startInProcess runs the real guest server code (state, audit spool,
// activation manager, unix transport, server) inside this process.
func startInProcess(ctx context.Context, wg *sync.WaitGroup, dir, sock string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	log := quietLogger()
	st, err := state.Open(dir)
	if err != nil {
		return err
	}
	spool, err := audit.Open(dir, audit.Limits{MaxEvents: audit.DefaultMaxEvents, MaxBytes: audit.DefaultMaxBytes}, log)
	if err != nil {
		return err
	}
	mgr, err := activation.New(activation.Config{Store: st, Spool: spool, ProfileFile: filepath.Join(dir, "profile.sh"),
		Environ: os.Environ(), ScriptTimeout: activation.DefaultScriptTimeout, Logger: log})
	if err != nil {
		spool.Close()
		return err
	}
	ep, err := transport.ParseEndpoint("unix:" + sock)
	if err != nil {
		spool.Close()
		return err
	}
	l, err := transport.Listen(ctx, ep, log)
	if err != nil {
		spool.Close()
		return err
	}
	srv := server.New(server.Config{Manager: mgr, Spool: spool, Limiter: execute.NewLimiter(64), BootID: "bench-" + filepath.Base(dir),
		MaxOutput: execute.DefaultMaxOutput, ExecTimeout: execute.DefaultTimeout, Logger: log})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer spool.Close()
		defer l.Close()
		_ = srv.Serve(ctx, l)
	}()
	return nil
}
