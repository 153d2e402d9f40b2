package rules_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSharedPackagesStaySmall: the guest daemon imports rules and errdefs;
// they may import nothing but the standard library (and errdefs).
func TestSharedPackagesStaySmall(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH, so the packages' imports cannot be listed: %v", err)
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
		"github.com/vmpersona/vmpersona/rules", "github.com/vmpersona/vmpersona/errdefs").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch pkg {
		case "github.com/vmpersona/vmpersona/rules", "github.com/vmpersona/vmpersona/errdefs":
		default:
			t.Errorf("rules or errdefs imports %s", pkg)
		}
	}
}
