package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
)

// Badger opens (and replays into) memory-mapped files: a new memtable file is
// created sparse and written through its mapping, so opening the store on a
// file system with no free block faults the process (SIGBUS) instead of
// failing. The store therefore keeps a reserve: a file of allocated blocks in
// the data directory, created while space is plentiful and given back when
// the store is opened on a full file system, so that the open and the reads
// that follow still work while writes are refused (507) under the watermark.
const (
	reserveName = "vmpersona-reserve"
	// maxReserve is the reserve's size; it stays under half the watermark,
	// so giving it back never lifts the refusal of writes by itself.
	maxReserve = 8 << 20
	// openNeed is the free space under which the reserve is given back
	// before Badger opens.
	openNeed = 4 << 20
)

func reserveSize(watermark uint64) int64 { return int64(min(maxReserve, watermark/2)) }

// releaseReserveForOpen gives the reserve back when free space is too low
// for Badger to open, and refuses to open (an error, not a fault) when even
// then there is no room.
func releaseReserveForOpen(dir string, watermark uint64, log *slog.Logger) error {
	if watermark == 0 {
		return nil
	}
	free, err := freeBytes(dir)
	if err != nil || free >= openNeed {
		return nil // a failed statfs says nothing of space: let Badger try
	}
	path := filepath.Join(dir, reserveName)
	if err := os.Remove(path); err == nil {
		log.Warn("disk almost full at start: gave back the store's reserve so that it can open; writes stay refused until space is freed",
			"dir", dir, "free_bytes", free)
		free, _ = freeBytes(dir)
	}
	if free < 64<<10 {
		return fmt.Errorf("%w: %s has %d bytes free, too little to open the store; free some space and start again",
			ErrStorageLow, dir, free)
	}
	return nil
}

// ensureReserve creates the reserve when it is missing and free space is
// over the watermark plus its size. It reports whether the reserve exists.
func ensureReserve(dir string, watermark, free uint64, log *slog.Logger) bool {
	size := reserveSize(watermark)
	if size <= 0 {
		return false
	}
	path := filepath.Join(dir, reserveName)
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return true
	}
	if free < watermark+uint64(size) {
		return false
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		log.Warn("store reserve: create", "err", err)
		return false
	}
	err = syscall.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		err = f.Truncate(0)
		if err == nil {
			_, err = f.Write(make([]byte, size))
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		log.Warn("store reserve: allocate", "err", err)
		return false
	}
	return true
}
