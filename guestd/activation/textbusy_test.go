package activation

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/protocol"
)

// A process forked by another goroutine while a script file is being written
// inherits its write descriptor until it execs; executing the script then
// fails with "text file busy" (ETXTBSY). Activations that materialise new
// scripts and inline overrides while other goroutines exec continuously must
// never see it: neither the scripts, nor the overrides run right after.
func TestNoTextFileBusyUnderConcurrentExecs(t *testing.T) {
	m, _ := newManager(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var execs atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := execute.Run(context.Background(), execute.Spec{Path: "/bin/true", Env: []string{}}); err != nil {
					t.Errorf("exec /bin/true: %v", err)
					return
				}
				execs.Add(1)
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	rounds := 100
	if testing.Short() {
		rounds = 40
	}
	for i := range rounds {
		// New content each round: new files are written every time.
		script := fmt.Sprintf("#!/bin/sh\n# round %d\nexit 0\n", i)
		override := fmt.Sprintf("#!/bin/sh\n# override %d\necho ov%d\n", i, i)
		res := m.Activate(ctx, protocol.Activate{
			ActivationID: fmt.Sprint(i),
			Persona: protocol.Persona{
				Name:                 "busy",
				PreActivationScript:  script,
				PostActivationScript: fmt.Sprintf("exit 0 # sh script %d\n", i),
				CommandOverrides:     map[string]string{"vmp-ov": override},
			},
		})
		if res.Result != protocol.ResultActivated {
			t.Fatalf("round %d: %s phase=%s script=%+v error=%s", i, res.Result, res.Phase, res.Script, res.Error)
		}
		d := m.View().Table.Route("vmp-ov", "/")
		out, err := execute.Run(context.Background(), execute.Spec{Path: d.Override.Path, Args: []string{"vmp-ov"}, Env: []string{}})
		if err != nil {
			t.Fatalf("round %d: override: %v", i, err)
		}
		if got := strings.TrimSpace(string(out.Stdout)); got != fmt.Sprintf("ov%d", i) {
			t.Fatalf("round %d: override printed %q (stderr %q)", i, got, out.Stderr)
		}
	}
	if execs.Load() == 0 {
		t.Fatal("no concurrent exec ran")
	}
}
