//go:build linux && (amd64 || arm64 || riscv64 || loong64)

package routing

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

var atFDCWD = unix.AT_FDCWD

// statBytes stats the NUL-terminated path in p without allocating (the
// x/sys wrappers copy a string into a fresh buffer on every call). follow
// selects stat (true) or lstat (false).
func statBytes(p []byte, st *unix.Stat_t, follow bool) error {
	flags := uintptr(0)
	if !follow {
		flags = unix.AT_SYMLINK_NOFOLLOW
	}
	_, _, e := unix.Syscall6(unix.SYS_NEWFSTATAT, uintptr(atFDCWD),
		uintptr(unsafe.Pointer(&p[0])), uintptr(unsafe.Pointer(st)), flags, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}
