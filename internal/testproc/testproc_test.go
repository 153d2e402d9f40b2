package testproc

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestOutputKeepsTheLatestPastItsLimit(t *testing.T) {
	o := &Output{Limit: 8}
	o.Write([]byte("0123456789"))
	o.Write([]byte("tail"))
	if got := o.String(); got != "tail" {
		t.Fatalf("String() = %q, want the output after the reset", got)
	}
	u := &Output{}
	u.Write([]byte(strings.Repeat("x", 100)))
	u.Write([]byte("y"))
	if got := u.String(); len(got) != 101 {
		t.Fatalf("without a limit kept %d bytes, want 101", len(got))
	}
}

func TestKillEndsTheProcess(t *testing.T) {
	out := &Output{}
	cmd := exec.Command("/bin/sh", "-c", "echo started; exec sleep 60")
	cmd.Stdout = out
	p := Start(t, cmd)
	WaitFor(t, "the process to start", func() bool { return out.String() == "started\n" })
	if p.Exited() {
		t.Fatal("Exited() before the process was ended")
	}
	p.Kill()
	if !p.Exited() {
		t.Fatal("Exited() false after Kill")
	}
}

// A process that ignores SIGTERM is killed once the grace period is over.
func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	out := &Output{}
	cmd := exec.Command("/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	cmd.Stdout = out
	p := Start(t, cmd)
	WaitFor(t, "the trap to be set", func() bool { return out.String() == "ready\n" })
	p.Stop(100 * time.Millisecond)
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned with the process running")
	}
	p.Stop(time.Second) // a second Stop waits and signals nothing
}
