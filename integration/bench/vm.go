package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// errNoVM says the real-VM figure cannot run on this machine.
var errNoVM = errors.New("real VM not available")

// vmExec: exec round trip through a real TCG VM. The guest is the
// integration tier's image (integration/image/build.sh: Debian kernel by
// PVH, busybox initramfs running this run's guestd on its virtio-serial
// port), booted by QEMU directly with the same chardev libvirt would
// configure; hostd drives it over that unix socket.
func (b *bench) vmExec(ctx context.Context) error {
	if b.cfg.skipVM {
		b.add(row{"· exec over virtio-serial (TCG VM)", "skipped (-skip-vm)", "", "", "optional", "—"})
		return nil
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return fmt.Errorf("%w: no qemu-system-x86_64 (make test installs it)", errNoVM)
	}
	envFile := filepath.Join(b.dir, "image.env")
	cmd := exec.CommandContext(ctx, filepath.Join(b.cfg.root, "integration", "image", "build.sh"), "--guestd", b.bins.guestd, "--env-out", envFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: integration/image/build.sh: %v: %s", errNoVM, err, truncate(string(out), 500))
	}
	img, err := readEnv(envFile)
	if err != nil {
		return err
	}
	sock := filepath.Join(b.dir, "vm-agent.sock")
	console := filepath.Join(b.dir, "vm-console.log")
	qp, err := b.ps.start("qemu", qemu, "-accel", "tcg", "-m", "256", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", img["VMP_KERNEL"], "-initrd", img["VMP_INITRD"], "-append", "console=ttyS0 panic=-1 quiet",
		"-serial", "file:"+console, "-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=org.vmpersona.agent.0")
	if err != nil {
		return err
	}
	defer qp.stop()
	boot := time.Now()
	if err := waitSocket(ctx, sock, qp, 30*time.Second); err != nil {
		return err
	}
	hsock := filepath.Join(b.dir, "hostd-vm.sock")
	hp, err := b.startHostd(ctx, "hostd-vm-data", hsock, []string{"vm=unix:" + sock})
	if err != nil {
		return err
	}
	defer hp.stop()
	if err := waitConnected(ctx, unixClient(hsock, 2), 1, 90*time.Second); err != nil {
		tail, _ := os.ReadFile(console)
		return fmt.Errorf("guest agent in the VM: %w; console: %s", err, truncate(string(tail), 800))
	}
	bootToAgent := time.Since(boot)
	api, err := apiclient.New(apiclient.Config{URL: "unix:" + hsock})
	if err != nil {
		return err
	}
	defer api.Close()
	var guestSide samples
	n := 200
	if b.cfg.quick {
		n = 40
	}
	res, err := latencies(ctx, n, 20, side{"vm", func() error {
		r, err := api.Exec(ctx, "vm", apitypes.ExecRequest{Command: "/bin/true", Args: []string{}})
		if err != nil {
			return err
		}
		if r.ExitCode != 0 {
			return fmt.Errorf("/bin/true in the VM exited %d", r.ExitCode)
		}
		guestSide = append(guestSide, time.Duration(r.DurationMillis*1e6))
		return nil
	}})
	if err != nil {
		return err
	}
	v := res["vm"]
	b.add(row{fmt.Sprintf("· exec /bin/true in a TCG VM over virtio-serial p50 (n=%d)", len(v)), ms(v.pct(50)),
		"spawn inside the guest " + ms(guestSide.pct(50)), fmt.Sprintf("%.2f×", float64(v.pct(50))/float64(guestSide.pct(50))), "optional", "—"})
	b.add(row{"· exec in a TCG VM p99", ms(v.pct(99)), "spawn inside the guest " + ms(guestSide.pct(99)), "", "", "—"})
	b.note("real VM: QEMU TCG (no KVM here), agent connected %s after QEMU started; the spawn inside the guest is slow because TCG emulates the CPU",
		bootToAgent.Round(10*time.Millisecond))
	return nil
}

func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = strings.Trim(v, `"'`)
		}
	}
	if m["VMP_KERNEL"] == "" || m["VMP_INITRD"] == "" {
		return nil, fmt.Errorf("%s names no VMP_KERNEL/VMP_INITRD", path)
	}
	return m, sc.Err()
}
