package testbin

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
