//go:build integration_full

package debian

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const libvirtURI = "qemu:///system"

var env struct {
	repo    string
	runDir  string
	hostd   string // vmpersona-hostd built from source
	debs    map[string]string
	rootfs  string // the cached debootstrap tarball
	rootDur time.Duration
}

// reg holds what the run started, removed however the run ends.
var reg = &registry{procs: map[*os.Process]string{}, domains: map[string]bool{}}

type registry struct {
	mu      sync.Mutex
	procs   map[*os.Process]string
	domains map[string]bool
	mounts  []string
	daemons []daemonPID
	done    bool
}

type daemonPID struct {
	name string
	pid  int
}

func (r *registry) add(f func(*registry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

func (r *registry) cleanup() {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done = true
	procs, domains, mounts := r.procs, r.domains, r.mounts
	r.procs, r.domains, r.mounts = map[*os.Process]string{}, map[string]bool{}, nil
	r.mu.Unlock()
	for p, what := range procs {
		logf("cleanup: killing %s (pid %d)", what, p.Pid)
		_ = p.Kill()
		_, _ = p.Wait()
	}
	for name := range domains {
		logf("cleanup: removing domain %s", name)
		removeDomain(name)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	// Taken after the domains are gone: removing them may have had to
	// start libvirtd again.
	r.mu.Lock()
	daemons := r.daemons
	r.daemons = nil
	r.mu.Unlock()
	// Not while other suites' domains run in them: stopping libvirtd
	// would leave those QEMUs without their manager.
	if len(daemons) > 0 {
		if others := othersDomains(); len(others) > 0 {
			logf("leaving the libvirt daemons this run started running: other domains run in them (%s)", strings.Join(others, ", "))
			daemons = nil
		}
	}
	for i := len(daemons) - 1; i >= 0; i-- {
		stopDaemon(daemons[i])
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "integration-full: "+format+"\n", args...)
}

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) (code int) {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("integration-full: SKIP: needs root (debootstrap, chroot, libvirt's system instance); run `sudo make integration-full`")
		return 0
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		logf("%v", err)
		return 1
	}
	env.repo = repo
	env.runDir = fmt.Sprintf("/tmp/vmp-full-%d", os.Getpid())
	if err := os.MkdirAll(env.runDir, 0o755); err != nil {
		logf("%v", err)
		return 1
	}
	defer func() {
		reg.cleanup()
		if code != 0 || os.Getenv("VMP_FULL_KEEP") != "" {
			logf("run directory kept: %s", env.runDir)
		} else {
			os.RemoveAll(env.runDir)
		}
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		logf("%v: removing what the run started", s)
		reg.cleanup()
		os.Exit(130)
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(d/10, time.Minute)
			time.AfterFunc(d-margin, func() {
				logf("the test deadline (%s) is near: removing what the run started", d)
				reg.cleanup()
				os.Exit(3)
			})
		}
	}
	start := time.Now()
	if err := prepare(); err != nil {
		logf("preparation failed: %v", err)
		return 1
	}
	logf("prepared in %s", time.Since(start).Round(time.Millisecond))
	return m.Run()
}

func prepare() error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if err := run(ctx, nil, filepath.Join(env.repo, "scripts/ensure-deps"), "debootstrap", "e2fsprogs", "dpkg-dev",
		"qemu-system-x86", "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients"); err != nil {
		return err
	}
	// The binaries and packages: from make (VMP_BIN_DIR, VMP_DEB_DIR) or built here.
	bin := os.Getenv("VMP_BIN_DIR")
	if bin == "" {
		bin = filepath.Join(env.runDir, "bin")
		logf("building the binaries from source")
		ld := "-s -w"
		if err := run(ctx, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-ldflags", ld, "-o", bin+"/", "./guestd/cmd/vmpersona-guestd"); err != nil {
			return err
		}
		if err := run(ctx, nil, "go", "build", "-trimpath", "-ldflags", ld, "-o", bin+"/", "./hostd/cmd/vmpersona-hostd", "./hostd/cmd/vmpersonactl"); err != nil {
			return err
		}
	}
	env.hostd = filepath.Join(bin, "vmpersona-hostd")
	debDir := os.Getenv("VMP_DEB_DIR")
	if debDir == "" {
		debDir = filepath.Join(env.runDir, "dist")
		if err := run(ctx, nil, filepath.Join(env.repo, "packaging/build-deb.sh"), "--bin", bin, "--out", debDir); err != nil {
			return err
		}
	}
	env.debs = map[string]string{}
	for _, pkg := range []string{"vmpersona-hostd", "vmpersona-guestd"} {
		m, _ := filepath.Glob(filepath.Join(debDir, pkg+"_*.deb"))
		if len(m) != 1 {
			return fmt.Errorf("want one %s_*.deb in %s, found %v", pkg, debDir, m)
		}
		env.debs[pkg] = m[0]
	}
	// The Debian 12 root file system (debootstrap, cached).
	t0 := time.Now()
	out, err := runOut(ctx, nil, filepath.Join(env.repo, "integration/debian/rootfs.sh"))
	if err != nil {
		return err
	}
	env.rootDur = time.Since(t0)
	mm := regexp.MustCompile(`(?m)^vmpersona-rootfs: tarball: (\S+)$`).FindStringSubmatch(out)
	if mm == nil {
		return fmt.Errorf("rootfs.sh named no tarball:\n%s", out)
	}
	env.rootfs = mm[1]
	logf("root file system: %s (%s; %s)", env.rootfs, env.rootDur.Round(time.Millisecond),
		map[bool]string{true: "cached", false: "debootstrap cold"}[strings.Contains(out, "cached:")])

	if err := ensureLibvirt(); err != nil {
		return err
	}
	if _, err := virsh(ctx, "version"); err != nil {
		return err
	}
	sweepStaleDomains(ctx)
	return nil
}

