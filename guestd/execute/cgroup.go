package execute

import (
	"bufio"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Each process runs in a cgroup of its own, created under the daemon's
// cgroup of the unified (v2) hierarchy, and started in it directly
// (clone3 with CLONE_INTO_CGROUP): no window in which a child could leave
// before it is accounted. When the process ends, cgroup.kill ends everything
// still in the cgroup, and the cgroup is removed.

var (
	cgroupOnce sync.Once
	cgroupBase string // the daemon's own cgroup directory, "" when unavailable
	cgroupOff  atomic.Bool
	cgroupSeq  atomic.Uint64
	cgroupWhy  string
)

// CgroupStatus reports whether processes run in cgroups of their own, and
// why not when they do not.
func CgroupStatus() (base string, ok bool, reason string) {
	cgroupOnce.Do(findCgroupBase)
	if cgroupBase == "" || cgroupOff.Load() {
		return cgroupBase, false, cgroupWhy
	}
	return cgroupBase, true, ""
}

// findCgroupBase locates the daemon's cgroup in a mounted cgroup v2
// hierarchy that supports cgroup.kill (Linux 5.14).
func findCgroupBase() {
	mount := cgroup2Mount()
	if mount == "" {
		cgroupWhy = "no cgroup v2 hierarchy is mounted"
		return
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		cgroupWhy = "cannot read /proc/self/cgroup: " + err.Error()
		return
	}
	var rel string
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			rel, found = p, true
		}
	}
	if !found {
		cgroupWhy = "the daemon is in no cgroup v2"
		return
	}
	base := strings.TrimSuffix(mount+rel, "/")
	probe := base + "/vmpersona-probe-" + strconv.Itoa(os.Getpid())
	if err := os.Mkdir(probe, 0o700); err != nil && !os.IsExist(err) {
		cgroupWhy = "cannot create a cgroup under " + base + ": " + err.Error()
		return
	}
	_, err = os.Stat(probe + "/cgroup.kill")
	os.Remove(probe)
	if err != nil {
		cgroupWhy = "the kernel has no cgroup.kill (Linux 5.14 or later)"
		return
	}
	cgroupBase = base
	removeStale(base)
}

// removeStale ends what a previous daemon (killed before it could clean
// up, and no longer running) left in its commands' cgroups, and removes
// them.
func removeStale(base string) {
	ents, err := os.ReadDir(base)
	if err != nil {
		return
	}
	own := "vmpersona-exec-" + strconv.Itoa(os.Getpid()) + "-"
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "vmpersona-exec-") || strings.HasPrefix(e.Name(), own) {
			continue
		}
		// Only a dead daemon's: several daemons may share a cgroup (on a
		// host, in tests), and a live one's commands are its own business.
		pid, _, _ := strings.Cut(strings.TrimPrefix(e.Name(), "vmpersona-exec-"), "-")
		if n, err := strconv.Atoi(pid); err != nil || n <= 0 || unix.Kill(n, 0) != unix.ESRCH {
			continue
		}
		g := &cgroup{dir: base + "/" + e.Name(), fd: -2, events: -1}
		slog.Warn("ending the processes a previous run left in a command's cgroup", "cgroup", g.dir)
		g.remove()
	}
}

// cgroup2Mount returns where the unified hierarchy is mounted ("" for
// nowhere): /sys/fs/cgroup on a pure v2 system, /sys/fs/cgroup/unified on a
// hybrid one.
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mount-point ... - fstype source options
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4]
			}
		}
	}
	return ""
}

func disableCgroups(err error) {
	if cgroupOff.CompareAndSwap(false, true) {
		cgroupWhy = "starting a process in a cgroup failed: " + err.Error()
		slog.Warn("processes run without a cgroup of their own: daemons they start may outlive them", "err", err)
	}
}

type cgroup struct {
	dir    string
	fd     int // the directory, for CLONE_INTO_CGROUP
	events int // cgroup.events, read to see whether anything is left
	// killed: cgroup.kill was written. Such a cgroup is never used again:
	// some kernels kill every process cloned into a cgroup that was once
	// killed.
	killed atomic.Bool
}

