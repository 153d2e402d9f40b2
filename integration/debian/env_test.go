//go:build integration_full

package debian

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/integration/vmenv"
	"github.com/vmpersona/vmpersona/internal/testbin"
)

const libvirtURI = vmenv.LibvirtURI

var env struct {
	repo    string
	runDir  string
	hostd   string // vmpersona-hostd built from source
	debs    map[string]string
	rootfs  string // the cached debootstrap tarball
	rootDur time.Duration
}

// reg holds what the run started, removed however the run ends. Other
// test runs on the machine may stop the libvirt daemons they started while
// this run uses them: virsh starts them again when it finds none.
var reg = &vmenv.Env{
	LogPrefix:      "integration-full",
	DomainPrefix:   "vmp-full",
	VirshTimeout:   3 * time.Minute,
	RestartLibvirt: true,
}

func logf(format string, args ...any) { reg.Logf(format, args...) }

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
	reg.RunDir = env.runDir
	if err := os.MkdirAll(env.runDir, 0o755); err != nil {
		logf("%v", err)
		return 1
	}
	defer func() {
		reg.Cleanup()
		if code != 0 || os.Getenv("VMP_FULL_KEEP") != "" {
			logf("run directory kept: %s", env.runDir)
		} else {
			os.RemoveAll(env.runDir)
		}
	}()
	reg.CleanupOnExit()
	start := time.Now()
	// One libvirt test tier at a time: each tier's hostd discovers every
	// domain of the system instance, and a QEMU chardev serves one client.
	if err := reg.LockLibvirtTests(); err != nil {
		logf("%v", err)
		return 1
	}
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
		logf("building the binaries from source")
		var err error
		if bin, err = testbin.Dir(); err != nil {
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

	if err := reg.EnsureLibvirt(); err != nil {
		return err
	}
	if _, err := virsh(ctx, "version"); err != nil {
		return err
	}
	reg.SweepStaleDomains(ctx)
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

func virsh(ctx context.Context, args ...string) (string, error) { return reg.Virsh(ctx, args...) }

func tail(s string, n int) string { return vmenv.Tail(s, n) }

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
	reg.AddMount(p)
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
	return vmenv.WaitFor(t, timeout, 200*time.Millisecond, what, cond)
}
