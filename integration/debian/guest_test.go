//go:build integration_full

package debian

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/integration/vmenv"
)

// hostd is a real vmpersona-hostd process.
type hostd struct {
	sock, log string
	cmd       *exec.Cmd
	exited    chan struct{}
	client    *http.Client
	drops     int // agent sessions found dropped by exec
}

func startHostd(t *testing.T, dir string) *hostd {
	t.Helper()
	h := &hostd{sock: filepath.Join(dir, "api.sock"), log: filepath.Join(dir, "hostd.log")}
	lf, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	h.cmd = exec.Command(env.hostd, "--data-dir", filepath.Join(dir, "data"), "--unix-socket", h.sock,
		"--libvirt-uri", libvirtURI, "--heartbeat", "1s", "--log-format", "text", "--log-level", "debug")
	h.cmd.Stdout, h.cmd.Stderr = lf, lf
	if h.exited, err = reg.StartProc(h.cmd, "vmpersona-hostd"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(h.log)
			t.Logf("hostd log (last 40 lines):\n%s", tail(string(b), 40))
		}
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(15 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.exited
		}
	})
	h.client = vmenv.UnixClient(h.sock, 3*time.Minute)
	waitFor(t, 60*time.Second, "hostd /healthz", func() (bool, string) {
		select {
		case <-h.exited:
			b, _ := os.ReadFile(h.log)
			t.Fatalf("vmpersona-hostd exited:\n%s", tail(string(b), 20))
		default:
		}
		st, body, err := h.do(http.MethodGet, "/healthz", nil, nil)
		return err == nil && st == http.StatusOK, fmt.Sprintf("%d %s %v", st, body, err)
	})
	return h
}

func (h *hostd) do(method, path string, in, out any) (int, []byte, error) {
	return vmenv.DoJSON(h.client, 3*time.Minute, method, path, in, out)
}

type instance struct {
	ID    string `json:"id"`
	Agent struct {
		State  string `json:"state"`
		BootID string `json:"boot_id"`
	} `json:"agent"`
	ActivePersona *string `json:"active_persona"`
}

type execResult struct {
	ExitCode int     `json:"exit_code"`
	Stdout   string  `json:"stdout"`
	Stderr   string  `json:"stderr"`
	Route    string  `json:"route"`
	Persona  *string `json:"persona"`
}

// exec runs a command in the guest through hostd and fails the test unless
// it exits 0. When the agent is not connected (503) it waits up to two
// minutes for the session to come back and tries again, logging the drop:
// a dropped session is reported, the proof is about what survives it.
func (h *hostd) exec(t *testing.T, vm, command string, args ...string) execResult {
	t.Helper()
	for attempt := 1; ; attempt++ {
		var r execResult
		st, body, err := h.do(http.MethodPost, "/instances/"+vm+"/exec",
			map[string]any{"command": command, "args": args, "timeout_seconds": 60}, &r)
		if err == nil && st == http.StatusServiceUnavailable && attempt < 3 {
			t.Logf("NOTE: agent session not connected for exec %s (attempt %d): %s; waiting for it to reconnect", command, attempt, body)
			h.drops++
			waitFor(t, 2*time.Minute, "the agent to reconnect", func() (bool, string) {
				var inst instance
				st, body, err := h.do(http.MethodGet, "/instances/"+vm, nil, &inst)
				return err == nil && st == http.StatusOK && inst.Agent.State == "connected", fmt.Sprintf("%d %v %s", st, err, body)
			})
			continue
		}
		if err != nil || st != http.StatusOK || r.ExitCode != 0 {
			t.Fatalf("exec %s %v: %d %v %s", command, args, st, err, body)
		}
		return r
	}
}

