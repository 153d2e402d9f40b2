package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cpuGroup is a CPU cgroup of its own for the scale figure's guest daemons.
// On a KVM host the guests' CPU time is one group beside the host's
// services (libvirt puts every VM under machine.slice, hostd runs in
// system.slice, with equal weights); as plain processes beside hostd, a
// thousand busy guest daemons would each weigh as much as hostd to the
// scheduler, which a host never sees.
type cpuGroup struct {
	dir, parent string
	// enabled: the cpu controller was enabled for parent's children by
	// newCPUGroup (cgroup v2), and remove disables it again.
	enabled bool
}

// newCPUGroup makes (or reuses) the group name under this process's own CPU
// cgroup: the cgroup v1 "cpu" hierarchy where one is mounted, else cgroup
// v2 with the cpu controller enabled for its children. It returns why not
// where neither is possible.
func newCPUGroup(name string) (*cpuGroup, error) {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	v1, v2 := cgroupMounts(string(mounts))
	v1Path, v2Path, v2ok := ownCgroups(string(own))
	var parent string
	enabled := false
	switch {
	case v1 != "" && v1Path != "":
		parent = filepath.Join(v1, v1Path)
	case v2 != "" && v2ok:
		parent = filepath.Join(v2, v2Path)
		ctl := filepath.Join(parent, "cgroup.subtree_control")
		if b, err := os.ReadFile(ctl); err != nil || !slices.Contains(strings.Fields(string(b)), "cpu") {
			if err := os.WriteFile(ctl, []byte("+cpu"), 0); err != nil {
				return nil, fmt.Errorf("cannot enable the cpu controller in %s: %w", parent, err)
			}
			enabled = true
		}
	default:
		return nil, errors.New("no cgroup CPU controller is mounted")
	}
	g := &cpuGroup{dir: filepath.Join(parent, name), parent: parent, enabled: enabled}
	if err := os.Mkdir(g.dir, 0o755); err != nil && !os.IsExist(err) {
		g.restore()
		return nil, err
	}
	return g, nil
}

// cgroupMounts returns the mount points of the cgroup v1 hierarchy holding
// the cpu controller and of cgroup v2 ("" where none), from mountinfo.
func cgroupMounts(mountinfo string) (v1, v2 string) {
	for _, l := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch g[0] {
		case "cgroup":
			if slices.Contains(strings.Split(g[2], ","), "cpu") && v1 == "" {
				v1 = f[4]
			}
		case "cgroup2":
			if v2 == "" {
				v2 = f[4]
			}
		}
	}
	return v1, v2
}

// ownCgroups returns this process's path in the v1 cpu hierarchy ("" when
// none) and in cgroup v2, from /proc/self/cgroup.
func ownCgroups(procCgroup string) (v1 string, v2 string, v2ok bool) {
	for _, l := range strings.Split(procCgroup, "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2, v2ok = parts[2], true
			continue
		}
		if slices.Contains(strings.Split(parts[1], ","), "cpu") {
			v1 = parts[2]
		}
	}
	return v1, v2, v2ok
}

// add moves a process (all its threads; its children from then on) into
// the group.
func (g *cpuGroup) add(pid int) error {
	return os.WriteFile(filepath.Join(g.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}

// remove moves what is still in the group back to the parent, removes the
// group and disables the cpu controller again if newCPUGroup enabled it.
func (g *cpuGroup) remove() error {
	b, err := os.ReadFile(filepath.Join(g.dir, "cgroup.procs"))
	if err != nil {
		return err
	}
	for _, pid := range strings.Fields(string(b)) {
		os.WriteFile(filepath.Join(g.parent, "cgroup.procs"), []byte(pid), 0)
	}
	if err := os.Remove(g.dir); err != nil {
		return err
	}
	return g.restore()
}

// restore disables the cpu controller for the parent's children if
// newCPUGroup enabled it.
func (g *cpuGroup) restore() error {
	if !g.enabled {
		return nil
	}
	if err := os.WriteFile(filepath.Join(g.parent, "cgroup.subtree_control"), []byte("-cpu"), 0); err != nil {
		return fmt.Errorf("cannot disable the cpu controller in %s again: %w", g.parent, err)
	}
	g.enabled = false
	return nil
}
