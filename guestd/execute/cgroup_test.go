package execute

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// A cgroup left by a daemon that was killed (another pid) is emptied and
// removed when the next one starts using cgroups.
func TestStaleCgroupsRemoved(t *testing.T) {
	base, ok, why := CgroupStatus()
	if !ok {
		t.Skip("no cgroup v2 with cgroup.kill here: " + why)
	}
	stale := base + "/vmpersona-exec-4194300-1"
	if err := os.Mkdir(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(stale) })
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := os.WriteFile(stale+"/cgroup.procs", []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	removeStale(base)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("the stale cgroup's process ended with %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the stale cgroup's process is still running")
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale cgroup still there: %v", err)
	}
}

// A live daemon's command cgroups are left alone.
func TestLiveDaemonsCgroupsKept(t *testing.T) {
	base, ok, why := CgroupStatus()
	if !ok {
		t.Skip("no cgroup v2 with cgroup.kill here: " + why)
	}
	live := base + "/vmpersona-exec-1-77"
	if err := os.Mkdir(live, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(live) })
	removeStale(base)
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("the cgroup of a running daemon (pid 1) was removed: %v", err)
	}
}
