package api

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNoCgoBackendsInTheAPI keeps the REST API free of libvirt: errors reach
// it through their classes (package errdefs), so it needs no backend's
// sentinels, builds without cgo, and its fuzzers link no C library.
func TestNoCgoBackendsInTheAPI(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH, so the package's imports cannot be listed: %v", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-test", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list with CGO_ENABLED=0: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "libvirt.org/") || strings.HasSuffix(pkg, "/hostd/libvirt") {
			t.Errorf("hostd/api (or its tests) imports %s", pkg)
		}
	}
}
