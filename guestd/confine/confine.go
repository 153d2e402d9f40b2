// Package confine has the guest kernel enforce a persona's restrictions for
// everything a command starts, with Landlock: a Domain, built once per
// activation, denies the right to execute restricted files (or grants it
// only to the allowed ones), and every process the agent starts for an exec
// request runs in it, its children included. sh -c 'rm …', find -exec rm,
// xargs rm and a script calling rm then fail in the kernel.
//
// Landlock only grants: a Domain handles the execute right alone and adds
// rules granting it everywhere except on the restricted files. Directories
// that hold none of them are granted as a whole (one rule each); the
// directories on the way to a restricted file are walked and each of their
// other entries granted by itself. A file created later in such a directory
// (/usr/bin) has no rule and cannot be executed until the next activation.
//
// The domain is applied on a fresh OS thread just before the fork (Start):
// Landlock confines the calling thread and what it forks, so the daemon
// itself is never confined, and no helper process is needed.
package confine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnavailable reports a kernel without Landlock.
var ErrUnavailable = errors.New("confine: the kernel has no Landlock")

var (
	abiOnce sync.Once
	abi     int
)

// ABI returns the kernel's Landlock ABI version, 0 when it has none (not
// built in, or not in the active LSM list).
func ABI() int {
	abiOnce.Do(func() {
		v, _, e := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
		if e == 0 {
			abi = int(v)
		}
	})
	return abi
}

// WritablePlaces are where anyone may create files: with DenyWritable,
// nothing there runs (a copy of a restricted command under another name).
var WritablePlaces = []string{"/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root", "/var/lib/vmpersona-guest/tmp"}

// Spec describes a domain.
type Spec struct {
	// Denied are files (their real paths) nothing may execute.
	Denied []string
	// Allowed, when non-nil, turns the domain into an allowlist: only these
	// files (and the interpreters they name) may be executed.
	Allowed []string
	// Keep are files that stay executable whatever the rest says
	// (override targets); their interpreters too.
	Keep []string
	// DenyWritable refuses execution under WritablePlaces (deny mode; an
	// allowlist grants nothing there unless listed).
	DenyWritable bool
	// Root is the tree walked in deny mode ("/" when empty; tests use a
	// temporary one).
	Root string
}

// Domain is a built Landlock ruleset. It is safe for concurrent use; the
// ruleset is closed when the Domain is no longer referenced.
type Domain struct {
	fd    int
	Rules int // how many rules it holds
	ABI   int
	w     workers // the confined threads that start processes
}

// Build creates the ruleset described by spec.
func Build(spec Spec) (*Domain, error) {
	v := ABI()
	if v == 0 {
		return nil, ErrUnavailable
	}
	attr := struct{ handledFS uint64 }{unix.LANDLOCK_ACCESS_FS_EXECUTE}
	fd, _, e := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr), 0)
	if e != 0 {
		return nil, fmt.Errorf("confine: landlock_create_ruleset: %w", e)
	}
	d := &Domain{fd: int(fd), ABI: v}
	runtime.AddCleanup(d, func(fd int) { unix.Close(fd) }, d.fd)
	b := &builder{d: d, denied: map[fileID]bool{}}
	for _, p := range spec.Denied {
		if id, ok := statID(p); ok {
			b.denied[id] = true
		}
	}
	var err error
	if spec.Allowed != nil {
		for _, p := range slices.Concat(spec.Allowed, spec.Keep) {
			if err = b.grantWithInterpreters(p, 0); err != nil {
				return nil, err
			}
		}
		return d, nil
	}
	root := spec.Root
	if root == "" {
		root = "/"
	}
	skip := map[string]bool{}
	walk := map[string]bool{}
	mark := func(p string) {
		for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
			walk[dir] = true
			if dir == "/" || dir == "." {
				break
			}
		}
	}
	for _, p := range spec.Denied {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			skip[real] = true
			mark(real)
		}
	}
	if spec.DenyWritable {
		for _, p := range WritablePlaces {
			if real, err := filepath.EvalSymlinks(p); err == nil {
				skip[real] = true
				mark(real)
			}
		}
	}
	if err = b.walk(filepath.Clean(root), walk, skip); err != nil {
		return nil, err
	}
	for _, p := range spec.Keep {
		if err = b.grantWithInterpreters(p, 0); err != nil {
			return nil, err
		}
	}
	return d, nil
}

type fileID struct{ dev, ino uint64 }

func statID(p string) (fileID, bool) {
	var st unix.Stat_t
	if unix.Stat(p, &st) != nil {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), uint64(st.Ino)}, true
}

type builder struct {
	d      *Domain
	denied map[fileID]bool
}

