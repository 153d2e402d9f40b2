package state

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

func persona(name string) *protocol.ActiveState {
	return &protocol.ActiveState{Persona: protocol.Persona{Name: name, EnvironmentVariables: map[string]string{"P": name}}}
}

func loadName(t *testing.T, dir string) string {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if a == nil {
		return ""
	}
	return a.Persona.Name
}

// A record cut short by a crash (its tail never reached the disk) or
// garbled fails its checksum: the record before it wins, and the next
// write goes over it.
func TestTornRecordLoses(t *testing.T) {
	for _, damage := range []struct {
		name string
		do   func(rec []byte)
	}{
		{"tail zero", func(rec []byte) { clear(rec[len(rec)/2:]) }},
		{"header only", func(rec []byte) { clear(rec[headerSize:]) }},
		{"one bit", func(rec []byte) { rec[len(rec)-3] ^= 0x10 }},
		{"length", func(rec []byte) { rec[5] ^= 0x01 }},
		// Still valid JSON: only the checksum tells.
		{"name", func(rec []byte) { copy(rec[bytes.Index(rec, []byte(`"name":"c"`)):], `"name":"z"`) }},
	} {
		t.Run(damage.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := Open(dir)
			for _, n := range []string{"a", "b", "c"} {
				if err := s.Save(persona(n)); err != nil {
					t.Fatal(err)
				}
			}
			start, end := s.end-len(mustEncode(t, 3, persona("c"))), s.end
			s.Close()
			path := filepath.Join(dir, logFile)
			data, _ := os.ReadFile(path)
			damage.do(data[start:end])
			os.WriteFile(path, data, 0o600)
			if got := loadName(t, dir); got != "b" {
				t.Fatalf("after a damaged newest record: %q, want b", got)
			}
			// The next record goes over the damaged one and wins.
			s, _ = Open(dir)
			if err := s.Save(persona("d")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			if got := loadName(t, dir); got != "d" {
				t.Fatalf("after writing over it: %q, want d", got)
			}
		})
	}
}

func mustEncode(t *testing.T, seq uint64, a *protocol.ActiveState) []byte {
	t.Helper()
	b, err := encodeRecord(seq, record{Version: recordVersion, Active: a})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// What a longer, older record left beyond a shorter newer one is never
// read as a record: the sequence must follow on.
func TestLeftoverNotResurrected(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	s.Save(persona("a"))
	at := s.end
	s.Close()
	// A record of seq 5 sits where seq 2 goes (as if left from earlier).
	path := filepath.Join(dir, logFile)
	data, _ := os.ReadFile(path)
	stale := mustEncode(t, 5, persona("stale"))
	copy(data[at:], stale)
	os.WriteFile(path, data, 0o600)
	if got := loadName(t, dir); got != "a" {
		t.Fatalf("got %q, want a", got)
	}
}

// Each commit is one write into the same file while the region lasts; a
// record that does not fit replaces the file (after the hook), and the
// sequence goes on.
func TestReplaceWhenFull(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	replaced := 0
	s.BeforeReplace(func() error { replaced++; return nil })
	big := persona("big")
	big.Persona.PostActivationScript = "#!/bin/sh\n" + strings.Repeat("x", 100<<10)
	for i := range 25 {
		big.Revision = uint64(i + 1)
		if err := s.Commit(big, &protocol.AuditEvent{Seq: uint64(i + 1), Type: protocol.AuditActivation}); err != nil {
			t.Fatal(err)
		}
	}
	// 1 MiB holds 10 records of 100 KiB: the file was replaced twice (the
	// first file is made without the hook: nothing to keep).
	if replaced != 2 {
		t.Fatalf("replaced %d times, want 2", replaced)
	}
	s.Close()
	s2, _ := Open(dir)
	a, err := s2.Load()
	if err != nil || a.Revision != 25 || s2.seq != 25 {
		t.Fatalf("after replacements: %+v %v seq %d", a, err, s2.seq)
	}
	evs, err := LoggedEvents(dir)
	if err != nil || len(evs) != 5 || evs[4].Seq != 25 {
		t.Fatalf("events in the log: %d %v", len(evs), err)
	}
	// A failing hook stops the replacement: nothing is written.
	s2.BeforeReplace(func() error { return errors.New("spool not synced") })
	for i := 25; i < 40; i++ {
		big.Revision = uint64(i + 1)
		if err := s2.Save(big); err != nil {
			if i < 30 {
				t.Fatalf("commit %d failed before the file was full: %v", i, err)
			}
			break
		}
	}
	s2.Close()
	s3, _ := Open(dir)
	if a, _ := s3.Load(); a.Revision != 30 {
		t.Fatalf("after a refused replacement: revision %d, want 30", a.Revision)
	}
}

// TestFirstLogIsSmall: the first log file of a state directory holds about
// a hundred small records (a guest that activates once writes 64 KiB, not
// 1 MiB); the file that replaces it is full size, and every record
// survives the change of file.
func TestFirstLogIsSmall(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	size := func() int64 {
		fi, err := os.Stat(filepath.Join(dir, logFile))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	p := persona("small")
	for i := range 400 {
		p.Revision = uint64(i + 1)
		if err := s.Save(p); err != nil {
			t.Fatal(err)
		}
		if i == 0 && size() != firstRegion {
			t.Fatalf("first log file: %d bytes, want %d", size(), int64(firstRegion))
		}
	}
	if size() != minRegion {
		t.Fatalf("log file after 400 records: %d bytes, want %d", size(), minRegion)
	}
	s.Close()
	s2, _ := Open(dir)
	if a, err := s2.Load(); err != nil || a.Revision != 400 {
		t.Fatalf("after the first replacement: %+v %v", a, err)
	}
}

// A guest upgraded in place keeps its active persona: active.json is read
// while the log holds nothing, and removed once a record is durable.
func TestMigrateActiveJSON(t *testing.T) {
	dir := t.TempDir()
	legacy := `{"version":1,"active":{"persona":{"name":"old","environment_variables":{"A":"1"}},"revision":4,"activation_id":"x","activated_at":"2026-01-02T03:04:05Z"}}`
	os.WriteFile(filepath.Join(dir, activeFile), []byte(legacy), 0o600)
	s, _ := Open(dir)
	a, err := s.Load()
	if err != nil || a == nil || a.Persona.Name != "old" || a.Revision != 4 || a.Persona.EnvironmentVariables["A"] != "1" {
		t.Fatalf("legacy state: %+v %v", a, err)
	}
	if err := s.Save(persona("new")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, activeFile)); !os.IsNotExist(err) {
		t.Fatalf("active.json left after the first record: %v", err)
	}
	s.Close()
	if got := loadName(t, dir); got != "new" {
		t.Fatalf("got %q", got)
	}
}

// A log with no valid record at all is damage, not "no persona".
func TestLogWithoutRecordIsCorrupt(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, logFile), bytes.Repeat([]byte{0xAB}, 4096), 0o600)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
}

// A closed store refuses to write, and the previous record stays newest.
func TestCommitAfterClose(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	s.Save(persona("a"))
	s.Close()
	if err := s.Save(persona("b")); !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
	if got := loadName(t, dir); got != "a" {
		t.Fatalf("got %q", got)
	}
}
