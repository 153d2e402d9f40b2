package routing

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRestrictedNameHoldsOutsidePath: a restricted name is refused wherever
// the file comes from, not only where the table found it in PATH when it
// was built: a copy elsewhere, a multi-call applet linked under a new
// directory, a link of another name to a file of the restricted name, and a
// command the guest installs only later. Each of these has no path or inode
// the table knows; only the names decide.
func TestRestrictedNameHoldsOutsidePath(t *testing.T) {
	root := t.TempDir()
	ub := filepath.Join(root, "usr", "bin")
	for _, d := range []string{ub, filepath.Join(root, "copy"), filepath.Join(root, "opt"), filepath.Join(root, "links")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string) {
		t.Helper()
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho "+filepath.Base(p)+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, p string) {
		t.Helper()
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(ub, "danger"))
	write(filepath.Join(ub, "busybox"))
	link("busybox", filepath.Join(ub, "rmb"))
	write(filepath.Join(root, "copy", "danger"))                            // a copy: another inode, another path
	link(filepath.Join(ub, "busybox"), filepath.Join(root, "links", "rmb")) // the applet under a new directory
	write(filepath.Join(root, "opt", "secret"))                             // restricted, not in PATH
	link(filepath.Join(root, "opt", "secret"), filepath.Join(root, "links", "innocent"))

	tab, err := Build(Spec{Persona: "p", Restricted: []string{"danger", "rmb", "secret", "later"}, PathEnv: ub})
	if err != nil {
		t.Fatal(err)
	}
	later := filepath.Join(root, "copy", "later") // installed after the table was built
	write(later)

	for _, tc := range []struct{ name, cmd, cwd string }{
		{"a copy of a restricted command", filepath.Join(root, "copy", "danger"), ""},
		{"a copy named relative to the working directory", "./danger", filepath.Join(root, "copy")},
		{"a multi-call applet linked under a new directory", filepath.Join(root, "links", "rmb"), ""},
		{"a restricted command the guest installs later", later, ""},
		{"a restricted command the guest lacks", "later", ""},
		{"a link of another name to a restricted file outside PATH", filepath.Join(root, "links", "innocent"), ""},
	} {
		if d := tab.Route(tc.cmd, tc.cwd); d.Kind != Denied || d.Reason != ReasonRestricted {
			t.Errorf("%s: Route(%q) = %v %q, want denied (%s)", tc.name, tc.cmd, d.Kind, d.Reason, ReasonRestricted)
		}
	}
	// The same files under names the persona does not restrict run.
	if d := tab.Route(filepath.Join(ub, "busybox"), ""); d.Kind != Default {
		t.Errorf("busybox itself: %v, want default", d.Kind)
	}
}
