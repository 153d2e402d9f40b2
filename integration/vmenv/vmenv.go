// Package vmenv is the libvirt test environment shared by the real-VM test
// tiers (integration, integration/debian): it starts virtlogd and libvirtd
// by hand when they do not run and stops exactly those by PID, takes the
// lock that serialises the suites using the system libvirtd, keeps a
// registry of what a run started (processes, domains, mounts, daemons) and
// removes it however the run ends: normal end, failure, interrupt or the
// test deadline.
//
// It does nothing when merely imported; only the tiers' TestMain call it.
package vmenv

import (
	"bytes"
	"context"
	"encoding/xml"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// LibvirtURI is the libvirt instance the tiers run their domains in.
const LibvirtURI = "qemu:///system"

// The sockets of the libvirt daemons.
const (
	VirtlogdSock = "/run/libvirt/virtlogd-sock"
	LibvirtdSock = "/run/libvirt/libvirt-sock"
)

// Env is one test run's libvirt environment and the registry of what it
// started. Set the configuration fields before calling any method.
type Env struct {
	// LogPrefix starts every line Logf writes ("integration").
	LogPrefix string
	// DomainPrefix names the run's domains: DomainPrefix-PID-N.
	DomainPrefix string
	// RunDir holds the pid files of the daemons the run starts.
	RunDir string
	// VirshTimeout bounds one virsh command.
	VirshTimeout time.Duration
	// RestartLibvirt makes Virsh start the daemons again (up to three
	// attempts) when it finds none: other runs on the machine may stop the
	// daemons they started while this run uses them.
	RestartLibvirt bool
	// KillStrayQEMU makes DestroyDomain kill a domain's QEMU that libvirt
	// could not stop (libvirtd was stopped under the run).
	KillStrayQEMU bool

	mu      sync.Mutex
	procs   map[*os.Process]string // processes we started (hostd), by description
	domains map[string]bool        // libvirt domains we defined
	mounts  []string
	daemons []daemonPID // libvirt daemons we started
	done    bool
}

type daemonPID struct {
	name string // "virtlogd", "libvirtd"
	pid  int
}

// Logf writes one line to stderr, after LogPrefix.
func (e *Env) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, e.LogPrefix+": "+format+"\n", args...)
}

// AddProc registers a process the run started, killed by Cleanup.
func (e *Env) AddProc(p *os.Process, what string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.procs == nil {
		e.procs = map[*os.Process]string{}
	}
	e.procs[p] = what
}

// RemoveProc forgets a process that ended.
func (e *Env) RemoveProc(p *os.Process) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.procs, p)
}

// ProcPIDs returns the PIDs of the registered processes.
func (e *Env) ProcPIDs() map[int]bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	pids := map[int]bool{}
	for p := range e.procs {
		pids[p.Pid] = true
	}
	return pids
}

// AddDomain registers a domain the run defined, removed by Cleanup.
func (e *Env) AddDomain(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.domains == nil {
		e.domains = map[string]bool{}
	}
	e.domains[name] = true
}

// ForgetDomain forgets a domain that was removed.
func (e *Env) ForgetDomain(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.domains, name)
}

// AddMount registers a mount point, detached by Cleanup.
func (e *Env) AddMount(path string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mounts = append(e.mounts, path)
}

// Cleanup ends every registered process, removes every registered domain,
// detaches the mounts and stops the daemons the run started. It runs once.
func (e *Env) Cleanup() {
	e.mu.Lock()
	if e.done {
		e.mu.Unlock()
		return
	}
	e.done = true
	procs, domains, mounts := e.procs, e.domains, e.mounts
	e.procs, e.domains, e.mounts = map[*os.Process]string{}, map[string]bool{}, nil
	e.mu.Unlock()

	for p, what := range procs {
		e.Logf("cleanup: killing %s (pid %d)", what, p.Pid)
		_ = p.Kill()
		_, _ = p.Wait()
	}
	for name := range domains {
		e.Logf("cleanup: removing domain %s", name)
		e.DestroyDomain(name)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	// Taken after the domains are gone: removing them may have had to
	// start libvirtd again (RestartLibvirt).
	e.mu.Lock()
	daemons := e.daemons
	e.daemons = nil
	e.mu.Unlock()
	// Stop in reverse order of start: libvirtd before virtlogd. Not while
	// another suite's domains run in them: stopping libvirtd would leave
	// those QEMUs without their manager (and their suite failing).
	if len(daemons) > 0 {
		if others := e.othersDomains(); len(others) > 0 {
			e.Logf("leaving the libvirt daemons this run started running: other domains run in them (%s)", strings.Join(others, ", "))
			daemons = nil
		}
	}
	for i := len(daemons) - 1; i >= 0; i-- {
		e.stopDaemon(daemons[i])
	}
}

// CleanupOnExit runs Cleanup on SIGINT, SIGTERM and SIGHUP (then exits
// 130) and shortly before go test's -timeout, which panics without running
// any cleanup (then exits 3).
func (e *Env) CleanupOnExit() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		e.Logf("%v: removing what the run started", s)
		e.Cleanup()
		os.Exit(130)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(d/10, time.Minute)
			time.AfterFunc(d-margin, func() {
				e.Logf("the test deadline (%s) is near: removing what the run started and stopping", d)
				e.Cleanup()
				os.Exit(3)
			})
		}
	}
}

