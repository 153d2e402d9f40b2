package execute

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// An emptied cgroup serves the next process; one a command left a process
// in is killed and never serves another.
func TestCgroupReusedOnlyWhenEmpty(t *testing.T) {
	if _, ok, why := CgroupStatus(); !ok {
		t.Skip("no cgroup v2 with cgroup.kill here: " + why)
	}
	where := func(script string) (cgroup, out string) {
		t.Helper()
		res, err := Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "cat /proc/self/cgroup; " + script}})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%s: %v %+v", script, err, res)
		}
		for _, line := range strings.Split(string(res.Stdout), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok {
				return p, string(res.Stdout)
			}
		}
		t.Fatalf("no cgroup v2 line in %q", res.Stdout)
		return "", ""
	}
	left, out := where("setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo pid=$!")
	_, pidText, _ := strings.Cut(out, "pid=")
	pid, err := strconv.Atoi(strings.TrimSpace(pidText))
	if err != nil {
		t.Fatalf("no pid in %q", out)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	for i := 0; ; i++ {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(data), ") Z ") {
			break
		}
		if i == 2000 {
			t.Fatalf("the process %d the command left behind is still running", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A command killed at its timeout (its cgroup killed) leaves a cgroup
	// no later command may start in.
	res, err := Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "sleep 1000"}, Timeout: 50 * time.Millisecond})
	if err != nil || !res.TimedOut {
		t.Fatalf("sleep 1000 with a timeout: %v %+v", err, res)
	}
	a, _ := where("")
	b, _ := where("")
	if a == left || b == left {
		t.Fatalf("a cgroup a process was left in (%s) served another command", left)
	}
	if a != b {
		t.Logf("an emptied cgroup was not reused: %s then %s", a, b)
	}
}
