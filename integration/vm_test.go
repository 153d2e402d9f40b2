//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/integration/vmenv"
)

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

// newVM defines a domain (not started) with a fresh state disk. It is
// destroyed and undefined when the test ends; if the test failed, the tail
// of its console log is printed.
func newVM(t *testing.T, opts vmOptions) *VM {
	t.Helper()
	name := reg.DomainName(int(vmSeq.Add(1)))
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
	xml, err := vmenv.Domain{
		Name: name, MemoryMiB: 256, VCPUs: 1, Kernel: env.kernel, Initrd: env.initrd, Cmdline: cmdline,
		Features: "<acpi/><apic/>", DiskCache: "writeback", Disk: vm.Disk, Sock: vm.Sock, Console: vm.Console,
	}.XML()
	if err != nil {
		t.Fatal(err)
	}
	reg.DefineDomain(t, ctx, name, filepath.Join(vm.Dir, "domain.xml"), xml, func() {
		t.Logf("console of %s (last 40 lines):\n%s", name, vm.ConsoleTail(40))
		if n := vm.foreignSessions(); n > 0 {
			t.Logf("%d sessions on %s came from another host (a host_version other than %s*): another vmpersona-hostd took this VM's channel", n, name, hostVersion())
		}
		if f := foreignHostds(); len(f) > 0 {
			t.Logf("other vmpersona-hostd processes with libvirt discovery run on this machine and may have taken this VM's channel (see \"session started\" lines with another host_version):\n  %s", strings.Join(f, "\n  "))
		}
	})
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

func tail(s string, n int) string { return vmenv.Tail(s, n) }

// waitFor polls cond every 50 ms until it reports true or the deadline
// passes; then the test fails with what, the last state cond described and
// the diagnostics the test's cleanups print.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	return vmenv.WaitFor(t, timeout, 50*time.Millisecond, what, cond)
}
