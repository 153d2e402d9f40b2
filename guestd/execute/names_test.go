package execute

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// runVia runs file (opened, as the guest daemon runs a checked command)
// through link, with args, and returns its standard output.
func runVia(t *testing.T, file, link string, args ...string) string {
	t.Helper()
	exe, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	res, err := Run(context.Background(), Spec{Path: file, Exe: exe, ExeLink: link, Args: args})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("%s: %+v", file, res)
	}
	return string(res.Stdout)
}

func TestNamesListCommandsByName(t *testing.T) {
	n, err := OpenNames(filepath.Join(t.TempDir(), "names"))
	if err != nil {
		t.Fatal(err)
	}
	if got := runVia(t, "/bin/cat", n.Path("cat", nil), "cat", "/proc/self/comm"); got != "cat\n" {
		t.Errorf("through the link: listed as %q, want cat", got)
	}
	// Without a link the process is listed under the descriptor's path.
	if got := runVia(t, "/bin/cat", "", "cat", "/proc/self/comm"); got != "3\n" {
		t.Errorf("without a link: listed as %q", got)
	}
	// A script: listed under the link's name, and its interpreter opens the
	// script again through the link.
	script := filepath.Join(t.TempDir(), "script.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncat /proc/$$/comm\necho \"$0\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := n.Path("/opt/tools/greet", nil)
	if want := filepath.Join(n.dir, "greet"); link != want {
		t.Fatalf("link %q, want %q", link, want)
	}
	if got, want := runVia(t, script, link, "greet"), "greet\n"+link+"\n"; got != want {
		t.Errorf("script: %q, want %q", got, want)
	}
	// The same name again: the same link.
	if again := n.Path("greet", nil); again != link {
		t.Errorf("second time: %q, want %q", again, link)
	}
}

func TestNamesLinkGoneStillRuns(t *testing.T) {
	n, err := OpenNames(filepath.Join(t.TempDir(), "names"))
	if err != nil {
		t.Fatal(err)
	}
	link := n.Path("cat", nil)
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if got := runVia(t, "/bin/cat", link, "cat", "/proc/self/comm"); got != "3\n" {
		t.Errorf("listed as %q", got)
	}
}

func TestNamesPath(t *testing.T) {
	n, err := OpenNames(filepath.Join(t.TempDir(), "names"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", ".", "..", "/usr/bin/", "x\x00y"} {
		if p := n.Path(name, nil); p != "" {
			t.Errorf("%q: link %q", name, p)
		}
	}
	// t.TempDir is not searchable by others: a command run as another
	// user could not reach the link.
	if n.public {
		t.Skip("the test directory is searchable by others")
	}
	if p := n.Path("cat", &syscall.Credential{Uid: uint32(os.Geteuid()) + 1}); p != "" {
		t.Errorf("another user: link %q", p)
	}
	if p := n.Path("cat", &syscall.Credential{Uid: uint32(os.Geteuid())}); p == "" {
		t.Error("the daemon's own user: no link")
	}
	var nilNames *Names
	if p := nilNames.Path("cat", nil); p != "" {
		t.Errorf("no Names: %q", p)
	}
}

// TestOpenNamesRefusesSharedDirectory: links in a directory others may
// write to could be replaced with links to other files.
func TestOpenNamesRefusesSharedDirectory(t *testing.T) {
	parent := t.TempDir()
	if err := os.Chmod(parent, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenNames(filepath.Join(parent, "names")); err == nil {
		t.Error("a parent everyone may write to was accepted")
	}
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "names")
	// What was there before (another daemon's links, anything) is gone.
	if err := os.MkdirAll(filepath.Join(dir, "old"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenNames(dir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left in the directory: %v", entries)
	}
}

// BenchmarkRunThroughLink: /bin/true executed through a name link and
// through the descriptor's own path (the link's cost is one more lookup).
func BenchmarkRunThroughLink(b *testing.B) {
	n, err := OpenNames(filepath.Join(b.TempDir(), "names"))
	if err != nil {
		b.Fatal(err)
	}
	exe, err := os.Open("/bin/true")
	if err != nil {
		b.Fatal(err)
	}
	defer exe.Close()
	for _, link := range []string{n.Path("true", nil), ""} {
		name := "link"
		if link == "" {
			name = "fd"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := Run(context.Background(), Spec{Path: "/bin/true", Exe: exe, ExeLink: link, Args: []string{"true"}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
