//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
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

// libvirtURI is the libvirt instance the tier runs its domains in.
const libvirtURI = "qemu:///system"

// env holds what TestMain prepared for every test.
var env struct {
	repo    string // repository root
	runDir  string // /tmp/vmp-it-PID: VM directories, sockets, logs
	binDir  string
	hostd   string // the vmpersona-hostd binary built from source
	ctl     string // vmpersonactl
	guestd  string // the static guest daemon inside the image
	kernel  string // vmlinux (PVH)
	initrd  string // initramfs with the guestd above
	kernVer string
}

// reg keeps everything the run started, so that it is removed however the
// run ends: normal end, failure, interrupt or the test deadline.
var reg = &registry{procs: map[*os.Process]string{}, domains: map[string]bool{}}

type registry struct {
	mu      sync.Mutex
	procs   map[*os.Process]string // processes we started (hostd), by description
	domains map[string]bool        // libvirt domains we defined
	daemons []daemonPID            // libvirt daemons we started
	done    bool
}

type daemonPID struct {
	name string // "virtlogd", "libvirtd"
	pid  int
}

func (r *registry) addProc(p *os.Process, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.procs[p] = what
}

func (r *registry) removeProc(p *os.Process) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.procs, p)
}

func (r *registry) addDomain(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.domains[name] = true
}

func (r *registry) removeDomain(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.domains, name)
}

// cleanup ends every registered process, removes every registered domain and
// stops the daemons the run started. It runs once.
func (r *registry) cleanup() {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	r.done = true
	procs := r.procs
	domains := r.domains
	daemons := r.daemons
	r.procs, r.domains, r.daemons = map[*os.Process]string{}, map[string]bool{}, nil
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
	// Stop in reverse order of start: libvirtd before virtlogd. Not while
	// another suite's domains run in them: stopping libvirtd would leave
	// those QEMUs without their manager (and their suite failing).
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
	fmt.Fprintf(os.Stderr, "integration: "+format+"\n", args...)
}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) (code int) {
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Println("integration: SKIP: the real-VM tier needs root (libvirt's system instance runs the test VMs); run `sudo make integration`")
		return 0
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		logf("%v", err)
		return 1
	}
	env.repo = repo
	env.runDir = fmt.Sprintf("/tmp/vmp-it-%d", os.Getpid())
	env.binDir = filepath.Join(env.runDir, "bin")
	if err := os.MkdirAll(env.binDir, 0o755); err != nil {
		logf("%v", err)
		return 1
	}

	// Whatever happens from here on, what the run started is removed.
	defer func() {
		reg.cleanup()
		if code != 0 || os.Getenv("VMP_IT_KEEP") != "" {
			logf("run directory kept for inspection: %s", env.runDir)
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
	// go test's -timeout panics without running any cleanup: act before it.
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(d/10, time.Minute)
			time.AfterFunc(d-margin, func() {
				logf("the test deadline (%s) is near: removing what the run started and stopping", d)
				reg.cleanup()
				os.Exit(3)
			})
		}
	}

	start := time.Now()
	if err := lockLibvirtTests(); err != nil {
		logf("%v", err)
		return 1
	}
	if err := prepare(); err != nil {
		logf("preparation failed: %v", err)
		return 1
	}
	logf("prepared in %s: kernel %s, initrd %s", time.Since(start).Round(time.Millisecond), env.kernVer, env.initrd)
	return m.Run()
}

