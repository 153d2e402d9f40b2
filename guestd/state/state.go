// Package state persists what the guest daemon must remember across restarts
// (the active persona) and provides the crash-safe file write the other
// packages use: write a temporary file, fsync it, rename it over the target,
// fsync the directory.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/vmpersona/vmpersona/protocol"
)

// ErrCorrupt reports a state file that exists but cannot be decoded.
var ErrCorrupt = errors.New("state: corrupt state file")

// fileVersion is the layout version of the active persona file.
const fileVersion = 1

// activeFile is the name of the active persona file inside the state dir.
const activeFile = "active.json"

// WriteFileAtomic replaces path with data so that after a crash the file holds
// either the old or the new content, never a mix: the data goes to a
// temporary file in the same directory, which is fsynced and renamed over
// path; then the directory is fsynced so the rename itself is durable.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ok = true
	return SyncDir(dir)
}

// ReplaceFile replaces path with data by renaming a temporary file over it,
// without fsync: readers never see a partly written file, but after a crash
// (of the machine, not of the process) the file may be empty or torn, so it
// is only for content that is checked or re-derived before use (materialised
// scripts, which are compared byte for byte before reuse; the login profile).
//
// The temporary file's write descriptor is open only while
// syscall.ForkLock is held for reading, so no process forked meanwhile by
// another goroutine inherits it: executing path right after does not fail
// with ETXTBSY ("text file busy").
func ReplaceFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	syscall.ForkLock.RLock()
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		syscall.ForkLock.RUnlock()
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	syscall.ForkLock.RUnlock()
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// SyncDir fsyncs a directory so that entries created, renamed or removed in
// it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// Store keeps the active persona in a state directory.
type Store struct {
	dir string
}

// Open returns the store in dir, creating the directory (mode 0700) when it
// does not exist.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	removeStaleTemps(dir)
	return &Store{dir: dir}, nil
}

// removeStaleTemps deletes the temporary files of atomic writes that a crash
// cut short (".NAME.tmp*", in the state directory and its sub-directories).
// The daemon opens its state directory before it writes anything, so none
// of them belongs to a write in progress.
func removeStaleTemps(dir string) {
	for _, pattern := range []string{filepath.Join(dir, ".*.tmp*"), filepath.Join(dir, "*", ".*.tmp*")} {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			os.Remove(m)
		}
	}
}

// Dir returns the state directory.
func (s *Store) Dir() string { return s.dir }

type activeDoc struct {
	Version int                   `json:"version"`
	Active  *protocol.ActiveState `json:"active"`
}

// Load returns the persisted active persona, nil when none is active (also
// when the file has never been written).
func (s *Store) Load() (*protocol.ActiveState, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, activeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load active persona: %w", err)
	}
	var doc activeDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, activeFile, err)
	}
	if doc.Version != fileVersion {
		return nil, fmt.Errorf("%w: %s: layout version %d, want %d", ErrCorrupt, activeFile, doc.Version, fileVersion)
	}
	return doc.Active, nil
}

// Save persists the active persona (nil for none) atomically and durably.
func (s *Store) Save(a *protocol.ActiveState) error {
	data, err := json.MarshalIndent(activeDoc{Version: fileVersion, Active: a}, "", "  ")
	if err != nil {
		return fmt.Errorf("save active persona: %w", err)
	}
	return WriteFileAtomic(filepath.Join(s.dir, activeFile), data, 0o600)
}
