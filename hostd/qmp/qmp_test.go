package qmp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// qemuVM is a real QEMU started by a test: no firmware runs (-S keeps the
// vCPUs stopped until "cont"), which is all QMP needs.
type qemuVM struct {
	cmd     *exec.Cmd
	qmp     string // the socket under test
	control string // a second QMP socket for the test to drive QEMU
	agent   string // the agent chardev socket ("" without channel)
	exited  chan struct{}
}

type qemuOpts struct {
	channel bool
	dir     string // reuse paths of an earlier VM
}

func startQEMU(t *testing.T, o qemuOpts) *qemuVM {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (scripts/ensure-deps qemu-system-x86): these tests run a real QEMU")
	}
	dir := o.dir
	if dir == "" {
		dir = testproc.ShortDir(t) // unix socket paths are limited to 107 bytes
	}
	vm := &qemuVM{qmp: filepath.Join(dir, "qmp.sock"), control: filepath.Join(dir, "ctl.sock"), exited: make(chan struct{})}
	args := []string{"-M", "q35", "-nodefaults", "-S", "-display", "none", "-accel", "tcg",
		"-qmp", "unix:" + vm.qmp + ",server=on,wait=off",
		"-qmp", "unix:" + vm.control + ",server=on,wait=off",
		"-device", "virtio-serial"}
	if o.channel {
		vm.agent = filepath.Join(dir, "agent.sock")
		args = append(args,
			"-chardev", "socket,id=agent0,path="+vm.agent+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent0,name="+PortName,
			// Another port, so that the search has to pick the right one.
			"-chardev", "socket,id=other0,path="+filepath.Join(dir, "other.sock")+",server=on,wait=off",
			"-device", "virtserialport,chardev=other0,name=org.example.other")
	}
	vm.cmd = exec.Command(bin, args...)
	vm.cmd.Stderr = os.Stderr
	if err := vm.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { vm.cmd.Wait(); close(vm.exited) }()
	t.Cleanup(vm.kill)
	testproc.WaitFor(t, "QEMU's QMP sockets", func() bool {
		_, e1 := os.Stat(vm.qmp)
		_, e2 := os.Stat(vm.control)
		return e1 == nil && e2 == nil
	})
	return vm
}

// kill ends this test's QEMU by its PID.
func (vm *qemuVM) kill() {
	select {
	case <-vm.exited:
		return
	default:
	}
	syscall.Kill(vm.cmd.Process.Pid, syscall.SIGKILL)
	<-vm.exited
}

// do runs a command on the control socket.
func (vm *qemuVM) do(t *testing.T, command string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := Dial(ctx, vm.control, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Disconnect()
	if err := m.Execute(ctx, command, nil, nil); err != nil && !(command == "quit" && errors.Is(err, ErrClosed)) {
		t.Fatalf("%s: %v", command, err)
	}
}

func dial(t *testing.T, path string) *Monitor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := Dial(ctx, path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Disconnect() })
	return m
}

func TestMonitorAgainstQEMU(t *testing.T) {
	vm := startQEMU(t, qemuOpts{channel: true})
	m := dial(t, vm.qmp)
	if m.Version.QEMU.Major == 0 {
		t.Errorf("no QEMU version from the greeting: %+v", m.Version)
	}
	ctx := context.Background()

	st, err := QueryStatus(ctx, m)
	if err != nil || st != "prelaunch" {
		t.Fatalf("QueryStatus = %q, %v; want prelaunch (started with -S)", st, err)
	}

	// go-qemu's generated commands run over this Monitor.
	infos, err := raw.NewMonitor(m).QueryChardev()
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, c := range infos {
		labels = append(labels, c.Label)
	}
	if !strings.Contains(strings.Join(labels, ","), "agent0") {
		t.Errorf("raw QueryChardev labels %v: no agent0", labels)
	}

	// A QEMU error answer is a *CommandError naming the command.
	err = m.Execute(ctx, "no-such-command", nil, nil)
	var ce *CommandError
	if !errors.As(err, &ce) || ce.Command != "no-such-command" || ce.Class != "CommandNotFound" {
		t.Errorf("unknown command: err = %v, want CommandError CommandNotFound", err)
	}

	// Events: cont resumes, stop pauses.
	events, _ := m.Events(ctx)
	vm.do(t, "cont")
	vm.do(t, "stop")
	var got []string
	for len(got) < 2 {
		select {
		case ev := <-events:
			got = append(got, ev.Event)
		case <-time.After(30 * time.Second):
			t.Fatalf("events so far %v, want RESUME, STOP", got)
		}
	}
	if got[0] != "RESUME" || got[1] != "STOP" {
		t.Errorf("events %v, want [RESUME STOP]", got)
	}
	if st, err := QueryStatus(ctx, m); err != nil || st != "paused" {
		t.Errorf("after stop: QueryStatus = %q, %v; want paused", st, err)
	}

	// QEMU exits: commands fail with ErrClosed and the event channel closes.
	vm.do(t, "quit")
	<-m.Done()
	if err := m.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("after quit: err = %v, want ErrClosed", err)
	}
	for range events {
	}
}