// Empty cgroups are kept for the next processes instead of being removed
// and created again (a mkdir and an rmdir in cgroupfs per process, and
// their opens): a cgroup goes back to the pool only when nothing is left in
// it, so a command never starts beside another's leftovers.
var (
	poolMu sync.Mutex
	pool   []*cgroup
)

// poolSize bounds the empty cgroups kept.
const poolSize = 16

// newCgroup returns an empty cgroup for one process; nil when cgroups are
// unavailable (the process group is then all that bounds it).
func newCgroup() *cgroup {
	cgroupOnce.Do(findCgroupBase)
	if cgroupBase == "" || cgroupOff.Load() {
		return nil
	}
	poolMu.Lock()
	if n := len(pool); n > 0 {
		g := pool[n-1]
		pool = pool[:n-1]
		poolMu.Unlock()
		return g
	}
	poolMu.Unlock()
	dir := cgroupBase + "/vmpersona-exec-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(cgroupSeq.Add(1), 10)
	if err := unix.Mkdir(dir, 0o700); err != nil {
		disableCgroups(err)
		return nil
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Rmdir(dir)
		disableCgroups(err)
		return nil
	}
	events, err := unix.Openat(fd, "cgroup.events", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		events = -1 // never reused: removed after its process
	}
	return &cgroup{dir: dir, fd: fd, events: events}
}

// populated reports whether a process is left in the cgroup (true when it
// cannot tell).
func (g *cgroup) populated() bool {
	if g.events < 0 {
		return true
	}
	var buf [128]byte
	n, err := unix.Pread(g.events, buf[:], 0)
	if err != nil || n <= 0 {
		return true
	}
	// "populated 0\nfrozen 0\n"
	const key = "populated "
	s := string(buf[:n])
	i := strings.Index(s, key)
	return i < 0 || i+len(key) >= len(s) || s[i+len(key)] != '0'
}

// done ends the cgroup's use by one process, whose leader has been reaped:
// an empty cgroup goes back to the pool; one where something is left (a
// daemon the command started, say) is killed and removed.
func (g *cgroup) done() {
	if g == nil {
		return
	}
	if !g.killed.Load() && !g.populated() {
		poolMu.Lock()
		if len(pool) < poolSize && !cgroupOff.Load() {
			pool = append(pool, g)
			poolMu.Unlock()
			return
		}
		poolMu.Unlock()
	}
	g.kill()
	g.remove()
}

// ReleaseCgroups removes the empty cgroups kept for later processes (at
// the daemon's end).
func ReleaseCgroups() {
	poolMu.Lock()
	p := pool
	pool = nil
	poolMu.Unlock()
	for _, g := range p {
		g.remove()
	}
}

// kill ends every process left in the cgroup.
func (g *cgroup) kill() {
	if g == nil {
		return
	}
	g.killed.Store(true)
	if err := os.WriteFile(g.dir+"/cgroup.kill", []byte("1"), 0); err != nil {
		slog.Warn("cgroup.kill failed", "cgroup", g.dir, "err", err)
	}
}

// remove kills what is left and removes the cgroup once it is empty (the
// killed processes take a moment to exit).
func (g *cgroup) remove() {
	if g == nil || g.fd == -1 {
		return
	}
	if g.fd >= 0 {
		unix.Close(g.fd)
	}
	if g.events >= 0 {
		unix.Close(g.events)
	}
	g.fd, g.events = -1, -1
	for i := 0; ; i++ {
		err := unix.Rmdir(g.dir)
		if err == nil || err == unix.ENOENT {
			return
		}
		if err != unix.EBUSY || i == 200 {
			slog.Warn("removing a cgroup failed", "cgroup", g.dir, "err", err)
			return
		}
		if i == 0 {
			g.kill()
		}
		time.Sleep(time.Millisecond)
	}
}