// prepare builds the binaries and the guest image and makes sure libvirt runs.
func prepare() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	logf("building vmpersona-hostd, vmpersonactl and the static vmpersona-guestd from source")
	env.hostd = filepath.Join(env.binDir, "vmpersona-hostd")
	env.ctl = filepath.Join(env.binDir, "vmpersonactl")
	env.guestd = filepath.Join(env.binDir, "vmpersona-guestd")
	// Our host daemons carry a version of their own, so the guests' console
	// logs tell our sessions from any other host's.
	ldflags := "-X github.com/vmpersona/vmpersona/protocol.SoftwareVersion=" + hostVersion()
	if err := run(ctx, nil, "go", "build", "-ldflags", ldflags, "-o", env.binDir+"/", "./hostd/cmd/vmpersona-hostd", "./hostd/cmd/vmpersonactl"); err != nil {
		return err
	}
	if err := run(ctx, []string{"CGO_ENABLED=0"}, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", env.guestd, "./guestd/cmd/vmpersona-guestd"); err != nil {
		return err
	}

	imageEnv := os.Getenv("VMP_IMAGE_ENV")
	if imageEnv == "" {
		logf("building the guest image (integration/image/build.sh)")
		out, err := runTee(ctx, filepath.Join(env.repo, "integration/image/build.sh"), "--guestd", env.guestd)
		if err != nil {
			return err
		}
		m := regexp.MustCompile(`(?m)^vmpersona-image: image: (\S+)$`).FindStringSubmatch(out)
		if m == nil {
			return errors.New("build.sh did not name its image.env")
		}
		imageEnv = m[1]
	}
	vals, err := readEnvFile(imageEnv)
	if err != nil {
		return err
	}
	env.kernel, env.initrd, env.kernVer = vals["VMP_KERNEL"], vals["VMP_INITRD"], vals["VMP_KERNEL_VERSION"]
	for _, p := range []string{env.kernel, env.initrd} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("guest image from %s: %w", imageEnv, err)
		}
	}

	ensureKVMDeviceGroup()
	if err := ensureDaemon("virtlogd", "/run/libvirt/virtlogd-sock"); err != nil {
		return err
	}
	if err := ensureDaemon("libvirtd", "/run/libvirt/libvirt-sock"); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := virsh(ctx, "version"); err != nil {
		return err
	}
	logf("first %s connection took %s", libvirtURI, time.Since(t0).Round(time.Millisecond))
	sweepStaleDomains(ctx)
	if f := foreignHostds(); len(f) > 0 {
		logf("WARNING: other vmpersona-hostd processes discover libvirt domains on this machine; they will connect to this run's VMs and take their agent channels (a QEMU chardev serves one client):\n  %s", strings.Join(f, "\n  "))
	}
	return nil
}

// foreignHostds lists running vmpersona-hostd processes this run did not
// start that have libvirt discovery on (no --libvirt-uri "" given): they
// see the test domains of qemu:///system too.
func foreignHostds() []string {
	reg.mu.Lock()
	ours := map[int]bool{}
	for p := range reg.procs {
		ours[p.Pid] = true
	}
	reg.mu.Unlock()
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || ours[pid] {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != "vmpersona-hostd" {
			continue
		}
		discovery := true
		for i, a := range args {
			if a == "--libvirt-uri=" || a == "-libvirt-uri=" || (a == "--libvirt-uri" || a == "-libvirt-uri") && i+1 < len(args) && args[i+1] == "" {
				discovery = false
			}
		}
		if discovery {
			out = append(out, fmt.Sprintf("pid %d: %s", pid, strings.Join(args, " ")))
		}
	}
	return out
}

// libvirtTestsLock serialises the suites that use the machine's system
// libvirtd (this tier, integration/debian, make demo): each may start and
// stop libvirtd, and a hostd with libvirt discovery connects to every
// domain's agent channel, the other suites' VMs included.
const libvirtTestsLock = "/run/lock/vmpersona-libvirt-tests.lock"

// lockLibvirtTests takes libvirtTestsLock for the life of the process,
// waiting while another suite holds it.
func lockLibvirtTests() error {
	if err := os.MkdirAll(filepath.Dir(libvirtTestsLock), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(libvirtTestsLock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		return nil // held until the process exits
	}
	logf("another suite uses the system libvirtd (it holds %s): waiting for it", libvirtTestsLock)
	t0 := time.Now()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", libvirtTestsLock, err)
	}
	logf("got %s after %s", libvirtTestsLock, time.Since(t0).Round(time.Second))
	return nil
}

// hostVersion is the host version of this run's sessions: its hostd
// binaries and its direct sessions (with a "-direct" suffix).
func hostVersion() string { return fmt.Sprintf("it-%d", os.Getpid()) }

// run runs a command in the repository, its output shown only on failure.
func run(ctx context.Context, extraEnv []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = env.repo
	cmd.Env = append(os.Environ(), extraEnv...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// runTee runs a command, copying its output line by line to stderr as it
// comes (the image build's progress lines), and returns the output.
func runTee(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = env.repo
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return "", err
	}
	pw.Close()
	var buf bytes.Buffer
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		fmt.Fprintln(os.Stderr, sc.Text())
		buf.WriteString(sc.Text() + "\n")
	}
	pr.Close()
	if err := cmd.Wait(); err != nil {
		return buf.String(), fmt.Errorf("%s: %w", name, err)
	}
	return buf.String(), nil
}