// LibvirtTestsLock serialises the suites that use the machine's system
// libvirtd: each may start and stop libvirtd, and a hostd with libvirt
// discovery connects to every domain's agent channel, the other suites'
// VMs included.
const LibvirtTestsLock = "/run/lock/vmpersona-libvirt-tests.lock"

// LockLibvirtTests takes LibvirtTestsLock for the life of the process,
// waiting while another suite holds it.
func (e *Env) LockLibvirtTests() error {
	if err := os.MkdirAll(filepath.Dir(LibvirtTestsLock), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(LibvirtTestsLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		return nil // held until the process exits
	}
	e.Logf("another suite uses the system libvirtd (it holds %s): waiting for it", LibvirtTestsLock)
	t0 := time.Now()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", LibvirtTestsLock, err)
	}
	e.Logf("got %s after %s", LibvirtTestsLock, time.Since(t0).Round(time.Second))
	return nil
}

// EnsureKVMDeviceGroup gives /dev/kvm Debian's udev permissions (root:kvm
// 0660) when it has the kernel's bare root:root 0600 (no udev here).
// Otherwise libvirtd probes QEMU as root with KVM, then finds /dev/kvm
// unusable for the libvirt-qemu user, declares its capability cache invalid
// ("KVM was enabled when probing …, but it is not available now") and
// probes QEMU again on every define, start and capabilities call: 5 s idle,
// a minute on a loaded machine. The test domains use TCG either way.
func (e *Env) EnsureKVMDeviceGroup() {
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/kvm", &st); err != nil || st.Mode&0o060 != 0 || st.Gid != 0 {
		return
	}
	grp, err := user.LookupGroup("kvm")
	if err != nil {
		return
	}
	gid, err := strconv.Atoi(grp.Gid)
	if err != nil {
		return
	}
	if err := os.Chown("/dev/kvm", 0, gid); err != nil {
		e.Logf("chown /dev/kvm: %v", err)
		return
	}
	if err := os.Chmod("/dev/kvm", 0o660); err != nil {
		e.Logf("chmod /dev/kvm: %v", err)
		return
	}
	e.Logf("/dev/kvm was root:root 0600 (no udev): set to root:kvm 0660 as Debian's udev rule does, so that libvirtd keeps its QEMU capability cache")
}

// EnsureLibvirt starts virtlogd and libvirtd when they do not answer.
func (e *Env) EnsureLibvirt() error {
	if err := e.EnsureDaemon("virtlogd", VirtlogdSock); err != nil {
		return err
	}
	return e.EnsureDaemon("libvirtd", LibvirtdSock)
}