func run(ctx context.Context, extraEnv []string, name string, args ...string) error {
	_, err := runOut(ctx, extraEnv, name, args...)
	return err
}

func runOut(ctx context.Context, extraEnv []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = env.repo
	cmd.Env = append(os.Environ(), extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(string(out), 40))
	}
	return string(out), nil
}

func ensureDaemon(name, sock string) error {
	if socketAnswers(sock) {
		logf("%s already running: leaving it alone", name)
		return nil
	}
	pidFile := filepath.Join(env.runDir, name+".pid")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "/usr/sbin/"+name, "-d", "--pid-file", pidFile).CombinedOutput(); err != nil {
		return fmt.Errorf("starting %s: %w\n%s", name, err, out)
	}
	var pid int
	for ctx.Err() == nil && pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if pid == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if pid == 0 {
		return fmt.Errorf("%s wrote no pid file", name)
	}
	reg.add(func(r *registry) { r.daemons = append(r.daemons, daemonPID{name, pid}) })
	for !socketAnswers(sock) {
		if ctx.Err() != nil {
			return fmt.Errorf("%s (pid %d) does not answer on %s", name, pid, sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	logf("started %s (pid %d)", name, pid)
	return nil
}

func socketAnswers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func stopDaemon(d daemonPID) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.pid))
	if err != nil || !bytes.Contains(cmdline, []byte(d.name)) {
		return
	}
	logf("stopping %s (pid %d), which this run started", d.name, d.pid)
	_ = syscall.Kill(d.pid, syscall.SIGTERM)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", d.pid)); err != nil {
			return
		}
	}
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
}

// ensureLibvirt starts virtlogd and libvirtd when they do not answer.
// Other test runs on the machine may stop the daemons they started while
// this run uses them, so it is called again before every virsh command
// that finds no daemon.
func ensureLibvirt() error {
	if err := ensureDaemon("virtlogd", "/run/libvirt/virtlogd-sock"); err != nil {
		return err
	}
	return ensureDaemon("libvirtd", "/run/libvirt/libvirt-sock")
}

func virsh(ctx context.Context, args ...string) (string, error) {
	for attempt := 1; ; attempt++ {
		out, err := virshOnce(ctx, args...)
		if err == nil || attempt == 3 || !strings.Contains(out, "Failed to connect socket") {
			return out, err
		}
		logf("virsh %s: libvirt is gone (another run stopped it?); starting it again", args[0])
		if err := ensureLibvirt(); err != nil {
			return out, err
		}
	}
}

func virshOnce(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", libvirtURI}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func removeDomain(name string) {
	ctx := context.Background()
	_, _ = virsh(ctx, "destroy", name)
	_, _ = virsh(ctx, "undefine", name)
	_ = os.Remove("/var/log/libvirt/qemu/" + name + ".log")
}

// othersDomains lists the running domains that are not this run's.
func othersDomains() []string {
	out, err := virshOnce(context.Background(), "list", "--name")
	if err != nil {
		return nil
	}
	var others []string
	for _, name := range strings.Fields(out) {
		if !strings.HasPrefix(name, fmt.Sprintf("vmp-full-%d-", os.Getpid())) {
			others = append(others, name)
		}
	}
	return others
}

func sweepStaleDomains(ctx context.Context) {
	out, err := virsh(ctx, "list", "--all", "--name")
	if err != nil {
		return
	}
	re := regexp.MustCompile(`^vmp-full-(\d+)-\d+$`)
	for _, name := range strings.Fields(out) {
		if m := re.FindStringSubmatch(name); m != nil {
			if _, err := os.Stat("/proc/" + m[1]); errors.Is(err, os.ErrNotExist) {
				logf("removing domain %s left by an earlier run", name)
				removeDomain(name)
			}
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

// extractRoot unpacks the cached Debian root into a fresh directory.
func extractRoot(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(env.runDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := run(ctx, nil, "tar", "-C", dir, "--numeric-owner", "-xpf", env.rootfs); err != nil {
		t.Fatal(err)
	}
	t.Logf("extracted the Debian root into %s in %s", dir, time.Since(t0).Round(time.Millisecond))
	return dir
}

// chroot runs a command in root with a deadline and returns its output.
func chroot(t *testing.T, root string, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "chroot", append([]string{root}, args...)...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8", "HOME=/root"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("chroot %s: %w\n%s", strings.Join(args, " "), err, tail(string(out), 30))
	}
	return string(out), nil
}

// mountProc mounts /proc in a chroot until the test ends.
func mountProc(t *testing.T, root string) {
	t.Helper()
	p := filepath.Join(root, "proc")
	if err := syscall.Mount("proc", p, "proc", 0, ""); err != nil {
		t.Fatalf("mount proc: %v", err)
	}
	reg.add(func(r *registry) { r.mounts = append(r.mounts, p) })
	t.Cleanup(func() { _ = syscall.Unmount(p, syscall.MNT_DETACH) })
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		last = state
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
