//go:build linux && !(amd64 || arm64 || riscv64 || loong64)

package routing

import "golang.org/x/sys/unix"

// openBytes opens the NUL-terminated path in p O_PATH|O_CLOEXEC
// (allocating on these architectures). follow selects whether a symbolic
// link as the last component is followed.
func openBytes(p []byte, follow bool) (int, error) {
	flags := unix.O_PATH | unix.O_CLOEXEC
	if !follow {
		flags |= unix.O_NOFOLLOW
	}
	how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(unix.AT_FDCWD, string(p[:len(p)-1]), &how)
	if err == unix.ENOSYS {
		return unix.Open(string(p[:len(p)-1]), flags, 0)
	}
	return fd, err
}
