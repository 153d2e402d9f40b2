//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"text/template"
	"time"
)

// agentPort is the virtio-serial port name of the guest agent (CONTRACT.md).
const agentPort = "org.vmpersona.agent.0"

var vmSeq atomic.Int32

// VM is one TCG libvirt domain booting the test image.
type VM struct {
	Name    string
	Dir     string
	Sock    string // the agent channel's host socket (libvirt binds it)
	Console string // the serial console log
	Disk    string // the persistent ext4 state disk
	Started time.Time
}

type vmOptions struct {
	// GuestdArgs are extra vmpersona-guestd flags (passed through the kernel
	// command line to /init).
	GuestdArgs []string
}

var domainXML = template.Must(template.New("domain").Funcs(template.FuncMap{"x": xmlEscape}).Parse(`<domain type='qemu'>
  <name>{{x .Name}}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{{x .Kernel}}</kernel>
    <initrd>{{x .Initrd}}</initrd>
    <cmdline>{{x .Cmdline}}</cmdline>
  </os>
  <!-- ACPI gives the guest HPET and a calibrated TSC: without it the kernel
       keeps time with jiffies, which drift and jump under TCG (guest clocks
       minutes off, spurious heartbeat timeouts). -->
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <source file='{{x .Disk}}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='{{x .Sock}}'/>
      <target type='virtio' name='{{x .Port}}'/>
    </channel>
    <serial type='file'>
      <source path='{{x .Console}}' append='on'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <!-- QEMU runs as root: the kernel and initramfs live in root's cache. -->
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
</domain>
`))

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&#39;")
}

// newVM defines a domain (not started) with a fresh state disk. It is
// destroyed and undefined when the test ends; if the test failed, the tail
// of its console log is printed.
func newVM(t *testing.T, opts vmOptions) *VM {
	t.Helper()
	name := fmt.Sprintf("vmp-it-%d-%d", os.Getpid(), vmSeq.Add(1))
	vm := &VM{Name: name, Dir: filepath.Join(env.runDir, name)}
	vm.Sock = filepath.Join(vm.Dir, "agent.sock")
	vm.Console = filepath.Join(vm.Dir, "console.log")
	vm.Disk = filepath.Join(vm.Dir, "state.img")
	if err := os.MkdirAll(vm.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := os.WriteFile(vm.Disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(vm.Disk, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "vmpstate", vm.Disk).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	cmdline := "console=ttyS0 panic=-1 loglevel=4"
	if len(opts.GuestdArgs) > 0 {
		cmdline += " vmpersona.args=" + strings.Join(opts.GuestdArgs, ",")
	}
	var xmlBuf bytes.Buffer
	err := domainXML.Execute(&xmlBuf, map[string]string{
		"Name": name, "Kernel": env.kernel, "Initrd": env.initrd, "Cmdline": cmdline,
		"Disk": vm.Disk, "Sock": vm.Sock, "Port": agentPort, "Console": vm.Console,
	})
	if err != nil {
		t.Fatal(err)
	}
	xmlPath := filepath.Join(vm.Dir, "domain.xml")
	if err := os.WriteFile(xmlPath, xmlBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	reg.addDomain(name)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console of %s (last 40 lines):\n%s", name, vm.ConsoleTail(40))
			if n := vm.foreignSessions(); n > 0 {
				t.Logf("%d sessions on %s came from another host (a host_version other than %s*): another vmpersona-hostd took this VM's channel", n, name, hostVersion())
			}
			if f := foreignHostds(); len(f) > 0 {
				t.Logf("other vmpersona-hostd processes with libvirt discovery run on this machine and may have taken this VM's channel (see \"session started\" lines with another host_version):\n  %s", strings.Join(f, "\n  "))
			}
		}
		removeDomain(name)
		reg.removeDomain(name)
	})
	if _, err := virsh(ctx, "define", xmlPath); err != nil {
		t.Fatal(err)
	}
	return vm
}

// Start starts the domain and records when.
func (vm *VM) Start(t *testing.T) {
	t.Helper()
	vm.Started = time.Now()
	if _, err := virsh(context.Background(), "start", vm.Name); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: virsh start took %s", vm.Name, time.Since(vm.Started).Round(time.Millisecond))
}

// Endpoint is the hostd --instance endpoint of the agent channel.
func (vm *VM) Endpoint() string { return "unix:" + vm.Sock }

// ConsoleTail returns the last n lines of the serial console.
func (vm *VM) ConsoleTail(n int) string {
	b, err := os.ReadFile(vm.Console)
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	return tail(string(b), n)
}

// foreignSessions counts the guest daemon's sessions with a host that is
// not this run's (a host_version without this run's prefix).
func (vm *VM) foreignSessions() int {
	b, _ := os.ReadFile(vm.Console)
	n := 0
	for _, m := range regexp.MustCompile(`msg="session started" .*host_version=(\S+)`).FindAllSubmatch(b, -1) {
		if !strings.HasPrefix(string(m[1]), hostVersion()) {
			n++
		}
	}
	return n
}

// ConsoleContains reports whether the console log holds s.
func (vm *VM) ConsoleContains(s string) bool {
	b, _ := os.ReadFile(vm.Console)
	return bytes.Contains(b, []byte(s))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls cond every 50 ms until it reports true or the deadline
// passes; then the test fails with what, the last state cond described and
// the diagnostics the test's cleanups print.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
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
		time.Sleep(50 * time.Millisecond)
	}
}
