// Package testbin gives tests the vmpersona programs, built with the release
// flags of `make build` (both go through scripts/build-programs), once for all
// the test processes of a `go test` run.
//
// `make test` runs `make build` beside `go test` and names the result in
// VMP_TEST_BIN_DIR (and the version it was built with in
// VMP_TEST_BIN_VERSION): the tests then use those binaries and build nothing.
// While the build runs it holds an exclusive lock on the directory's .lock
// file (BuildLock); a test that needs a program waits for that lock, so
// the packages that need no program compile and run meanwhile.
// Without it, the first test process that needs a program builds it into a
// directory shared by every test process of the same source tree, holding a
// file lock while it builds; the others wait for it and use the result. go
// build relinks a program only when its sources changed, so later runs cost
// a cache lookup.
package testbin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
)

// The programs.
const (
	Guestd = "vmpersona-guestd"
	Hostd  = "vmpersona-hostd"
	Ctl    = "vmpersonactl"
)

// Environment set by `make test`.
const (
	DirEnv     = "VMP_TEST_BIN_DIR"
	VersionEnv = "VMP_TEST_BIN_VERSION"
	// BuildLock is the file in the program directory that a build holds
	// locked (flock, exclusive) while it writes the programs.
	BuildLock = ".lock"
)

// builtVersion is the SoftwareVersion of the programs this package builds.
const builtVersion = "0.0.0-test"

var (
	mu    sync.Mutex
	built = map[string]error{} // program → result of this process's build
)

// Version is the protocol.SoftwareVersion the programs report.
func Version() string {
	if os.Getenv(DirEnv) != "" {
		if v := os.Getenv(VersionEnv); v != "" {
			return v
		}
	}
	return builtVersion
}

// Path returns the path of the program name, building it when needed.
func Path(name string) (string, error) {
	dir, err := Dir(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, name), nil
}

// Dir returns the directory holding the named programs (all three when none
// is named), building those that are missing or out of date.
func Dir(names ...string) (string, error) {
	if len(names) == 0 {
		names = []string{Guestd, Hostd, Ctl}
	}
	for _, n := range names {
		if n != Guestd && n != Hostd && n != Ctl {
			return "", fmt.Errorf("testbin: unknown program %q", n)
		}
	}
	if dir := os.Getenv(DirEnv); dir != "" {
		if err := waitBuild(dir); err != nil {
			return "", err
		}
		for _, n := range names {
			if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
				return "", fmt.Errorf("testbin: %s=%s has no %s (make build puts it there): %w", DirEnv, dir, n, err)
			}
		}
		return dir, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir := sharedDir(root)

	mu.Lock()
	defer mu.Unlock()
	var missing []string
	for _, n := range names {
		if err, done := built[n]; done {
			if err != nil {
				return "", err
			}
			continue
		}
		missing = append(missing, n)
	}
	if len(missing) == 0 {
		return dir, nil
	}
	err = build(root, dir, missing)
	for _, n := range missing {
		built[n] = err
	}
	if err != nil {
		return "", err
	}
	return dir, nil
}

// build runs scripts/build-programs for the programs into dir, holding the
// directory's lock so that concurrent test processes build once.
func build(root, dir string, names []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("testbin: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, BuildLock), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("testbin: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("testbin: locking %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	args := append([]string{dir, builtVersion}, names...)
	cmd := exec.Command(filepath.Join(root, "scripts", "build-programs"), args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testbin: building %v: %v\n%s", names, err, out)
	}
	return nil
}

// waitBuild waits until no build holds dir's lock (a directory without
// one, named by hand, is used as it is).
func waitBuild(dir string) error {
	lock, err := os.Open(filepath.Join(dir, BuildLock))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("testbin: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
		return fmt.Errorf("testbin: waiting for the build of %s: %w", dir, err)
	}
	return syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
}

// sharedDir is the build directory of the source tree at root: one per
// checkout, so that two worktrees never overwrite each other's programs.
func sharedDir(root string) string {
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	sum := sha256.Sum256([]byte(root))
	return filepath.Join(base, "vmpersona-testbin", hex.EncodeToString(sum[:8]))
}

// moduleRoot is the directory holding go.mod, above the test's working
// directory (its package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testbin: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testbin: no go.mod above the working directory")
		}
		dir = parent
	}
}
