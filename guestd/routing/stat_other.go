//go:build linux && !(amd64 || arm64 || riscv64 || loong64)

package routing

import "golang.org/x/sys/unix"

// statBytes stats the NUL-terminated path in p (allocating on these
// architectures, whose stat system call differs).
func statBytes(p []byte, st *unix.Stat_t, follow bool) error {
	s := string(p[:len(p)-1])
	if follow {
		return unix.Stat(s, st)
	}
	return unix.Lstat(s, st)
}
