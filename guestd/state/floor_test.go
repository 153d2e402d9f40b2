package state

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkDiskFloor measures what one durable write costs on the disk the
// tests run on, for comparison with an activation measured in the same run:
// a 4 KiB overwrite + fdatasync, a 4 KiB append + fdatasync, and an atomic
// replace (temporary file, fsync, rename, directory fsync).
func BenchmarkDiskFloor(b *testing.B) {
	page := make([]byte, 4096)
	for i := range page {
		page[i] = byte('a' + i%26)
	}
	b.Run("overwrite-4k-fdatasync", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "f"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		f.Write(page)
		f.Sync()
		for b.Loop() {
			if _, err := f.WriteAt(page, 0); err != nil {
				b.Fatal(err)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append-4k-fdatasync", func(b *testing.B) {
		f, err := os.OpenFile(filepath.Join(b.TempDir(), "f"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		for b.Loop() {
			if _, err := f.Write(page); err != nil {
				b.Fatal(err)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("atomic-replace-4k", func(b *testing.B) {
		p := filepath.Join(b.TempDir(), "f")
		for b.Loop() {
			if err := WriteFileAtomic(p, page, 0o600); err != nil {
				b.Fatal(err)
			}
		}
	})
}
