package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/transport"
	"github.com/vmpersona/vmpersona/protocol"
)

// hangGuard bounds the waits below: a limit on a hang, not a timing
// assertion.
const hangGuard = 30 * time.Second

// TestExecRoutedAgainAfterWaitingForASlot: an exec that waited for a free
// slot is routed again under the persona active when it gets the slot (the
// guarantee of the exec handler). A persona that restricts the command while
// the exec waits denies it, and the command never runs.
func TestExecRoutedAgainAfterWaitingForASlot(t *testing.T) {
	dir := t.TempDir()
	store, err := state.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	spool, err := audit.Open(filepath.Join(dir, "state"), audit.Limits{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { spool.Close() })
	mgr, err := activation.New(activation.Config{Store: store, Spool: spool, Environ: os.Environ(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	limiter := execute.NewQueuedLimiter(1, 4) // one exec at a time
	srv := New(Config{Manager: mgr, Spool: spool, Limiter: limiter, BootID: "boot", Logger: quiet})

	sock := filepath.Join(dir, "g.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 2*hangGuard)
	defer cancel()
	l, err := transport.Listen(ctx, transport.Endpoint{Kind: transport.KindUnix, Path: sock}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	defer func() {
		cancel()
		l.Close()
		<-served
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c, err := protocol.Handshake(ctx, conn, protocol.ClientConfig{HostVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(nil)

	// The first exec holds the only slot: cat blocks opening a FIFO until
	// the test opens its other end.
	fifo := filepath.Join(dir, "hold")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() {
		var res protocol.ExecResult
		first <- c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: "cat", Args: []string{fifo}}, &res, nil)
	}()
	var hold *os.File
	for deadline := time.Now().Add(hangGuard); hold == nil; time.Sleep(5 * time.Millisecond) {
		// Opening for writing without blocking succeeds once cat has the
		// FIFO open for reading.
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			hold = f
		} else if time.Now().After(deadline) {
			t.Fatalf("the first exec never started: %v", err)
		}
	}

	// The second exec waits for the slot; the command is not restricted yet.
	marker := filepath.Join(dir, "ran")
	second := make(chan error, 1)
	go func() {
		var res protocol.ExecResult
		second <- c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: "touch", Args: []string{marker}}, &res, nil)
	}()
	for deadline := time.Now().Add(hangGuard); limiter.Waiting() != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second exec never waited for the slot")
		}
	}

	// While it waits, a persona restricting touch becomes active.
	if res := mgr.Activate(ctx, protocol.Activate{Persona: protocol.Persona{Name: "locked", RestrictedCommands: []string{"touch"}}, ActivationID: "a1"}); res.Result != protocol.ResultActivated {
		t.Fatalf("activation: %+v", res)
	}
	hold.Close() // cat reads EOF and exits: the slot frees
	if err := <-first; err != nil {
		t.Fatalf("first exec: %v", err)
	}

	err = <-second
	var pe *protocol.Error
	if !errors.As(err, &pe) || pe.Code != protocol.CodeDenied || pe.Persona != "locked" {
		t.Errorf("the exec that waited: %v; want denied by persona locked", err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("touch ran although the persona active when it got its slot restricts it")
	}
}
