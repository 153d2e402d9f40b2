//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/integration/vmenv"
)

// libvirtURI is the libvirt instance the tier runs its domains in.
const libvirtURI = vmenv.LibvirtURI

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
var reg = &vmenv.Env{
	LogPrefix:     "integration",
	DomainPrefix:  "vmp-it",
	VirshTimeout:  5 * time.Minute,
	KillStrayQEMU: true,
}

func logf(format string, args ...any) { reg.Logf(format, args...) }

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
	reg.RunDir = env.runDir
	env.binDir = filepath.Join(env.runDir, "bin")
	if err := os.MkdirAll(env.binDir, 0o755); err != nil {
		logf("%v", err)
		return 1
	}

	// Whatever happens from here on, what the run started is removed.
	defer func() {
		reg.Cleanup()
		if code != 0 || os.Getenv("VMP_IT_KEEP") != "" {
			logf("run directory kept for inspection: %s", env.runDir)
		} else {
			os.RemoveAll(env.runDir)
		}
	}()
	reg.CleanupOnExit()

	start := time.Now()
	if err := reg.LockLibvirtTests(); err != nil {
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

	reg.EnsureKVMDeviceGroup()
	if err := reg.EnsureLibvirt(); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := virsh(ctx, "version"); err != nil {
		return err
	}
	logf("first %s connection took %s", libvirtURI, time.Since(t0).Round(time.Millisecond))
	reg.SweepStaleDomains(ctx)
	if f := foreignHostds(); len(f) > 0 {
		logf("WARNING: other vmpersona-hostd processes discover libvirt domains on this machine; they will connect to this run's VMs and take their agent channels (a QEMU chardev serves one client):\n  %s", strings.Join(f, "\n  "))
	}
	return nil
}

// foreignHostds lists running vmpersona-hostd processes this run did not
// start that have libvirt discovery on (no --libvirt-uri "" given): they
// see the test domains of qemu:///system too.
func foreignHostds() []string {
	ours := reg.ProcPIDs()
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

// virsh runs one virsh command against the system instance, with a deadline.
func virsh(ctx context.Context, args ...string) (string, error) { return reg.Virsh(ctx, args...) }
