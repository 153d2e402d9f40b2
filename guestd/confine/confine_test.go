package confine

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestInterpreter(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "s")
	if err := os.WriteFile(script, []byte("#!/bin/sh -e\necho\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := interpreter(script); got != "/bin/sh" {
		t.Fatalf("script: %q", got)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	if got := interpreter(sh); got == "" || !filepath.IsAbs(got) {
		t.Fatalf("ELF interpreter of %s: %q", sh, got)
	}
}

// BenchmarkBuild measures a deny-mode domain restricting rm, with and
// without the writable places: the cost paid once per activation.
func BenchmarkBuild(b *testing.B) {
	if ABI() == 0 {
		b.Skip("no Landlock on this kernel")
	}
	rm, err := exec.LookPath("rm")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		spec Spec
	}{
		{"deny-rm", Spec{Denied: []string{rm}}},
		{"deny-rm-writable", Spec{Denied: []string{rm}, DenyWritable: true}},
		{"allowlist-3", Spec{Allowed: []string{"/bin/sh", "/bin/ls", "/bin/cat"}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var rules int
			for b.Loop() {
				d, err := Build(bc.spec)
				if err != nil {
					b.Fatal(err)
				}
				rules = d.Rules
			}
			b.ReportMetric(float64(rules), "rules")
		})
	}
}
