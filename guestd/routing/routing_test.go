package routing

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixture lays out a guest-like tree in a temp dir:
//
//	usr/bin/danger, usr/bin/ls, usr/bin/busybox (+ usr/bin/rmb -> busybox, usr/bin/lsb -> busybox)
//	bin -> usr/bin (a merged /usr)
//	other/alias -> ../usr/bin/danger (symlink), other/hard (hard link to danger)
//	usr/bin/plain (not executable)
func fixture(t *testing.T) (root, pathEnv string) {
	t.Helper()
	root = t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	ub := filepath.Join(root, "usr", "bin")
	must(os.MkdirAll(ub, 0o755))
	must(os.MkdirAll(filepath.Join(root, "other"), 0o755))
	for _, n := range []string{"danger", "ls", "busybox", "deploy"} {
		must(os.WriteFile(filepath.Join(ub, n), []byte("#!/bin/sh\necho "+n+"\n"), 0o755))
	}
	must(os.WriteFile(filepath.Join(ub, "plain"), []byte("data"), 0o644))
	must(os.Symlink("busybox", filepath.Join(ub, "rmb")))
	must(os.Symlink("busybox", filepath.Join(ub, "lsb")))
	must(os.Symlink("usr/bin", filepath.Join(root, "bin")))
	must(os.Symlink("../usr/bin/danger", filepath.Join(root, "other", "alias")))
	must(os.Link(filepath.Join(ub, "danger"), filepath.Join(root, "other", "hard")))
	return root, ub + ":" + filepath.Join(root, "bin")
}

func TestRouteRestrictions(t *testing.T) {
	root, pathEnv := fixture(t)
	tab, err := Build(Spec{
		Persona:    "p",
		Restricted: []string{"danger", "rmb"},
		Overrides:  map[string]OverrideTarget{"deploy": {Path: "/opt/deploy"}, "ghost": {Path: "/opt/ghost", Inline: true}},
		PathEnv:    pathEnv,
	})
	if err != nil {
		t.Fatal(err)
	}
	ub := filepath.Join(root, "usr", "bin")
	tests := []struct {
		name, cmd, cwd string
		want           Kind
	}{
		{"by name", "danger", "", Denied},
		{"absolute path", ub + "/danger", "", Denied},
		{"merged usr alias", root + "/bin/danger", "", Denied},
		{"dot slash with cwd", "./danger", ub, Denied},
		{"relative with dotdot", "../usr/bin/danger", root + "/other", Denied},
		{"symlink", root + "/other/alias", "", Denied},
		{"symlink relative", "./alias", root + "/other", Denied},
		{"hard link", root + "/other/hard", "", Denied},
		{"multi-call applet restricted by name", "rmb", "", Denied},
		{"multi-call applet path", ub + "/rmb", "", Denied},
		{"other applet of the same multi-call binary runs", "lsb", "", Default},
		{"unrelated command", "ls", "", Default},
		{"override by name", "deploy", "", Override},
		{"override by absolute path", ub + "/deploy", "", Override},
		{"override of a command the guest lacks", "ghost", "", Override},
		{"not found", "nosuchcommand", "", NotFound},
		{"not found path", root + "/nope", "", NotFound},
		{"not executable", "plain", "", NotExecutable},
		{"directory", root + "/usr", "", NotExecutable},
		{"empty", "", "", NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tab.Route(tc.cmd, tc.cwd)
			if d.Kind != tc.want {
				t.Fatalf("Route(%q, %q) = %v, want %v", tc.cmd, tc.cwd, d.Kind, tc.want)
			}
			if d.Kind == Denied && d.Reason != ReasonRestricted {
				t.Fatalf("reason %q", d.Reason)
			}
		})
	}
	if d := tab.Route("ls", ""); tab.Path("ls", "", d) != ub+"/ls" {
		t.Fatalf("Path = %q", tab.Path("ls", "", d))
	}
	if d := tab.Route("deploy", ""); d.Override.Path != "/opt/deploy" || d.Override.Command != "deploy" {
		t.Fatalf("override target %+v", d.Override)
	}
}

