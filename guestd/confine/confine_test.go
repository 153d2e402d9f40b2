package confine

import (
	"errors"
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

// TestStartConfinesEveryStart runs many starts at once through one domain
// (more than it has confined threads): each process runs confined, and the
// daemon's own threads stay free of the domain.
func TestStartConfinesEveryStart(t *testing.T) {
	if ABI() == 0 {
		t.Skip("no Landlock on this kernel: nothing to confine with")
	}
	d, err := Build(Spec{Allowed: []string{"/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3*maxWorkers)
	for range 3 * maxWorkers {
		go func() {
			if err := d.Start(exec.Command("/bin/true").Run); err != nil {
				errs <- err
				return
			}
			errs <- d.Start(func() error {
				if exec.Command("/bin/sh", "-c", "exit 0").Run() == nil {
					return errors.New("/bin/sh ran under an allowlist of /bin/true")
				}
				return nil
			})
		}()
	}
	for range 3 * maxWorkers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		if err := exec.Command("/bin/sh", "-c", "exit 0").Run(); err != nil {
			t.Fatalf("a thread of the daemon itself is confined: %v", err)
		}
	}
}
