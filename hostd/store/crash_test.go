package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/protocol"
)

// crashDirEnv switches the test binary into the writer of TestKill9Durability.
const crashDirEnv = "VMPERSONA_STORE_CRASH_WRITER_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		os.Exit(crashWriter(dir))
	}
	os.Exit(m.Run())
}

// crashWriter writes for ever, printing each write once the store has
// answered it, until it is killed.
func crashWriter(dir string) int {
	s, err := Open(dir, Options{Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return 2
	}
	ack := func(format string, args ...any) {
		// Unbuffered: the line is in the pipe before the next write starts.
		fmt.Fprintf(os.Stdout, format+"\n", args...)
	}
	fail := func(what string, err error) int {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		return 3
	}
	for i := 0; ; i++ {
		p := persona(fmt.Sprintf("p-%d", i))
		if _, err := s.CreatePersona(p); err != nil {
			return fail("create", err)
		}
		ack("persona %s", p.Name)

		p.EnvironmentVariables = map[string]string{"I": strconv.Itoa(i)}
		up, err := s.UpdatePersona(p, 1)
		if err != nil {
			return fail("update", err)
		}
		ack("revision %s %d", p.Name, up.Revision)

		evs, err := s.AppendAudit(AuditEvent{Type: AuditPersonaCreated, Persona: p.Name})
		if err != nil {
			return fail("audit", err)
		}
		ack("audit %s", evs[0].ID)

		upTo, _, err := s.IngestGuestAudit("vm", protocol.AuditBatch{SpoolID: "spool", Events: guestEvents(uint64(i)*10+1, uint64(i)*10+10)})
		if err != nil {
			return fail("ingest", err)
		}
		ack("guest %d", upTo)

		inst := fmt.Sprintf("vm-%d", i)
		if err := s.PutInstance(InstanceRecord{Instance: inst, Persona: &up, Revision: up.Revision},
			AuditEvent{Type: AuditActivationRequested, Persona: up.Name}); err != nil {
			return fail("instance", err)
		}
		ack("instance %s", inst)
	}
}

// TestKill9Durability runs a writer process, kills it with SIGKILL in the
// middle of its writes, reopens the store and checks that every write the
// writer had been answered is there.
func TestKill9Durability(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the kill -9 test starts a writer process")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	const killAfter = 400 // acknowledged writes
	var acks []string
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		acks = append(acks, sc.Text())
		if len(acks) == killAfter && !killed {
			if err := cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			killed = true
		}
		// Lines already in the pipe when the kill lands were answered too:
		// keep reading to EOF.
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("writer did not finish in time; %d acks; stderr: %s", len(acks), stderr.String())
	}
	if !killed {
		t.Fatalf("writer exited by itself after %d acks (%v); stderr: %s", len(acks), werr, stderr.String())
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.ProcessState.String() != "signal: killed" {
		t.Fatalf("writer ended with %v, want killed by SIGKILL", werr)
	}

	s := openAt(t, dir, Options{})
	var maxUpTo uint64
	checked := 0
	for _, line := range acks {
		f := strings.Fields(line)
		switch f[0] {
		case "persona":
			if _, err := s.GetPersona(f[1]); err != nil {
				t.Errorf("acknowledged persona %s lost: %v", f[1], err)
			}
		case "revision":
			p, err := s.GetPersona(f[1])
			if want, _ := strconv.ParseUint(f[2], 10, 64); err != nil || p.Revision != want || p.EnvironmentVariables["I"] == "" {
				t.Errorf("acknowledged update of %s to revision %s lost: rev %d, %v", f[1], f[2], p.Revision, err)
			}
		case "audit":
			err := s.db.View(func(txn *badger.Txn) error { _, err := txn.Get(auditKey(f[1])); return err })
			if err != nil {
				t.Errorf("acknowledged audit event %s lost: %v", f[1], err)
			}
		case "guest":
			maxUpTo, _ = strconv.ParseUint(f[1], 10, 64)
		case "instance":
			if _, err := s.GetInstance(f[1]); err != nil {
				t.Errorf("acknowledged instance record %s lost: %v", f[1], err)
			}
		default:
			t.Fatalf("unexpected writer line %q", line)
		}
		checked++
	}
	// Every instance record on disk, acknowledged or not, came with its
	// audit event, and no event without its record: they were one commit.
	recs, err := s.ListInstances()
	if err != nil {
		t.Fatal(err)
	}
	requested, err := s.QueryAudit(AuditQuery{Type: AuditActivationRequested, Limit: MaxAuditLimit})
	if err != nil {
		t.Fatal(err)
	}
	withEvent := map[string]int{}
	for _, ev := range requested {
		withEvent[ev.Instance]++
	}
	for _, r := range recs {
		if r.Instance != "vm" && withEvent[r.Instance] != 1 {
			t.Errorf("instance record %s has %d audit events written with it, want 1", r.Instance, withEvent[r.Instance])
		}
		delete(withEvent, r.Instance)
	}
	if len(withEvent) != 0 {
		t.Errorf("audit events without their instance record: %v", withEvent)
	}
	// Every acknowledged guest event is stored, each exactly once: a batch
	// re-sent after the crash inserts nothing.
	upTo, ins, err := s.IngestGuestAudit("vm", protocol.AuditBatch{SpoolID: "spool", Events: guestEvents(1, maxUpTo)})
	if err != nil || upTo != maxUpTo || len(ins) != 0 {
		t.Errorf("re-sending the acknowledged guest events (1..%d) inserted %d (%v); want none", maxUpTo, len(ins), err)
	}
	// And the store takes writes again.
	if _, err := s.CreatePersona(persona("after-crash")); err != nil {
		t.Errorf("write after reopen: %v", err)
	}
	t.Logf("checked %d acknowledged writes after SIGKILL (%d guest events)", checked, maxUpTo)
}