// buildGuestDisk turns the cached Debian root into a bootable ext4 disk with
// vmpersona-guestd.deb installed by dpkg, and returns the disk, kernel and
// initrd paths.
func buildGuestDisk(t *testing.T, dir string) (disk, kernel, initrd string) {
	t.Helper()
	root := extractRoot(t, "guest-root")
	// The guest's own configuration: its root disk, a name, a fresh
	// machine id generated at first boot.
	files := map[string]string{
		"etc/fstab":      "/dev/vda / ext4 rw,errors=remount-ro 0 1\n",
		"etc/hostname":   "vmp-full-guest\n",
		"etc/machine-id": "",
	}
	for p, s := range files {
		if err := os.WriteFile(filepath.Join(root, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deb := filepath.Base(env.debs["vmpersona-guestd"])
	copyFile(t, env.debs["vmpersona-guestd"], filepath.Join(root, "tmp", deb))
	mountProc(t, root)
	out, err := chroot(t, root, 5*time.Minute, "dpkg", "-i", "/tmp/"+deb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dpkg -i %s in the guest root:\n%s", deb, strings.TrimSpace(out))
	// The host package too, with apt (libvirt0 and friends from the
	// mirror): the guest runs systemd, so its units run there for real.
	hdeb := filepath.Base(env.debs["vmpersona-hostd"])
	copyFile(t, env.debs["vmpersona-hostd"], filepath.Join(root, "tmp", hdeb))
	copyFile(t, "/etc/resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	if _, err := chroot(t, root, 5*time.Minute, "apt-get", "update"); err != nil {
		t.Fatal(err)
	}
	if _, err := chroot(t, root, 10*time.Minute, "apt-get", "install", "-y", "--no-install-recommends", "/tmp/"+hdeb); err != nil {
		t.Fatal(err)
	}
	_, _ = chroot(t, root, 5*time.Minute, "apt-get", "clean")
	os.Remove(filepath.Join(root, "tmp", hdeb))
	_ = syscall.Unmount(filepath.Join(root, "proc"), syscall.MNT_DETACH)
	os.Remove(filepath.Join(root, "tmp", deb))
	for _, p := range []string{"usr/sbin/vmpersona-guestd", "lib/udev/rules.d/60-vmpersona-guestd.rules", "lib/systemd/system/vmpersona-guestd.service"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Fatalf("after dpkg -i: %v", err)
		}
	}

	kernels, _ := filepath.Glob(filepath.Join(root, "boot/vmlinuz-*"))
	initrds, _ := filepath.Glob(filepath.Join(root, "boot/initrd.img-*"))
	if len(kernels) != 1 || len(initrds) != 1 {
		t.Fatalf("want one kernel and one initrd in the image, found %v %v", kernels, initrds)
	}
	kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	copyFile(t, kernels[0], kernel)
	copyFile(t, initrds[0], initrd)

	disk = filepath.Join(dir, "root.img")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := run(ctx, nil, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "vmp-root", "-d", root, disk, "2G"); err != nil {
		t.Fatal(err)
	}
	t.Logf("mke2fs -d: %s in %s (kernel %s)", disk, time.Since(t0).Round(time.Millisecond), filepath.Base(kernels[0]))
	os.RemoveAll(root)
	return disk, kernel, initrd
}

// TestGuestBootsAgentFromPackage is the proof on a real Debian guest.
func TestGuestBootsAgentFromPackage(t *testing.T) {
	dir := filepath.Join(env.runDir, "guest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk, kernel, initrd := buildGuestDisk(t, dir)

	// The host daemon with libvirt discovery, and a default persona
	// defined before the VM starts.
	h := startHostd(t, dir)
	marker := fmt.Sprintf("from-the-host-%d", os.Getpid())
	persona := map[string]any{
		"name":                  "debian-proof",
		"environment_variables": map[string]string{"VMP_PROOF": marker, "VMP_SECRET": "not-for-services"},
		"secret_variables":      []string{"VMP_SECRET"},
		"default_persona":       true,
	}
	if st, body, err := h.do(http.MethodPost, "/personas", persona, nil); err != nil || st != http.StatusCreated {
		t.Fatalf("creating the default persona: %d %v %s", st, err, body)
	}

	name := reg.DomainName(1)
	console := filepath.Join(dir, "console.log")
	xml, err := vmenv.Domain{
		Name: name, MemoryMiB: 1024, VCPUs: 2, Kernel: kernel, Initrd: initrd,
		Cmdline:  "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 systemd.journald.forward_to_console=1",
		Features: "<acpi/>", DiskCache: "unsafe", Disk: disk, Sock: filepath.Join(dir, "agent.sock"), Console: console,
	}.XML()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reg.DefineDomain(t, ctx, name, filepath.Join(dir, "domain.xml"), xml, func() {
		b, _ := os.ReadFile(console)
		t.Logf("console of %s (last 60 lines):\n%s", name, tail(string(b), 60))
	})
	started := time.Now()
	if _, err := virsh(ctx, "start", name); err != nil {
		t.Fatal(err)
	}

	// udev + systemd start the agent; hostd (libvirt discovery) connects
	// and activates the default persona.
	var inst instance
	getInstance := func() (bool, string) {
		inst = instance{}
		st, body, err := h.do(http.MethodGet, "/instances/"+name, nil, &inst)
		ok := err == nil && st == http.StatusOK && inst.Agent.State == "connected" &&
			inst.ActivePersona != nil && *inst.ActivePersona == "debian-proof"
		return ok, fmt.Sprintf("%d %v %s", st, err, body)
	}
	d := waitFor(t, 8*time.Minute, "the agent to connect with the default persona active", getInstance)
	bootID := inst.Agent.BootID
	t.Logf("boot to agent connected with the default persona active: %s (from virsh start)", time.Since(started).Round(time.Millisecond))
	_ = d

	// systemd started the agent because udev asked for it: the unit is
	// static (no [Install], nothing enabled it), active, and wanted by the
	// port's device unit.
	r := h.exec(t, name, "systemctl", "is-active", "vmpersona-guestd.service")
	if strings.TrimSpace(r.Stdout) != "active" {
		t.Errorf("vmpersona-guestd.service is %q", r.Stdout)
	}
	// SYSTEMD_WANTS lands on the device's main (sysfs) unit, not on the
	// /dev/virtio-ports alias.
	sysPath := strings.TrimSpace(h.exec(t, name, "udevadm", "info", "-q", "path", "/dev/virtio-ports/org.vmpersona.agent.0").Stdout)
	r = h.exec(t, name, "systemctl", "show", "-p", "Wants", "--value", "/sys"+sysPath)
	if !strings.Contains(r.Stdout, "vmpersona-guestd.service") {
		t.Errorf("the port's device unit (/sys%s) does not want the agent: %q", sysPath, r.Stdout)
	}
	var enabled execResult
	st, body, _ := h.do(http.MethodPost, "/instances/"+name+"/exec",
		map[string]any{"command": "systemctl", "args": []string{"is-enabled", "vmpersona-guestd.service"}}, &enabled)
	if st != http.StatusOK || strings.TrimSpace(enabled.Stdout) != "static" {
		t.Errorf("systemctl is-enabled vmpersona-guestd: %d %s", st, body)
	}
	r = h.exec(t, name, "readlink", "-f", "/proc/1/exe")
	if !strings.Contains(r.Stdout, "systemd") {
		t.Errorf("PID 1 is %q, not systemd", r.Stdout)
	}
	// Through the unit's run directory (/run/vmpersona-guest) a command is
	// listed by ps under its own name, also when it runs as another user.
	for _, user := range []string{"", "nobody"} {
		req := map[string]any{"command": "cat", "args": []string{"/proc/self/comm"}}
		if user != "" {
			req["user"] = user
		}
		var comm execResult
		st, body, _ := h.do(http.MethodPost, "/instances/"+name+"/exec", req, &comm)
		if st != http.StatusOK || comm.Stdout != "cat\n" {
			t.Errorf("cat as %q is listed as %q: %d %s", user, comm.Stdout, st, body)
		}
	}

	// The host package's units under a real systemd: the socket unit made
	// /run/vmpersona/hostd.sock for group vmpersona, vmpersonactl reaches the
	// daemon through it (root is admin), and the daemon runs hardened
	// as Type=notify with its watchdog, without restarts.
	r = h.exec(t, name, "vmpersonactl", "--timeout", "60s", "-o", "json", "instances")
	t.Logf("vmpersonactl instances in the guest (socket-activated hostd): %s", strings.TrimSpace(r.Stdout))
	r = h.exec(t, name, "stat", "-c", "%a %U %G", "/run/vmpersona/hostd.sock")
	if got := strings.TrimSpace(r.Stdout); got != "660 root vmpersona" {
		t.Errorf("/run/vmpersona/hostd.sock is %q, want 660 root vmpersona", got)
	}
	r = h.exec(t, name, "systemctl", "show", "-p", "ActiveState,Type,WatchdogUSec,NRestarts,StatusErrno", "vmpersona-hostd.service")
	for _, want := range []string{"ActiveState=active", "Type=notify", "WatchdogUSec=30s", "NRestarts=0"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("vmpersona-hostd.service in the guest lacks %s:\n%s", want, r.Stdout)
		}
	}
	r = h.exec(t, name, "systemctl", "show", "-p", "TriggeredBy", "--value", "vmpersona-hostd.service")
	if !strings.Contains(r.Stdout, "vmpersona-hostd.socket") {
		t.Errorf("vmpersona-hostd.service is not triggered by its socket: %q", r.Stdout)
	}

	// The persona's environment reaches a login shell through
	// /etc/profile.d/vmpersona.sh (env -i: nothing inherited from the agent).
	loginShell := func(when string) {
		t.Helper()
		r := h.exec(t, name, "env", "-i", "PATH=/usr/bin:/bin", "sh", "-lc", "echo \"$VMP_PROOF\"")
		if got := strings.TrimSpace(r.Stdout); got != marker {
			t.Errorf("%s: login shell sees VMP_PROOF=%q, want %q (stderr %q)", when, got, marker, r.Stderr)
		}
	}
	loginShell("first boot")

	// Services see the persona: a service started now (after the default
	// persona's activation) has its variables, not its secret ones. The
	// probe is also enabled for boot, ordered before the agent, so that
	// after the reboot only vmpersona-guestd-environment.service can have
	// given it the variables.
	h.exec(t, name, "sh", "-c", probeSetup)
	wantService := func(when, want string) {
		t.Helper()
		r := h.exec(t, name, "sh", "-c", "systemctl start vmp-env-probe.service && cat /run/vmp-env-probe")
		if got := strings.TrimSpace(r.Stdout); got != want {
			t.Errorf("%s: a service started then sees %q, want %q", when, got, want)
		}
	}
	wantService("after the activation", marker+" <unset>")

	// Reboot from inside; the persona is still active afterwards.
	rebootAt := time.Now()
	_, _, _ = h.do(http.MethodPost, "/instances/"+name+"/exec",
		map[string]any{"command": "systemctl", "args": []string{"reboot"}, "timeout_seconds": 10}, nil)
	waitFor(t, 8*time.Minute, "the agent to come back after the reboot", func() (bool, string) {
		ok, state := getInstance()
		return ok && inst.Agent.BootID != "" && inst.Agent.BootID != bootID, state
	})
	t.Logf("reboot to agent connected again: %s (boot id %s -> %s)", time.Since(rebootAt).Round(time.Millisecond), bootID, inst.Agent.BootID)
	var active struct {
		Persona *struct {
			Name string `json:"name"`
		} `json:"persona"`
		Stale bool `json:"stale"`
	}
	if st, body, err := h.do(http.MethodGet, "/instances/"+name+"/active_persona", nil, &active); err != nil || st != http.StatusOK ||
		active.Persona == nil || active.Persona.Name != "debian-proof" || active.Stale {
		t.Errorf("after the reboot, active persona: %d %v %s", st, err, body)
	}
	loginShell("after the reboot")
	// The probe ran at boot, before the agent started, and saw what the
	// boot unit, which ran before it, had set.
	r = h.exec(t, name, "cat", "/run/vmp-env-probe")
	if got := strings.TrimSpace(r.Stdout); got != marker+" <unset>" {
		t.Errorf("after the reboot, a service started at boot before the agent saw %q, want %q", got, marker+" <unset>")
	}
	r = h.exec(t, name, "systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value",
		"vmpersona-guestd-environment.service", "vmp-env-probe.service", "vmpersona-guestd.service")
	starts := strings.Fields(r.Stdout)
	t.Logf("after the reboot, start times (monotonic µs) of the boot unit, the probe and the agent: %q", starts)
	if len(starts) != 3 {
		t.Fatalf("systemctl show: %q", r.Stdout)
	}
	var us [3]int64
	for i, f := range starts {
		us[i], _ = strconv.ParseInt(f, 10, 64)
	}
	if us[0] == 0 || us[0] > us[1] || us[1] > us[2] {
		t.Errorf("start order after the reboot: boot unit %d, probe %d, agent %d µs (want 0 < boot unit <= probe <= agent)", us[0], us[1], us[2])
	}

	// Deactivated: a service started afterwards no longer sees the
	// persona's variables.
	if st, body, err := h.do(http.MethodPost, "/instances/"+name+"/deactivate", nil, nil); err != nil || st != http.StatusOK {
		t.Fatalf("deactivating: %d %v %s", st, err, body)
	}
	wantService("after the deactivation", "<unset> <unset>")

	kernelEnforcement(t, h, name)
	if h.drops > 0 {
		t.Logf("NOTE: the agent session dropped %d time(s) during the test and came back (see the hostd log)", h.drops)
	}
}

// probeSetup installs vmp-env-probe.service in the guest: a oneshot that
// writes what a service sees of VMP_PROOF and VMP_SECRET to
// /run/vmp-env-probe, enabled for boot and ordered before the agent.
const probeSetup = `cat >/usr/local/bin/vmp-env-probe <<'END'
#!/bin/sh
echo "${VMP_PROOF-<unset>} ${VMP_SECRET-<unset>}" >/run/vmp-env-probe
END
chmod 755 /usr/local/bin/vmp-env-probe
cat >/etc/systemd/system/vmp-env-probe.service <<'END'
[Unit]
Description=What a service sees of the persona's environment
Before=vmpersona-guestd.service

[Service]
Type=oneshot
ExecStart=/usr/local/bin/vmp-env-probe

[Install]
WantedBy=multi-user.target
END
systemctl daemon-reload
systemctl enable vmp-env-probe.service`

// kernelEnforcement proves, on the Debian guest kernel (6.1, Landlock ABI
// 2), that a restricted rm fails for everything an exec starts: a shell,
// find -exec, xargs, env, a script calling it, and a copy of it in /tmp
// (deny_exec_writable). The file to delete survives every attempt.
func kernelEnforcement(t *testing.T, h *hostd, vm string) {
	t.Helper()
	h.exec(t, vm, "sh", "-c", "printf '#!/bin/sh\\nrm \"$1\"\\n' > /usr/local/bin/cleaner && chmod 755 /usr/local/bin/cleaner && cp /usr/bin/rm /tmp/myrm")
	persona := map[string]any{
		"name": "debian-kernel", "restricted_commands": []string{"rm"},
		"enforcement": "kernel", "deny_exec_writable": true,
	}
	if st, body, err := h.do(http.MethodPost, "/personas", persona, nil); err != nil || st != http.StatusCreated {
		t.Fatalf("creating the kernel-enforced persona: %d %v %s", st, err, body)
	}
	if st, body, err := h.do(http.MethodPost, "/instances/"+vm+"/personas/debian-kernel/activate", nil, nil); err != nil || st != http.StatusOK {
		t.Fatalf("activating the kernel-enforced persona on the Debian guest: %d %v %s", st, err, body)
	}
	const f = "/var/lib/vmpersona-victim"
	for _, c := range []struct {
		name string
		req  map[string]any
	}{
		{"sh -c", map[string]any{"command": "sh", "args": []string{"-c", "rm " + f}}},
		{"find -exec", map[string]any{"command": "find", "args": []string{f, "-exec", "rm", "{}", ";"}}},
		{"xargs", map[string]any{"command": "sh", "args": []string{"-c", "echo " + f + " | xargs rm"}}},
		{"env", map[string]any{"command": "env", "args": []string{"rm", f}}},
		{"a script calling rm", map[string]any{"command": "cleaner", "args": []string{f}}},
		{"a copy of rm in /tmp", map[string]any{"command": "/tmp/myrm", "args": []string{f}}},
	} {
		h.exec(t, vm, "sh", "-c", "echo keep > "+f)
		c.req["timeout_seconds"] = 60
		st, body, err := h.do(http.MethodPost, "/instances/"+vm+"/exec", c.req, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r := h.exec(t, vm, "cat", f); strings.TrimSpace(r.Stdout) != "keep" {
			t.Errorf("%s under kernel enforcement removed the file (answer %d %s)", c.name, st, body)
		}
	}
	if st, body, err := h.do(http.MethodPost, "/instances/"+vm+"/deactivate", nil, nil); err != nil || st != http.StatusOK {
		t.Errorf("deactivating: %d %v %s", st, err, body)
	}
}
