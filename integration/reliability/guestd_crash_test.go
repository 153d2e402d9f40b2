package reliability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// dialGuest opens a protocol session with a guest daemon on a unix socket.
func dialGuest(t testing.TB, sock string) *protocol.Client {
	t.Helper()
	var err error
	// The guest serves one session at a time: a connection made while it
	// still tears down the previous one (waitSocket's probe) is closed.
	for attempt := 0; attempt < 20; attempt++ {
		var c *protocol.Client
		if c, err = dialGuestOnce(sock); err == nil {
			t.Cleanup(func() { c.Close(nil) })
			return c
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal(err)
	return nil
}

func dialGuestOnce(sock string) (*protocol.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	return protocol.Handshake(ctx, conn, protocol.ClientConfig{HostVersion: "reliability", Heartbeat: time.Second,
		OnAudit: func(b protocol.AuditBatch) (uint64, error) {
			var up uint64
			for _, ev := range b.Events {
				up = max(up, ev.Seq)
			}
			return up, nil
		}})
}

func guestExec(ctx context.Context, c *protocol.Client, cmd string, args ...string) (protocol.ExecResult, error) {
	var res protocol.ExecResult
	err := c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: cmd, Args: args, TimeoutMillis: 10000}, &res, nil)
	return res, err
}

// crashPersona: persona X exports VP_PERSONA=X, restricts its own command,
// and runs pre- and post-activation scripts that sleep a few random ms.
func crashPersona(name, restricted string) protocol.Persona {
	pre := fmt.Sprintf("#!/bin/sh\nsleep 0.00%d\n", 1+rand.IntN(8))
	post := fmt.Sprintf("#!/bin/sh\nsleep 0.00%d\ntest \"$VP_PERSONA\" = %s\n", 1+rand.IntN(8), name)
	return protocol.Persona{
		Name:                 name,
		EnvironmentVariables: map[string]string{"VP_PERSONA": name},
		PreActivationScript:  pre, PostActivationScript: post,
		RestrictedCommands: []string{restricted},
		CommandOverrides:   map[string]string{"whoami-persona": "#!/bin/sh\necho " + name},
	}
}

// TestGuestdCrashConsistency kills the real guest daemon with SIGKILL at a
// random moment of an activation (before, during or after the pre-activation
// script, the post-activation script, the state write) and restarts it on
// the same state directory. The guest must then hold exactly the old or the
// new persona (the new one if the activation had been acknowledged), and
// what it runs must agree with what it reports: `env` shows that persona's
// variable, that persona's restricted command is denied and the other's is
// not, the override answers with its name. RELIABILITY_GUEST_TRIALS sets
// the number of trials (50 in `make test`, 300 in `make reliability`).
func TestGuestdCrashConsistency(t *testing.T) {
	parallel(t)
	trials := envInt("RELIABILITY_GUEST_TRIALS", pick(50, 300))
	dir := testproc.ShortDir(t)
	restricted := map[string]string{"alpha": "shred", "beta": "truncate"}
	start := func() (*proc, *protocol.Client) {
		p, ep := startGuest(t, dir, "--script-timeout", "10s")
		return p, dialGuest(t, strings.TrimPrefix(ep, "unix:"))
	}
	p, c := start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var res protocol.ActivateResult
	if err := c.Call(ctx, protocol.TypeActivate, protocol.Activate{Persona: crashPersona("alpha", "shred"), Revision: 1, ActivationID: "init"}, &res, nil); err != nil || res.Result != "activated" {
		t.Fatalf("first activation: %v %+v", err, res)
	}
	current := "alpha"
	outcome := map[string]int{}
	for trial := 0; trial < trials; trial++ {
		next := map[string]string{"alpha": "beta", "beta": "alpha"}[current]
		delay := time.Duration(rand.IntN(80000)) * time.Microsecond
		acked := make(chan bool, 1)
		go func() {
			var r protocol.ActivateResult
			err := c.Call(ctx, protocol.TypeActivate, protocol.Activate{Persona: crashPersona(next, restricted[next]),
				Revision: uint64(trial + 2), ActivationID: fmt.Sprintf("t%d", trial)}, &r, nil)
			acked <- err == nil && r.Result == "activated"
		}()
		time.Sleep(delay)
		p.Kill()
		c.Close(errors.New("guest killed"))
		wasAcked := <-acked

		p, c = start()
		ack := c.Hello()
		if ack.Active == nil {
			t.Fatalf("trial %d (kill after %v): the guest reports no persona; it held %s and was activating %s", trial, delay, current, next)
		}
		got := ack.Active.Persona.Name
		if got != current && got != next {
			t.Fatalf("trial %d: the guest reports persona %q, neither %s nor %s", trial, got, current, next)
		}
		if wasAcked && got != next {
			t.Fatalf("trial %d (kill after %v): activation of %s was acknowledged, but after the restart the guest holds %s", trial, delay, next, got)
		}
		switch {
		case got == next && wasAcked:
			outcome["new (acknowledged)"]++
		case got == next:
			outcome["new (not acknowledged)"]++
		default:
			outcome["old"]++
		}
		// What runs agrees with what is reported.
		r, err := guestExec(ctx, c, "env")
		if err != nil {
			t.Fatalf("trial %d: env: %v", trial, err)
		}
		if !strings.Contains(r.Stdout, "VP_PERSONA="+got+"\n") {
			t.Fatalf("trial %d: guest reports %s but env shows:\n%s", trial, got, r.Stdout)
		}
		var pe *protocol.Error
		if _, err := guestExec(ctx, c, restricted[got], "--version"); !errors.As(err, &pe) || pe.Code != protocol.CodeDenied {
			t.Fatalf("trial %d: guest reports %s but its restricted %s was not denied: %v", trial, got, restricted[got], err)
		}
		other := restricted[map[string]string{"alpha": "beta", "beta": "alpha"}[got]]
		if r, err := guestExec(ctx, c, other, "--version"); err != nil || r.ExitCode != 0 {
			t.Fatalf("trial %d: guest reports %s but %s (restricted only in the other persona) failed: %v %+v", trial, got, other, err, r)
		}
		if r, err := guestExec(ctx, c, "whoami-persona"); err != nil || strings.TrimSpace(r.Stdout) != got {
			t.Fatalf("trial %d: guest reports %s but the override answers %q (%v)", trial, got, r.Stdout, err)
		}
		current = got
	}
	// No temporary files left to grow without bound.
	ents, _ := os.ReadDir(filepath.Join(dir, "state"))
	tmps := 0
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			tmps++
		}
	}
	t.Logf("%d kill -9 trials: outcomes %v; %d temporary files left in the state directory", trials, outcome, tmps)
}
