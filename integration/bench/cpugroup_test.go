package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestCgroupParsing(t *testing.T) {
	hybrid := "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
		"32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n" +
		"33 31 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n" +
		"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
	if v1, v2 := cgroupMounts(hybrid); v1 != "/sys/fs/cgroup/cpu,cpuacct" || v2 != "/sys/fs/cgroup/unified" {
		t.Errorf("hybrid: %q %q", v1, v2)
	}
	if v1, v2 := cgroupMounts("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"); v1 != "" || v2 != "/sys/fs/cgroup" {
		t.Errorf("v2 only: %q %q", v1, v2)
	}
	v1, v2, ok := ownCgroups("4:memory:/m\n3:cpuset:/\n2:cpu,cpuacct:/a/b\n0::/c\n")
	if v1 != "/a/b" || v2 != "/c" || !ok {
		t.Errorf("own: %q %q %v", v1, v2, ok)
	}
	if v1, _, ok := ownCgroups("0::/\n"); v1 != "" || !ok {
		t.Errorf("v2-only own: %q %v", v1, ok)
	}
}

// TestCPUGroup puts a real process into a group of its own and takes the
// group away again, where this machine lets the test make cgroups.
func TestCPUGroup(t *testing.T) {
	g, err := newCPUGroup("vmpersona-bench-test-" + strconv.Itoa(os.Getpid()))
	if err != nil {
		t.Skipf("cannot make a CPU cgroup here (not root, or no cpu controller for this process): %v", err)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := g.add(cmd.Process.Pid); err != nil {
		g.remove()
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
	if !strings.Contains(" "+strings.Join(strings.Fields(string(b)), " ")+" ", " "+strconv.Itoa(cmd.Process.Pid)+" ") {
		t.Errorf("the process is not in %s: %q", g.dir, b)
	}
	if err := g.remove(); err != nil {
		t.Fatalf("remove with a live process in it: %v", err)
	}
	if _, err := os.Stat(g.dir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", g.dir, err)
	}
}
