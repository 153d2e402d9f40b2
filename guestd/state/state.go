// Package state persists what the guest daemon must remember across restarts
// (the active persona, in a log of checksummed records written with one
// fdatasync each: see Store) and provides the crash-safe file write the other
// packages use: write a temporary file, fsync it, rename it over the target,
// fsync the directory.
package state

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrCorrupt reports a state file that exists but cannot be decoded.
var ErrCorrupt = errors.New("state: corrupt state file")

// fileVersion is the layout version of active.json, the active persona
// file of earlier versions (read at start, see Store).
const fileVersion = 1

// activeFile is the name of that file inside the state dir.
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
	// Plain system calls on the descriptor: an *os.File would register the
	// regular file with the poller first (five calls more, all refused).
	fd, tmp, err := createTemp(dir, "."+filepath.Base(path)+".tmp")
	if err != nil {
		syscall.ForkLock.RUnlock()
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = fill(fd, data, perm, false)
	syscall.ForkLock.RUnlock()
	if err == nil {
		err = swapIn(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReplaceFileReusing replaces path with data as ReplaceFile does (readers see
// the old or the new file, whole, at every instant; no fsync), for a file
// replaced again and again (the login profile, every activation): the
// previous file is kept under a hidden name beside it ("."+name+".prev") and
// the next replacement writes into that file, then exchanges the two names,
// instead of creating a new file and removing the old one. Creating a file
// allocates an inode, and ext4 without a journal checks every inode freed in
// the last 5–30 s before it reuses one: with many guests on one file system
// (the scale benchmark's 1,000 daemons) that scan was a tenth of a guest
// daemon's CPU per activation, and growing with the number of guests.
//
// The previous file is written over only while this daemon holds a write
// lease on it (F_SETLEASE), which the kernel grants only when no one else has
// the file open: a reader that opened path before an exchange keeps reading
// what it opened. Without the lease (a reader still has it, a hard link to it,
// a file system without leases) the previous file is removed and a new one
// created, as ReplaceFile does.
func ReplaceFileReusing(path string, data []byte, perm os.FileMode) error {
	prev := PreviousName(path)
	syscall.ForkLock.RLock()
	fd, err := openPrevious(prev)
	if err == nil {
		// Written over from the start, then cut to length: truncating to
		// zero first would make ext4 write the new data out at close (its
		// auto_da_alloc heuristic for a file rewritten after truncation).
		err = fill(fd, data, perm, true)
	}
	syscall.ForkLock.RUnlock()
	if err == nil {
		err = unix.Renameat2(unix.AT_FDCWD, prev, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
		if err != nil {
			// No file at path yet, or no exchange on this file system.
			err = os.Rename(prev, path)
		}
	}
	if err != nil {
		os.Remove(prev)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// fill writes data into the file open at fd from its start, cuts the file
// to that length when cut is set (a file written over), gives it perm and
// closes fd.
func fill(fd int, data []byte, perm os.FileMode, cut bool) error {
	err := writeAll(fd, data)
	if err == nil && cut {
		err = ignoringEINTR(func() error { return unix.Ftruncate(fd, int64(len(data))) })
	}
	if err == nil {
		err = ignoringEINTR(func() error { return unix.Fchmod(fd, uint32(perm.Perm())) })
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	return err
}

// PreviousName is where ReplaceFileReusing keeps the file it replaced: a
// hidden name beside path (not matched by a shell's "*.sh").
func PreviousName(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".prev")
}

// openPrevious opens the file at prev for writing from its start: the existing one
// when it is a regular file with one link that no one else has open (held
// under a write lease until the descriptor is closed), else a new one.
func openPrevious(prev string) (int, error) {
	fd, err := unix.Open(prev, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == nil {
		var st unix.Stat_t
		ok := unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 &&
			// Granted only when no other descriptor has the file open.
			ignoringEINTR(func() error { _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); return err }) == nil
		if ok {
			return fd, nil
		}
		unix.Close(fd)
	}
	if err := unix.Unlink(prev); err != nil && err != unix.ENOENT {
		return -1, err
	}
	for {
		fd, err = unix.Open(prev, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// createTemp creates a new file named prefix and a random number in dir,
// for writing, as os.CreateTemp does.
func createTemp(dir, prefix string) (fd int, name string, err error) {
	for range 10000 {
		name = filepath.Join(dir, prefix+strconv.FormatUint(uint64(rand.Uint32()), 10))
		fd, err = unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err == unix.EINTR || err == unix.EEXIST {
			continue
		}
		return fd, name, err
	}
	return -1, "", &os.PathError{Op: "createtemp", Path: filepath.Join(dir, prefix+"*"), Err: os.ErrExist}
}

// writeAll writes data to fd, all of it.
func writeAll(fd int, data []byte) error {
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		data = data[n:]
	}
	return nil
}

func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

// swapIn puts the file tmp at path. Where path exists the two names are
// exchanged atomically (renameat2 RENAME_EXCHANGE) and the old file, now at
// tmp, is removed: a rename over an existing file makes ext4 start writing
// the new file's data out first (its auto_da_alloc replace-via-rename
// heuristic), 0.15–0.35 ms per activation on the project's test machine,
// against ≈ 0.03 ms for the exchange and the unlink. Readers see the old or
// the new file at every instant either way. Without the exchange (no such
// file yet, or a file system that does not support it) it is a plain rename.
func swapIn(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
	if err != nil {
		return os.Rename(tmp, path)
	}
	// path holds the new file now; an old file left behind (the removal
	// failed) is a hidden name no one reads.
	os.Remove(tmp)
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
