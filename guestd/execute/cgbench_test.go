package execute

import (
	"context"
	"os/exec"
	"testing"
)

// BenchmarkRunCgroup compares a run in a cgroup of its own with one
// without (the process group only) and with a bare os/exec spawn, in
// turn.
func BenchmarkRunCgroup(b *testing.B) {
	if _, ok, why := CgroupStatus(); !ok {
		b.Skip("no cgroup v2 here: " + why)
	}
	for _, mode := range []string{"cgroup", "no-cgroup", "os-exec", "cgroup", "no-cgroup", "os-exec"} {
		b.Run(mode, func(b *testing.B) {
			cgroupOff.Store(mode != "cgroup")
			defer cgroupOff.Store(false)
			for b.Loop() {
				if mode == "os-exec" {
					if err := exec.Command("/bin/true").Run(); err != nil {
						b.Fatal(err)
					}
					continue
				}
				if _, err := Run(context.Background(), Spec{Path: "/bin/true"}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