// walk grants execution on everything under dir except the skipped paths,
// descending into the directories on the way to them.
func (b *builder) walk(dir string, walk, skip map[string]bool) error {
	if !walk[dir] {
		return b.grant(dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // unreadable: nothing granted there
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if skip[p] {
			continue
		}
		switch {
		case e.Type()&os.ModeSymlink != 0:
			// The file it leads to is granted (or not) where it lives.
		case e.IsDir():
			if err := b.walk(p, walk, skip); err != nil {
				return err
			}
		case e.Type().IsRegular():
			if err := b.grant(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// grant adds a rule giving the execute right on p (beneath it, for a
// directory), unless p is a denied file.
func (b *builder) grant(p string) error {
	fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil // gone meanwhile, or a link
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return nil
	}
	mode := st.Mode & unix.S_IFMT
	if mode != unix.S_IFDIR && mode != unix.S_IFREG {
		return nil
	}
	if mode == unix.S_IFREG && b.denied[fileID{uint64(st.Dev), uint64(st.Ino)}] {
		return nil // a hard link of a denied file
	}
	attr := unix.LandlockPathBeneathAttr{Allowed_access: unix.LANDLOCK_ACCESS_FS_EXECUTE, Parent_fd: int32(fd)}
	_, _, e := unix.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, uintptr(b.d.fd), unix.LANDLOCK_RULE_PATH_BENEATH, uintptr(unsafe.Pointer(&attr)), 0, 0, 0)
	if e != 0 {
		return fmt.Errorf("confine: landlock_add_rule %s: %w", p, e)
	}
	b.d.Rules++
	return nil
}

// grantWithInterpreters grants p (followed to its file) and what the kernel
// needs to start it: the #! interpreter of a script, the ELF interpreter
// (dynamic loader) of a program.
func (b *builder) grantWithInterpreters(p string, depth int) error {
	real, err := filepath.EvalSymlinks(p)
	if err != nil || depth > 4 {
		return nil
	}
	if err := b.grant(real); err != nil {
		return err
	}
	if interp := interpreter(real); interp != "" {
		return b.grantWithInterpreters(interp, depth+1)
	}
	return nil
}

// interpreter returns the #! interpreter of a script or the PT_INTERP of
// an ELF program, "" for none.
func interpreter(p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	if len(head) > 2 && head[0] == '#' && head[1] == '!' {
		line, _, _ := strings.Cut(string(head[2:]), "\n")
		fields := strings.Fields(line)
		if len(fields) > 0 {
			return fields[0]
		}
		return ""
	}
	return elfInterp(f, head)
}

// elfInterp reads PT_INTERP from a 64-bit little-endian ELF file.
func elfInterp(f *os.File, head []byte) string {
	le := func(b []byte) uint64 {
		var v uint64
		for i := len(b) - 1; i >= 0; i-- {
			v = v<<8 | uint64(b[i])
		}
		return v
	}
	if len(head) < 64 || string(head[:4]) != "\x7fELF" || head[4] != 2 || head[5] != 1 {
		return ""
	}
	phoff, phentsize, phnum := le(head[32:40]), le(head[54:56]), le(head[56:58])
	if phentsize < 56 || phnum > 256 {
		return ""
	}
	ph := make([]byte, phentsize*phnum)
	if _, err := f.ReadAt(ph, int64(phoff)); err != nil {
		return ""
	}
	for i := uint64(0); i < phnum; i++ {
		e := ph[i*phentsize:]
		if le(e[0:4]) != 3 { // PT_INTERP
			continue
		}
		off, size := le(e[8:16]), le(e[32:40])
		if size == 0 || size > 4096 {
			return ""
		}
		buf := make([]byte, size)
		if _, err := f.ReadAt(buf, int64(off)); err != nil {
			return ""
		}
		return strings.TrimRight(string(buf), "\x00")
	}
	return ""
}

// Start calls start (which forks and executes a process) on an OS thread
// confined by the domain, so the process and everything it starts run in
// it. Confined threads are never given back to the Go scheduler (new
// threads of the runtime are not cloned from them): each serves the
// domain's starts, one at a time, and ends, with its Landlock domain, after
// idleWorker without work. A nil Domain calls start as it is.
func (d *Domain) Start(start func() error) error {
	if d == nil {
		return start()
	}
	req := startReq{fn: start, errc: make(chan error, 1)}
	for {
		select {
		case d.work().reqs <- req: // an idle confined thread takes it
			return <-req.errc
		default:
		}
		w := d.work()
		w.mu.Lock()
		if w.threads < maxWorkers {
			w.threads++
			w.mu.Unlock()
			go d.worker(req)
			return <-req.errc
		}
		w.mu.Unlock()
		// Every confined thread is busy: wait for one (a thread that
		// ends meanwhile lets the next round start another).
		t := time.NewTimer(time.Millisecond)
		select {
		case w.reqs <- req:
			t.Stop()
			return <-req.errc
		case <-t.C:
		}
	}
}

// maxWorkers bounds the confined threads of one domain; idleWorker is how
// long one waits for work before it ends.
const (
	maxWorkers = 4
	idleWorker = 5 * time.Second
)

type startReq struct {
	fn   func() error
	errc chan error
}

type workers struct {
	once    sync.Once
	reqs    chan startReq
	mu      sync.Mutex
	threads int
}

func (d *Domain) work() *workers {
	d.w.once.Do(func() { d.w.reqs = make(chan startReq) })
	return &d.w
}

// worker confines its thread and serves starts until it has been idle for
// idleWorker. It never unlocks the thread: its end terminates the thread.
func (d *Domain) worker(first startReq) {
	runtime.LockOSThread()
	w := d.work()
	if err := d.restrictThread(); err != nil {
		w.mu.Lock()
		w.threads--
		w.mu.Unlock()
		first.errc <- err
		return
	}
	first.errc <- first.fn()
	idle := time.NewTimer(idleWorker)
	for {
		select {
		case r := <-w.reqs:
			r.errc <- r.fn()
			idle.Reset(idleWorker)
		case <-idle.C:
			w.mu.Lock()
			w.threads--
			w.mu.Unlock()
			return
		}
	}
}

func (d *Domain) restrictThread() error {
	_, _, e := unix.RawSyscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(d.fd), 0, 0)
	if e == unix.EPERM {
		// Without CAP_SYS_ADMIN, Landlock wants no_new_privs (set on
		// this thread only, inherited by the process).
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("confine: no_new_privs: %w", err)
		}
		_, _, e = unix.RawSyscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(d.fd), 0, 0)
	}
	if e != 0 {
		return fmt.Errorf("confine: landlock_restrict_self: %w", e)
	}
	return nil
}