func TestDialBoundedWhenMonitorBusy(t *testing.T) {
	vm := startQEMU(t, qemuOpts{})
	// QEMU serves one client per QMP socket: a second connection is
	// accepted by the kernel and never greeted.
	dial(t, vm.qmp)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	m, err := Dial(ctx, vm.qmp, 0)
	if err == nil {
		m.Disconnect()
		t.Fatal("second Dial on a busy QMP socket succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
}

func TestDialNotQMP(t *testing.T) {
	dir := testproc.ShortDir(t)
	p := filepath.Join(dir, "s")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			fmt.Fprintf(c, "{\"hello\": 1}\n")
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := Dial(ctx, p, 0); !errors.Is(err, ErrProtocol) {
		t.Errorf("err = %v, want ErrProtocol", err)
	}
	if _, err := Dial(ctx, filepath.Join(dir, "missing"), 0); err == nil {
		t.Error("Dial of a missing socket succeeded")
	}
}

func TestFindChannel(t *testing.T) {
	ctx := context.Background()
	vm := startQEMU(t, qemuOpts{channel: true})
	m := dial(t, vm.qmp)
	ch, err := FindChannel(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if ch.Chardev != "agent0" || ch.Path != vm.agent || ch.FrontendOpen {
		t.Errorf("channel %+v, want chardev agent0 at %s, frontend closed (no guest)", ch, vm.agent)
	}
	// With a host client on the socket, the chardev's filename changes;
	// the path must still be found.
	c, err := net.Dial("unix", vm.agent)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testproc.WaitFor(t, "QEMU to see the host connection", func() bool {
		var infos []raw.ChardevInfo
		m.Execute(ctx, "query-chardev", nil, &infos)
		for _, i := range infos {
			if i.Label == "agent0" {
				return !strings.HasPrefix(i.Filename, "disconnected:")
			}
		}
		return false
	})
	ch2, err := FindChannel(ctx, m)
	if err != nil || ch2.Path != vm.agent {
		t.Errorf("with a host client: %+v, %v", ch2, err)
	}
	if open, err := PortOpen(ctx, m, "agent0"); err != nil || open {
		t.Errorf("PortOpen = %v, %v; want false (no guest)", open, err)
	}

	bare := startQEMU(t, qemuOpts{})
	if _, err := FindChannel(ctx, dial(t, bare.qmp)); !errors.Is(err, ErrNoChannel) {
		t.Errorf("no channel: err = %v, want ErrNoChannel", err)
	}
}

func TestUnixServerPath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
		ok   bool
	}{
		{"unix:/run/a.sock,server=on", "/run/a.sock", true},
		{"disconnected:unix:/run/a.sock,server=on", "/run/a.sock", true},
		{"unix:/run/a,b.sock,server=on", "/run/a,b.sock", true},
		{"unix:/run/a.sock", "", false}, // client mode: QEMU dials out
		{"pty:/dev/pts/3", "", false},
		{"tcp:127.0.0.1:4444,server=on", "", false},
		{"", "", false},
	} {
		got, ok := unixServerPath(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("unixServerPath(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseFlag(t *testing.T) {
	if in, err := ParseFlag("vm1=/run/vm1.qmp"); err != nil || in != (Instance{"vm1", "/run/vm1.qmp"}) {
		t.Errorf("ParseFlag = %+v, %v", in, err)
	}
	for _, bad := range []string{"", "vm1", "=/p", "vm1="} {
		if _, err := ParseFlag(bad); err == nil {
			t.Errorf("ParseFlag(%q) succeeded", bad)
		}
	}
}

func newWatcher(t *testing.T, mgr *agents.Manager, ins ...Instance) *Watcher {
	t.Helper()
	w, err := New(Config{Instances: ins, Agents: mgr, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)), BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Poll: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func managed(mgr *agents.Manager, name string) (agents.AgentStatus, bool) {
	st, err := mgr.Get(name)
	return st, err == nil
}

func TestWatcherFollowsQEMU(t *testing.T) {
	vm := startQEMU(t, qemuOpts{channel: true})
	mgr := agents.NewManager(agents.Config{})
	t.Cleanup(mgr.Close)
	w := newWatcher(t, mgr, Instance{Name: "vm1", Path: vm.qmp})
	wantEP := "unix:" + vm.agent

	testproc.WaitFor(t, "vm1 paused (prelaunch) with its endpoint", func() bool {
		s, _ := w.Lookup("vm1")
		return s.State == agents.InstancePaused && s.RunState == "prelaunch" && s.Endpoint == wantEP
	})
	st, ok := managed(mgr, "vm1")
	if !ok || st.Source != Source || st.Endpoint != wantEP {
		t.Fatalf("manager has vm1 = %+v, %v; want source qmp at %s", st, ok, wantEP)
	}
	if s, _ := w.Lookup("vm1"); s.PortOpen == nil || *s.PortOpen || s.Reason != "" {
		t.Errorf("status %+v: want port_open false (no guest) and no reason", s)
	}

	vm.do(t, "cont")
	testproc.WaitFor(t, "vm1 running", func() bool { s, _ := w.Lookup("vm1"); return s.State == agents.InstanceRunning })
	vm.do(t, "stop")
	testproc.WaitFor(t, "vm1 paused", func() bool {
		s, _ := w.Lookup("vm1")
		return s.State == agents.InstancePaused && s.RunState == "paused"
	})

	// QEMU exits: listed as shutoff, no longer managed (no dialling).
	vm.do(t, "quit")
	testproc.WaitFor(t, "vm1 shutoff", func() bool { s, _ := w.Lookup("vm1"); return s.State == agents.InstanceShutoff })
	testproc.WaitFor(t, "vm1 removed from the manager", func() bool { _, ok := managed(mgr, "vm1"); return !ok })
	if s, _ := w.Lookup("vm1"); s.Endpoint != "" || s.Reason == "" {
		t.Errorf("shutoff status %+v: want no endpoint and a reason", s)
	}
	if got := w.List(); len(got) != 1 || got[0].Name != "vm1" {
		t.Errorf("Instances = %+v, want vm1 still listed", got)
	}

	// QEMU comes back on the same socket: found again.
	startQEMU(t, qemuOpts{channel: true, dir: filepath.Dir(vm.qmp)})
	testproc.WaitFor(t, "vm1 back", func() bool {
		s, _ := w.Lookup("vm1")
		_, ok := managed(mgr, "vm1")
		return s.State == agents.InstancePaused && s.Endpoint == wantEP && ok
	})
}

func TestWatcherWithoutChannel(t *testing.T) {
	vm := startQEMU(t, qemuOpts{})
	mgr := agents.NewManager(agents.Config{})
	t.Cleanup(mgr.Close)
	w := newWatcher(t, mgr, Instance{Name: "bare", Path: vm.qmp})
	testproc.WaitFor(t, "bare listed with a reason", func() bool {
		s, _ := w.Lookup("bare")
		return s.State == agents.InstancePaused && strings.Contains(s.Reason, "no "+PortName+" channel")
	})
	if _, ok := managed(mgr, "bare"); ok {
		t.Error("an instance without channel is managed")
	}
}

func TestWatcherNameTaken(t *testing.T) {
	vm := startQEMU(t, qemuOpts{channel: true})
	mgr := agents.NewManager(agents.Config{})
	t.Cleanup(mgr.Close)
	static := agents.Endpoint{Kind: agents.KindUnix, Path: "/nonexistent/static.sock"}
	if err := mgr.Add("vm1", static, "static"); err != nil {
		t.Fatal(err)
	}
	w := newWatcher(t, mgr, Instance{Name: "vm1", Path: vm.qmp})
	testproc.WaitFor(t, "a name clash reason", func() bool {
		s, _ := w.Lookup("vm1")
		return strings.Contains(s.Reason, "already used")
	})
	if st, _ := managed(mgr, "vm1"); st.Source != "static" || st.Endpoint != static.String() {
		t.Errorf("the static instance was changed: %+v", st)
	}
}

func TestWatcherUnreachable(t *testing.T) {
	mgr := agents.NewManager(agents.Config{})
	t.Cleanup(mgr.Close)
	w := newWatcher(t, mgr, Instance{Name: "gone", Path: "/nonexistent/qmp.sock"})
	testproc.WaitFor(t, "gone listed as shutoff", func() bool {
		s, _ := w.Lookup("gone")
		return s.State == agents.InstanceShutoff && strings.Contains(s.Reason, "not reachable")
	})
	if _, err := New(Config{Agents: mgr, Instances: []Instance{{"a", "/x"}, {"a", "/y"}}}); err == nil {
		t.Error("New accepted the same name twice")
	}
}