func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vals := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
			vals[k] = v
		}
	}
	return vals, nil
}

// ensureKVMDeviceGroup gives /dev/kvm Debian's udev permissions (root:kvm
// 0660) when it has the kernel's bare root:root 0600 (no udev here).
// Otherwise libvirtd probes QEMU as root with KVM, then finds /dev/kvm
// unusable for the libvirt-qemu user, declares its capability cache invalid
// ("KVM was enabled when probing …, but it is not available now") and
// probes QEMU again on every define, start and capabilities call: 5 s idle,
// a minute on a loaded machine. The test domains use TCG either way.
func ensureKVMDeviceGroup() {
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
		logf("chown /dev/kvm: %v", err)
		return
	}
	if err := os.Chmod("/dev/kvm", 0o660); err != nil {
		logf("chmod /dev/kvm: %v", err)
		return
	}
	logf("/dev/kvm was root:root 0600 (no udev): set to root:kvm 0660 as Debian's udev rule does, so that libvirtd keeps its QEMU capability cache")
}

// ensureDaemon starts a libvirt daemon by hand (systemd is not PID 1 on these
// machines) unless one already answers on its socket; only a daemon started
// here is registered to be stopped.
func ensureDaemon(name, sock string) error {
	if socketAnswers(sock) {
		logf("%s already running (answers on %s): leaving it alone", name, sock)
		return nil
	}
	pidFile := filepath.Join(env.runDir, name+".pid")
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
	reg.mu.Lock()
	reg.daemons = append(reg.daemons, daemonPID{name: name, pid: pid})
	reg.mu.Unlock()
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

// stopDaemon stops a daemon the run started, by its PID, after checking the
// PID is still that daemon.
func stopDaemon(d daemonPID) {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.pid))
	if err != nil || !bytes.Contains(cmdline, []byte(d.name)) {
		logf("%s (pid %d) already gone", d.name, d.pid)
		return
	}
	logf("stopping %s (pid %d), which this run started", d.name, d.pid)
	_ = syscall.Kill(d.pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", d.pid)); err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	logf("%s (pid %d) did not stop in 15s: SIGKILL", d.name, d.pid)
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
}

// virsh runs one virsh command against the system instance, with a deadline.
func virsh(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", libvirtURI}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// removeDomain destroys and undefines a domain, ignoring "not running" and
// "not found", and removes libvirt's log of it.
func removeDomain(name string) {
	ctx := context.Background()
	_, _ = virsh(ctx, "destroy", name)
	_, _ = virsh(ctx, "undefine", name)
	_ = os.Remove("/var/log/libvirt/qemu/" + name + ".log")
	killDomainQEMU(name)
}

// killDomainQEMU ends the QEMU process of one of this run's domains when
// libvirt could not (libvirtd was stopped under the run: its domains go on
// running without it). The process is found by its "-name guest=NAME,".
func killDomainQEMU(name string) {
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
		logf("libvirt did not stop domain %s: killing its QEMU (pid %d)", name, pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// othersDomains lists the running domains that are not this run's.
func othersDomains() []string {
	out, err := virsh(context.Background(), "list", "--name")
	if err != nil {
		return nil
	}
	var others []string
	for _, name := range strings.Fields(out) {
		if !strings.HasPrefix(name, fmt.Sprintf("vmp-it-%d-", os.Getpid())) {
			others = append(others, name)
		}
	}
	return others
}

// sweepStaleDomains removes domains left by earlier runs that were killed
// outright (their test process is gone).
func sweepStaleDomains(ctx context.Context) {
	out, err := virsh(ctx, "list", "--all", "--name")
	if err != nil {
		logf("listing domains: %v", err)
		return
	}
	re := regexp.MustCompile(`^vmp-it-(\d+)-\d+$`)
	for _, name := range strings.Fields(out) {
		m := re.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if _, err := os.Stat("/proc/" + m[1]); err == nil {
			continue // that run is still going
		}
		logf("removing domain %s left by an earlier run", name)
		removeDomain(name)
	}
}
