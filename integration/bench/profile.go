package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/daemon"
	"github.com/vmpersona/vmpersona/internal/testpersona"
)

// profileRun runs the host daemon and the guest server code in this one
// process and writes CPU, mutex and block profiles of each scenario into
// out: exec.cpu.pprof, exec32.cpu.pprof, activate.cpu.pprof, get.cpu.pprof
// (and .mutex/.block snapshots taken after each scenario; compare two with
// `go tool pprof -base`). The profiles show where the time of the figures
// the table misses goes, across client, host daemon and guest server.
func profileRun(ctx context.Context, out string, dur time.Duration, agents int) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "vmpprof-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	gctx, gcancel := context.WithCancel(ctx)
	var gwg sync.WaitGroup
	defer func() { gcancel(); gwg.Wait() }()
	instances := []string{}
	for i := range max(agents, 1) {
		s := filepath.Join(dir, fmt.Sprintf("g%d.sock", i))
		if err := startInProcess(gctx, &gwg, filepath.Join(dir, fmt.Sprintf("g%d", i)), s); err != nil {
			return err
		}
		instances = append(instances, fmt.Sprintf("g%d=unix:%s", i, s))
	}
	hsock := filepath.Join(dir, "hostd.sock")
	dctx, dcancel := context.WithCancel(ctx)
	derr := make(chan error, 1)
	go func() {
		derr <- daemon.Run(dctx, daemon.Config{DataDir: filepath.Join(dir, "data"), UnixSocket: hsock, Instances: instances,
			Heartbeat: 2 * time.Second, ScriptTimeout: time.Minute, Logger: quietLogger()})
	}()
	defer func() { dcancel(); <-derr }()
	if err := waitSocket(ctx, hsock, nil, 30*time.Second); err != nil {
		return err
	}
	c := unixClient(hsock, 64+agents)
	if err := waitConnected(ctx, c, len(instances), time.Minute); err != nil {
		return err
	}
	api, err := apiclient.New(apiclient.Config{URL: "unix:" + hsock})
	if err != nil {
		return err
	}
	defer api.Close()
	for _, n := range []string{"big-a", "big-b"} {
		if _, err := api.CreatePersona(ctx, testpersona.Large(n, true)); err != nil {
			return err
		}
	}
	runtime.SetMutexProfileFraction(5)
	runtime.SetBlockProfileRate(int(50 * time.Microsecond))

	loop := func(fn func() error) func() error {
		return func() error {
			stop := time.Now().Add(dur)
			n := 0
			for time.Now().Before(stop) {
				if err := fn(); err != nil {
					return err
				}
				n++
			}
			slog.Info("profile scenario", "ops", n, "per_op", (dur / time.Duration(max(n, 1))).String())
			return nil
		}
	}
	k := 0
	scenarios := []struct {
		name string
		fn   func() error
	}{
		{"exec", loop(func() error {
			_, err := api.Exec(ctx, "g0", apitypes.ExecRequest{Command: "/bin/true", Args: []string{}})
			return err
		})},
		{"exec32", func() error {
			r := throughput(ctx, 32, dur, 1, side{"x", func() error {
				_, err := do(ctx, c, "POST", "/instances/g0/exec", execTrueBody, 200)
				return err
			}})["x"]
			slog.Info("profile scenario", "ops", r.ops, "rate", r.perSec(), "errs", r.errs, "first", r.firstErr)
			return nil
		}},
		{"activate", loop(func() error {
			k++
			_, err := api.Activate(ctx, "g0", []string{"big-a", "big-b"}[k%2], apiclient.ActivateOptions{})
			return err
		})},
		{"get", func() error {
			r := throughput(ctx, 16, dur, 1, side{"x", func() error {
				_, err := do(ctx, c, "GET", "/personas/big-a", nil, 200)
				return err
			}})["x"]
			slog.Info("profile scenario", "ops", r.ops, "rate", r.perSec(), "errs", r.errs)
			return nil
		}},
	}
	if agents > 1 {
		scenarios = append(scenarios, struct {
			name string
			fn   func() error
		}{"activate-all", func() error {
			if _, err := do(ctx, c, "POST", "/personas", []byte(`{"name":"scale","pre_activation_script":"#!/bin/sh\ntrue","post_activation_script":"#!/bin/sh\ntrue"}`), 201); err != nil {
				return err
			}
			var wg sync.WaitGroup
			t := time.Now()
			// Where the requests wait, a second into the storm.
			go func() {
				time.Sleep(time.Second)
				if f, err := os.Create(filepath.Join(out, "activate-all.goroutines.txt")); err == nil {
					_ = pprof.Lookup("goroutine").WriteTo(f, 1)
					f.Close()
				}
			}()
			for i := range agents {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := do(ctx, c, "POST", fmt.Sprintf("/instances/g%d/personas/scale/activate", i), nil, 200); err != nil {
						slog.Warn("activate-all", "err", err)
					}
				}()
			}
			wg.Wait()
			slog.Info("profile scenario", "agents", agents, "took", time.Since(t))
			return nil
		}})
	}
	for _, s := range scenarios {
		f, err := os.Create(filepath.Join(out, s.name+".cpu.pprof"))
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		slog.Info("profiling", "scenario", s.name)
		err = s.fn()
		pprof.StopCPUProfile()
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		for _, p := range []string{"mutex", "block"} {
			pf, err := os.Create(filepath.Join(out, s.name+"."+p+".pprof"))
			if err != nil {
				return err
			}
			_ = pprof.Lookup(p).WriteTo(pf, 0)
			pf.Close()
		}
	}
	return nil
}