// EnsureDaemon starts a libvirt daemon by hand (systemd is not PID 1 on
// these machines) unless one already answers on its socket; only a daemon
// started here is registered to be stopped.
func (e *Env) EnsureDaemon(name, sock string) error {
	if SocketAnswers(sock) {
		e.Logf("%s already running (answers on %s): leaving it alone", name, sock)
		return nil
	}
	pidFile := filepath.Join(e.RunDir, name+".pid")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/sbin/"+name, "-d", "--pid-file", pidFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("starting %s: %w\n%s", name, err, out)
	}
	var pid int
	for ctx.Err() == nil {
		b, err := os.ReadFile(pidFile)
		if err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 {
				pid = p
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if pid == 0 {
		return fmt.Errorf("%s wrote no pid file %s", name, pidFile)
	}
	e.mu.Lock()
	e.daemons = append(e.daemons, daemonPID{name: name, pid: pid})
	e.mu.Unlock()
	for !SocketAnswers(sock) {
		if ctx.Err() != nil {
			return fmt.Errorf("%s (pid %d) does not answer on %s", name, pid, sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.Logf("started %s (pid %d)", name, pid)
	return nil
}

// SocketAnswers reports whether a unix socket accepts a connection.
func SocketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// stopDaemon stops a daemon the run started, by its PID, after checking the
// PID is still that daemon.
func (e *Env) stopDaemon(d daemonPID) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.pid))
	if err != nil || !bytes.Contains(cmdline, []byte(d.name)) {
		e.Logf("%s (pid %d) already gone", d.name, d.pid)
		return
	}
	e.Logf("stopping %s (pid %d), which this run started", d.name, d.pid)
	_ = syscall.Kill(d.pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", d.pid)); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.Logf("%s (pid %d) did not stop in 15s: SIGKILL", d.name, d.pid)
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
}

// Virsh runs one virsh command against the system instance, with a
// deadline of VirshTimeout; with RestartLibvirt it starts the daemons again
// when it finds none.
func (e *Env) Virsh(ctx context.Context, args ...string) (string, error) {
	for attempt := 1; ; attempt++ {
		out, err := e.virshOnce(ctx, args...)
		if err == nil || !e.RestartLibvirt || attempt == 3 || !strings.Contains(out, "Failed to connect socket") {
			return out, err
		}
		e.Logf("virsh %s: libvirt is gone (another run stopped it?); starting it again", args[0])
		if err := e.EnsureLibvirt(); err != nil {
			return out, err
		}
	}
}

func (e *Env) virshOnce(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, e.VirshTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", LibvirtURI}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// DefineDomain writes a domain's XML to xmlPath and defines it, failing
// the test on error. The domain is registered for Cleanup before it is
// defined, and destroyed and undefined when the test ends; if the test
// failed, onFailure (if not nil) prints its diagnostics first.
func (e *Env) DefineDomain(t testing.TB, ctx context.Context, name, xmlPath string, domainXML []byte, onFailure func()) {
	t.Helper()
	if err := os.WriteFile(xmlPath, domainXML, 0o644); err != nil {
		t.Fatal(err)
	}
	e.AddDomain(name)
	t.Cleanup(func() {
		if t.Failed() && onFailure != nil {
			onFailure()
		}
		e.DestroyDomain(name)
		e.ForgetDomain(name)
	})
	if _, err := e.Virsh(ctx, "define", xmlPath); err != nil {
		t.Fatal(err)
	}
}

// DestroyDomain destroys and undefines a domain, ignoring "not running" and
// "not found", and removes libvirt's log of it.
func (e *Env) DestroyDomain(name string) {
	ctx := context.Background()
	_, _ = e.Virsh(ctx, "destroy", name)
	_, _ = e.Virsh(ctx, "undefine", name)
	_ = os.Remove("/var/log/libvirt/qemu/" + name + ".log")
	if e.KillStrayQEMU {
		e.killDomainQEMU(name)
	}
}

// killDomainQEMU ends the QEMU process of one of this run's domains when
// libvirt could not (libvirtd was stopped under the run: its domains go on
// running without it). The process is found by its "-name guest=NAME,".
func (e *Env) killDomainQEMU(name string) {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil || !bytes.HasPrefix(b, []byte("/usr/bin/qemu-system")) || !bytes.Contains(b, []byte("\x00guest="+name+",")) {
			continue
		}
		e.Logf("libvirt did not stop domain %s: killing its QEMU (pid %d)", name, pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// DomainName is the name of this run's n-th domain.
func (e *Env) DomainName(n int) string {
	return fmt.Sprintf("%s-%d-%d", e.DomainPrefix, os.Getpid(), n)
}

// othersDomains lists the running domains that are not this run's. It does
// not start libvirt again.
func (e *Env) othersDomains() []string {
	out, err := e.virshOnce(context.Background(), "list", "--name")
	if err != nil {
		return nil
	}
	var others []string
	for _, name := range strings.Fields(out) {
		if !strings.HasPrefix(name, fmt.Sprintf("%s-%d-", e.DomainPrefix, os.Getpid())) {
			others = append(others, name)
		}
	}
	return others
}

// SweepStaleDomains removes domains left by earlier runs that were killed
// outright (their test process is gone).
func (e *Env) SweepStaleDomains(ctx context.Context) {
	out, err := e.Virsh(ctx, "list", "--all", "--name")
	if err != nil {
		e.Logf("listing domains: %v", err)
		return
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(e.DomainPrefix) + `-(\d+)-\d+$`)
	for _, name := range strings.Fields(out) {
		m := re.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue // that run is still going
		}
		e.Logf("removing domain %s left by an earlier run", name)
		e.DestroyDomain(name)
	}
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// XMLEscape escapes s for XML text and single-quoted attributes.
func XMLEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

// WaitFor polls cond every interval until it reports true or timeout
// passes; then the test fails with what and the last state cond described.
// It returns how long the wait took.
func WaitFor(t testing.TB, timeout, interval time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, last)
		}
		time.Sleep(interval)
	}
}

// StartProc starts cmd, killed with SIGKILL should the test process die,
// and registers it (as what) for Cleanup until it ends. The returned
// channel is closed when it has ended and been waited for.
func (e *Env) StartProc(cmd *exec.Cmd, what string) (exited chan struct{}, err error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited = make(chan struct{})
	e.AddProc(cmd.Process, what)
	go func() {
		_ = cmd.Wait()
		e.RemoveProc(cmd.Process)
		close(exited)
	}()
	return exited, nil
}
