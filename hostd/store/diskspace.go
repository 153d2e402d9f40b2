package store

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/errdefs"
)

// ErrStorageLow refuses a write while the data directory's file system has
// less free space than the watermark (Options.MinFreeBytes): Badger commits
// through memory-mapped files, and a commit into a full file system faults
// the process instead of failing. Reads keep working; writes do again as
// soon as space is freed (checked every DiskCheckInterval, and before a
// write when the last check is older than that).
var ErrStorageLow = errdefs.New(errdefs.ErrInsufficientStorage, "insufficient-storage", "too little free disk space for the store")

// DefaultMinFreeBytes is the default watermark: the value log grows by
// whole files (256 MiB, sparse) and a compaction writes new tables before
// it drops the old ones, so some room must stay free.
const DefaultMinFreeBytes = 256 << 20

// DiskCheckInterval is how often free space is checked.
const DiskCheckInterval = 250 * time.Millisecond

// diskGuard keeps track of the data directory's free space.
type diskGuard struct {
	dir     string
	min     uint64 // 0: no watermark
	onCheck func(low bool, free uint64)
	log     *slog.Logger

	mu       sync.Mutex
	checked  time.Time
	reserved bool // the open reserve exists (reserve.go); under mu
	low      atomic.Bool
	free     atomic.Uint64
	statErr  atomic.Pointer[error]
}

func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// check measures free space now (at most once per interval unless forced).
func (g *diskGuard) check(force bool) {
	if g == nil || g.min == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	if !force && now.Sub(g.checked) < DiskCheckInterval {
		return
	}
	g.checked = now
	free, err := freeBytes(g.dir)
	if err != nil {
		g.statErr.Store(&err)
		return // keep the last state: a failed statfs says nothing of space
	}
	g.statErr.Store(nil)
	g.free.Store(free)
	low := free < g.min
	if !low && !g.reserved {
		g.reserved = ensureReserve(g.dir, g.min, free, g.log)
	}
	if was := g.low.Swap(low); was != low {
		if low {
			g.log.Error("free disk space under the watermark: writes are refused (507) until space is freed",
				"dir", g.dir, "free_mib", free>>20, "watermark_mib", g.min>>20)
		} else {
			g.log.Warn("free disk space over the watermark again: writes resume", "dir", g.dir, "free_mib", free>>20)
		}
	}
	if g.onCheck != nil {
		g.onCheck(low, free)
	}
}

// refuse answers ErrStorageLow (wrapped with the figures) while space is low.
func (g *diskGuard) refuse() error {
	if g == nil || g.min == 0 {
		return nil
	}
	g.check(false)
	if !g.low.Load() {
		return nil
	}
	return fmt.Errorf("%w: %s has %d MiB free, under the watermark of %d MiB (--min-free-space); writes resume when space is freed",
		ErrStorageLow, g.dir, g.free.Load()>>20, g.min>>20)
}

// loop checks free space until stop is closed.
func (g *diskGuard) loop(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if g.min == 0 {
		return
	}
	t := time.NewTicker(DiskCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			g.check(true)
		}
	}
}

// StorageLow reports whether writes are refused for want of disk space, and
// the free space last measured.
func (s *Store) StorageLow() (low bool, free uint64) {
	return s.disk.low.Load(), s.disk.free.Load()
}

// guardedUpdate is db.Update behind the free-space watermark.
func (s *Store) guardedUpdate(fn func(txn *badger.Txn) error) error {
	if err := s.disk.refuse(); err != nil {
		return err
	}
	err := s.db.Update(fn)
	if errors.Is(err, syscall.ENOSPC) {
		s.disk.check(true)
		return fmt.Errorf("%w: %w", ErrStorageLow, err)
	}
	return err
}