func TestRouteAllowlist(t *testing.T) {
	root, pathEnv := fixture(t)
	ub := filepath.Join(root, "usr", "bin")
	// A file merely named like an allowed command is not allowed.
	if err := os.WriteFile(filepath.Join(root, "other", "ls"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tab, err := Build(Spec{
		Persona:   "p",
		Allowed:   []string{"ls", "lsb"},
		Overrides: map[string]OverrideTarget{"deploy": {Path: "/opt/deploy"}},
		PathEnv:   pathEnv,
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		cmd, cwd string
		want     Kind
	}{
		{"ls", "", Default},
		{ub + "/ls", "", Default},
		{root + "/bin/ls", "", Default},
		{"lsb", "", Default},
		{"rmb", "", Denied}, // same binary as lsb, another applet
		{root + "/other/ls", "", Denied},
		{"./ls", root + "/other", Denied},
		{"danger", "", Denied},
		{"deploy", "", Override},
		{"nosuchcommand", "", Denied},
	}
	for _, tc := range tests {
		if d := tab.Route(tc.cmd, tc.cwd); d.Kind != tc.want {
			t.Errorf("Route(%q, %q) = %v, want %v", tc.cmd, tc.cwd, d.Kind, tc.want)
		} else if d.Kind == Denied && d.Reason != ReasonNotAllowed {
			t.Errorf("Route(%q): reason %q", tc.cmd, d.Reason)
		}
	}
}

func TestBuildRejectsInvalidEntries(t *testing.T) {
	for _, spec := range []Spec{
		{Restricted: []string{"bin/rm"}},
		{Restricted: []string{" "}},
		{Allowed: []string{"./ls"}},
		{Overrides: map[string]OverrideTarget{"ls": {Path: "relative"}}},
	} {
		if _, err := Build(spec); err == nil {
			t.Errorf("Build(%+v) succeeded, want an error", spec)
		}
	}
}

func TestEmptyTableRunsEverything(t *testing.T) {
	_, pathEnv := fixture(t)
	tab := Empty(pathEnv)
	if d := tab.Route("danger", ""); d.Kind != Default {
		t.Fatalf("got %v", d.Kind)
	}
	if tab.Persona() != "" {
		t.Fatal("empty table has a persona")
	}
}

// PATH entries that are relative would make resolution depend on the
// request's working directory: they are ignored.
func TestRelativePathEntriesIgnored(t *testing.T) {
	root, _ := fixture(t)
	tab := Empty("usr/bin:" + root + "/nothing")
	if d := tab.Route("ls", root); d.Kind != NotFound {
		t.Fatalf("got %v", d.Kind)
	}
}

func BenchmarkRoute(b *testing.B) {
	tab, err := Build(Spec{
		Persona:    "bench",
		Restricted: []string{"rm", "shutdown", "dd", "mkfs"},
		Overrides:  map[string]OverrideTarget{"deploy": {Path: "/usr/local/bin/deploy"}},
		PathEnv:    DefaultPath,
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct{ name, cmd string }{
		{"default-name", "ls"},
		{"default-abs", "/usr/bin/ls"},
		{"denied-name", "rm"},
		{"denied-abs-alias", "/bin/rm"},
		{"override", "deploy"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tab.Route(bc.cmd, "/")
			}
		})
	}
}

// Build lists each PATH directory once; a directory that is missing holds
// nothing, and a name present in a later directory only is still resolved.
func TestBuildThroughListedDirectories(t *testing.T) {
	root, pathEnv := fixture(t)
	extra := filepath.Join(root, "extra")
	if err := os.MkdirAll(extra, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(extra, "late"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(extra, "late"), filepath.Join(root, "other", "late-link")); err != nil {
		t.Fatal(err)
	}
	tab, err := Build(Spec{Restricted: []string{"late", "absent"}, PathEnv: filepath.Join(root, "missing") + ":" + pathEnv + ":" + extra})
	if err != nil {
		t.Fatal(err)
	}
	// By inode, found in the last PATH directory at build time.
	if d := tab.Route(filepath.Join(root, "other", "late-link"), "/"); d.Kind != Denied {
		t.Fatalf("hard link of a restricted file in the last PATH directory: %v", d.Kind)
	}
	if d := tab.Route("ls", "/"); d.Kind != Default {
		t.Fatalf("ls: %v", d.Kind)
	}
}

// BenchmarkBuild: a persona of 200 restricted commands and 50 overrides,
// most names absent from most PATH directories.
func BenchmarkBuild(b *testing.B) {
	restricted := []string{"rm", "dd", "sh", "ls", "cat", "mount", "shutdown", "reboot"}
	for i := len(restricted); i < 200; i++ {
		restricted = append(restricted, fmt.Sprintf("nosuchcmd%03d", i))
	}
	ov := map[string]OverrideTarget{}
	for i := range 50 {
		ov[fmt.Sprintf("ovcmd%02d", i)] = OverrideTarget{Path: "/usr/local/bin/x"}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(Spec{Restricted: restricted, Overrides: ov, PathEnv: DefaultPath}); err != nil {
			b.Fatal(err)
		}
	}
}

// Paths longer than Route's stack buffer are resolved the same way.
func TestRouteLongPaths(t *testing.T) {
	root, pathEnv := fixture(t)
	long := filepath.Join(root, strings.Repeat("d", 200), strings.Repeat("e", 200))
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "usr", "bin", "danger"), filepath.Join(long, "x")); err != nil {
		t.Fatal(err)
	}
	tab, err := Build(Spec{Restricted: []string{"danger"}, PathEnv: pathEnv + ":" + long})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ cmd, cwd string }{{"./x", long}, {filepath.Join(long, "x"), "/"}} {
		if d := tab.Route(c.cmd, c.cwd); d.Kind != Denied {
			t.Fatalf("%s in %s: %v", c.cmd, c.cwd, d.Kind)
		}
	}
	if d := tab.Route("ls", long); d.Kind != Default {
		t.Fatalf("ls: %v", d.Kind)
	}
}
