package routing

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// fdIno returns the inode of the file a decision holds.
func fdIno(t *testing.T, d *Decision) uint64 {
	t.Helper()
	if d.FD() < 0 {
		t.Fatal("decision holds no file")
	}
	var st unix.Stat_t
	if err := unix.Fstat(d.FD(), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// The decision holds the file the kernel resolved, ".." after a symbolic
// link included: what runs is what was checked, never the path cleaned as
// text (which names another file here).
func TestRouteHoldsTheFileResolved(t *testing.T) {
	root, pathEnv := fixture(t)
	ub := filepath.Join(root, "usr", "bin")
	// links/x -> usr/bin/sub, so links/x/../ls is usr/bin/ls, while the
	// text cleaned (links/ls) is a hard link to the restricted danger.
	links := filepath.Join(root, "links")
	for _, err := range []error{
		os.MkdirAll(filepath.Join(ub, "sub"), 0o755), os.MkdirAll(links, 0o755),
		os.Symlink(filepath.Join(ub, "sub"), filepath.Join(links, "x")),
		os.Link(filepath.Join(ub, "danger"), filepath.Join(links, "ls")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	tab, err := Build(Spec{Restricted: []string{"danger"}, PathEnv: pathEnv})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ cmd, cwd string }{
		{"x/../ls", links},
		{links + "/x/../ls", "/"},
		{"./ls", links + "/x/.."},
	} {
		d := tab.Route(c.cmd, c.cwd)
		if d.Kind != Default {
			t.Fatalf("Route(%q, %q) = %v", c.cmd, c.cwd, d.Kind)
		}
		if got, want := fdIno(t, &d), ino(t, filepath.Join(ub, "ls")); got != want {
			t.Fatalf("Route(%q, %q) holds inode %d, want %d (usr/bin/ls)", c.cmd, c.cwd, got, want)
		}
		d.Close()
	}
	if d := tab.Route(links+"/ls", "/"); d.Kind != Denied {
		t.Fatalf("hard link to danger: %v", d.Kind)
	}
	// An override holds its target opened.
	tab, err = Build(Spec{Overrides: map[string]OverrideTarget{"ls": {Path: filepath.Join(ub, "deploy")}}, PathEnv: pathEnv})
	if err != nil {
		t.Fatal(err)
	}
	d := tab.Route("ls", "/")
	if d.Kind != Override || fdIno(t, &d) != ino(t, filepath.Join(ub, "deploy")) {
		t.Fatalf("override: %v", d.Kind)
	}
	d.Close()
}

// A restricted name that is an alias of one program (Debian's
// alternatives, versioned names) restricts the program's file; a link to a
// restricted applet of a multi-call binary is refused, whatever its name.
func TestRestrictTheFileNotOnlyTheName(t *testing.T) {
	root, pathEnv := fixture(t)
	ub := filepath.Join(root, "usr", "bin")
	alt := filepath.Join(root, "etc", "alternatives")
	tmp := filepath.Join(root, "tmp")
	for _, err := range []error{
		os.MkdirAll(alt, 0o755), os.MkdirAll(tmp, 0o755),
		os.WriteFile(filepath.Join(ub, "mawk"), []byte("#!/bin/sh\n"), 0o755),
		os.Symlink(filepath.Join(ub, "mawk"), filepath.Join(alt, "awk")),
		os.Symlink(filepath.Join(alt, "awk"), filepath.Join(ub, "awk")),
		os.WriteFile(filepath.Join(ub, "python3.11"), []byte("#!/bin/sh\n"), 0o755),
		os.Symlink("python3.11", filepath.Join(ub, "python3")),
		os.Symlink(filepath.Join(ub, "rmb"), filepath.Join(tmp, "l")),
		os.Symlink(filepath.Join(tmp, "l"), filepath.Join(tmp, "l2")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	tab, err := Build(Spec{Restricted: []string{"awk", "python3", "rmb"}, PathEnv: pathEnv})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cmd  string
		want Kind
	}{
		{"mawk", Denied},
		{ub + "/mawk", Denied},
		{"python3.11", Denied},
		{tmp + "/l", Denied},  // -> rmb -> busybox
		{tmp + "/l2", Denied}, // -> l -> rmb -> busybox
		{"lsb", Default},      // another applet of the same binary
		{"busybox", Default},
	} {
		d := tab.Route(c.cmd, "/")
		d.Close()
		if d.Kind != c.want {
			t.Errorf("Route(%q) = %v, want %v", c.cmd, d.Kind, c.want)
		}
	}
}
