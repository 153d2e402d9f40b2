package store

import (
	"os"
	"path/filepath"
	"testing"
)

// TestOpenAfterCrashLeftEmptyLog: a crash between Badger creating a
// memtable log or a value log and sizing it leaves an empty *.mem or *.vlog
// file; the store still opens, with everything written before.
func TestOpenAfterCrashLeftEmptyLog(t *testing.T) {
	for _, name := range []string{"00042.mem", "000042.vlog"} {
		t.Run(name, func(t *testing.T) { openAfterEmptyLog(t, name) })
	}
}

func openAfterEmptyLog(t *testing.T, name string) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	p := mustCreate(t, s, persona("kept"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, name)
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, dir, Options{})
	got, err := s.GetPersona("kept")
	if err != nil || got.Revision != p.Revision {
		t.Fatalf("after reopening: %+v, %v", got, err)
	}
	if _, err := os.Stat(empty); !os.IsNotExist(err) {
		t.Errorf("the empty log is still there: %v", err)
	}
	// The store takes writes again.
	mustCreate(t, s, persona("after"))
}
