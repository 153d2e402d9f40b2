//go:build linux && (amd64 || arm64 || riscv64 || loong64)

package routing

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

var atFDCWD = unix.AT_FDCWD

// noOpenat2 is set once openat2 reported ENOSYS (kernels before 5.6).
var noOpenat2 atomic.Bool

// openBytes opens the NUL-terminated path in p O_PATH|O_CLOEXEC without
// allocating (the x/sys wrappers copy a string into a fresh buffer on every
// call). follow selects whether a symbolic link as the last component is
// followed. Magic links (/proc/PID/fd/N, /proc/PID/root) are refused where
// openat2 exists: a command is named by its path, not through another
// process's descriptors.
func openBytes(p []byte, follow bool) (int, error) {
	flags := uint64(unix.O_PATH | unix.O_CLOEXEC)
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	if !noOpenat2.Load() {
		how := unix.OpenHow{Flags: flags, Resolve: unix.RESOLVE_NO_MAGICLINKS}
		fd, _, e := unix.Syscall6(unix.SYS_OPENAT2, uintptr(atFDCWD),
			uintptr(unsafe.Pointer(&p[0])), uintptr(unsafe.Pointer(&how)), unsafe.Sizeof(how), 0, 0)
		if e == 0 {
			return int(fd), nil
		}
		if e != unix.ENOSYS {
			return -1, e
		}
		noOpenat2.Store(true)
	}
	fd, _, e := unix.Syscall6(unix.SYS_OPENAT, uintptr(atFDCWD),
		uintptr(unsafe.Pointer(&p[0])), uintptr(flags), 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}
