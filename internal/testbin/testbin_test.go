package testbin

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// With VMP_TEST_BIN_DIR set, the programs come from there: nothing is built,
// a missing program is an error naming it, and the version is make's.
func TestPrebuiltDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, Guestd), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(DirEnv, dir)
	t.Setenv(VersionEnv, "1.2.3-ci")
	if p, err := Path(Guestd); err != nil || p != filepath.Join(dir, Guestd) {
		t.Fatalf("Path(%s) = %q, %v; want the prebuilt one", Guestd, p, err)
	}
	if _, err := Path(Hostd); err == nil || !strings.Contains(err.Error(), Hostd) {
		t.Fatalf("a missing prebuilt %s: %v", Hostd, err)
	}
	if v := Version(); v != "1.2.3-ci" {
		t.Fatalf("Version() = %q, want make's", v)
	}
	t.Setenv(VersionEnv, "")
	if v := Version(); v != builtVersion {
		t.Fatalf("Version() without %s = %q", VersionEnv, v)
	}
}

// While a build holds the directory's lock (make test builds beside go
// test), Path waits for it and then finds the program the build wrote.
func TestPrebuiltDirWaitsForTheBuild(t *testing.T) {
	dir := t.TempDir()
	lock, err := os.Create(filepath.Join(dir, BuildLock))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Setenv(DirEnv, dir)
	type result struct {
		path string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		p, err := Path(Guestd)
		done <- result{p, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Path returned while the build held the lock: %q, %v", r.path, r.err)
	case <-time.After(300 * time.Millisecond): // still waiting, as it should
	}
	if err := os.WriteFile(filepath.Join(dir, Guestd), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.path != filepath.Join(dir, Guestd) {
			t.Fatalf("Path after the build = %q, %v; want the program the build wrote", r.path, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Path still waits 30 s after the build released the lock")
	}
}

func TestUnknownProgram(t *testing.T) {
	if _, err := Dir("vmpersona-nothing"); err == nil {
		t.Fatal("an unknown program was accepted")
	}
}

// Two checkouts get two build directories; one checkout always the same.
func TestSharedDirPerCheckout(t *testing.T) {
	a, b := sharedDir("/src/a"), sharedDir("/src/b")
	if a == b || a != sharedDir("/src/a") {
		t.Fatalf("sharedDir: %q %q", a, b)
	}
}

// TestNoOtherBuildOfThePrograms: test harnesses take the programs from this
// package, so a `go test ./...` builds each once, with the release flags.
// The real-VM tier is the exception: it stamps a version of its own run.
func TestNoOtherBuildOfThePrograms(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"integration/env_test.go": true}
	build := regexp.MustCompile(`"build".*(cmd/vmpersona|"\.")`)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != root {
			return filepath.SkipDir
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") || allowed[rel] {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if build.MatchString(line) && !strings.Contains(line, "regexp.MustCompile") {
				t.Errorf("%s:%d builds a program itself; use internal/testbin: %s", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
