package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmpersona/vmpersona/protocol"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v %v", fi, err)
	}
	if a, err := s.Load(); a != nil || err != nil {
		t.Fatalf("fresh store: %+v %v", a, err)
	}
	want := &protocol.ActiveState{
		Persona: protocol.Persona{
			Name: "p", EnvironmentVariables: map[string]string{"A": "1"},
			PostActivationScript: "#!/bin/sh\ntrue\n", RestrictedCommands: []string{"rm"},
			CommandOverrides: map[string]string{"ls": "/bin/true"}, AllowedCommands: []string{"ls"},
		},
		Revision: 7, ActivationID: "act", ActivatedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
	}
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	// A second store on the same dir (a restart) reads it back.
	s2, _ := Open(dir)
	got, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.Persona.Name != "p" || got.Revision != 7 || got.ActivationID != "act" || !got.ActivatedAt.Equal(want.ActivatedAt) ||
		got.Persona.EnvironmentVariables["A"] != "1" || got.Persona.CommandOverrides["ls"] != "/bin/true" ||
		got.Persona.RestrictedCommands[0] != "rm" || got.Persona.AllowedCommands[0] != "ls" ||
		got.Persona.PostActivationScript != want.Persona.PostActivationScript {
		t.Fatalf("round trip: %+v", got)
	}
	if err := s.Save(nil); err != nil {
		t.Fatal(err)
	}
	if a, err := s.Load(); a != nil || err != nil {
		t.Fatalf("after saving none: %+v %v", a, err)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != logFile {
		t.Fatalf("state dir holds %v", ents)
	}
}

func TestLoadCorrupt(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	for _, content := range []string{"{not json", `{"version": 99, "active": null}`, ""} {
		os.WriteFile(filepath.Join(dir, activeFile), []byte(content), 0o600)
		if _, err := s.Load(); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%q: want ErrCorrupt, got %v", content, err)
		}
	}
}

func TestWriteFileAtomicReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, content := range []string{"one", "two, longer"} {
		if err := WriteFileAtomic(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if string(data) != content || fi.Mode().Perm() != 0o640 {
			t.Fatalf("got %q mode %v", data, fi.Mode())
		}
	}
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func TestReplaceFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	for _, content := range []string{"one", "two, longer"} {
		if err := ReplaceFile(p, []byte(content), 0o750); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || string(got) != content || fi.Mode().Perm() != 0o750 {
			t.Fatalf("%q %v %v", got, err, fi.Mode())
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
	if err := ReplaceFile(filepath.Join(p, "x"), nil, 0o600); err == nil {
		t.Fatal("no error writing under a file")
	}
}

// TestReplaceFileReadersSeeOldOrNew: while a file is replaced again and
// again (over an existing file, as the login profile is), a reader always
// finds it, whole: the old or the new content, never a missing or partial
// file.
func TestReplaceFileReadersSeeOldOrNew(t *testing.T) {
	for name, replace := range replacers {
		t.Run(name, func(t *testing.T) { testReadersSeeOldOrNew(t, replace) })
	}
}

var replacers = map[string]func(string, []byte, os.FileMode) error{"ReplaceFile": ReplaceFile, "ReplaceFileReusing": ReplaceFileReusing}

func testReadersSeeOldOrNew(t *testing.T, ReplaceFile func(string, []byte, os.FileMode) error) {
	p := filepath.Join(t.TempDir(), "profile.sh")
	a, b := strings.Repeat("a", 3000), strings.Repeat("b", 5000)
	if err := ReplaceFile(p, []byte(a), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for i := range 2000 {
			if err := ReplaceFile(p, []byte([]string{b, a}[i%2]), 0o644); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for reads := 0; ; reads++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(filepath.Dir(p))
			if len(ents) != 1 && (len(ents) != 2 || ents[0].Name() != filepath.Base(PreviousName(p))) {
				t.Fatalf("files left beside the replaced one: %v", ents)
			}
			return
		default:
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		if s := string(got); s != a && s != b {
			t.Fatalf("read %d: %d bytes, neither the old nor the new content", reads, len(got))
		}
	}
}

// TestReplaceFileReusingSparesOpenFiles: a reader that opened the file keeps
// reading what it opened however often the file is replaced meanwhile (the
// previous file is written over only when no one has it open), and a file
// with no reader left is reused instead of a new one being created.
func TestReplaceFileReusingSparesOpenFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "profile.sh")
	if err := ReplaceFileReusing(p, []byte("first"), 0o644); err != nil {
		t.Fatal(err)
	}
	held, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for i, content := range []string{"second", "third, longer", "fourth"} {
		if err := ReplaceFileReusing(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || string(got) != content || fi.Mode().Perm() != 0o640 {
			t.Fatalf("replacement %d: %q %v %v", i, got, err, fi.Mode())
		}
		b := make([]byte, 64)
		n, _ := held.ReadAt(b, 0)
		if string(b[:n]) != "first" {
			t.Fatalf("after replacement %d a reader of the first file reads %q", i, b[:n])
		}
	}
	// No reader now: the previous file is written over, not made anew.
	// A file is known by its inode and its birth time (an inode number
	// alone may be handed out again at once to a new file).
	type ident struct {
		ino   uint64
		btime unix.StatxTimestamp
	}
	inodes := func() [2]ident {
		var r [2]ident
		for i, f := range []string{p, PreviousName(p)} {
			var st unix.Statx_t
			if err := unix.Statx(unix.AT_FDCWD, f, 0, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mask&unix.STATX_BTIME == 0 {
				t.Skip("this file system does not report birth times: cannot tell a reused file from a new one")
			}
			r[i] = ident{st.Ino, st.Btime}
		}
		return r
	}
	before := inodes()
	for i, content := range []string{"fifth", "sixth"} {
		if err := ReplaceFileReusing(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := inodes(); got != [2]ident{before[(i+1)%2], before[i%2]} {
			t.Fatalf("replacement %d with no reader: inodes (file, previous) %v, want the two files %v exchanged", i, got, before)
		}
	}
}

// TestOpenRemovesStaleTemps: temporary files left by writes that a kill -9
// cut short are removed when the daemon opens its state directory again.
func TestOpenRemovesStaleTemps(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "scripts"), 0o700)
	stale := []string{
		filepath.Join(dir, ".active.json.tmp123"),
		filepath.Join(dir, "scripts", ".abc.sh.tmp456"),
	}
	keep := filepath.Join(dir, "active.json")
	for _, f := range append(stale, keep) {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range stale {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s survived Open: %v", f, err)
		}
	}
	if _, err := os.Stat(keep); err != nil {
		t.Errorf("Open removed a real state file: %v", err)
	}
}

// TestReplaceFileReusingShorter: a file written over a longer previous one
// ends where the new content ends (no tail of the old profile left behind).
func TestReplaceFileReusingShorter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "profile.sh")
	long := "export A=" + strings.Repeat("x", 4096) + "\n"
	for i, content := range []string{long, "export B=1\n", "export C=2\n", long, "export D=3\n"} {
		if err := ReplaceFileReusing(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != content {
			t.Fatalf("write %d: the file holds %d bytes (%.20q…), want %q", i, len(got), got, content)
		}
	}
}
