//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// TestLibvirtDiscovery: hostd with --libvirt-uri qemu:///system finds a
// domain started after it, with its agent channel, through libvirt alone;
// the default persona is activated when the agent connects, and a destroyed
// domain is seen as such. It does not run in parallel: a discovering hostd
// sees every domain of the system instance, and would take the channels of
// the other tests' VMs.
func TestLibvirtDiscovery(t *testing.T) {
	h := startHostd(t, hostdOptions{LibvirtURI: libvirtURI})
	h.CreatePersona(protocol.Persona{Name: "found", DefaultPersona: true, EnvironmentVariables: map[string]string{"FOUND_BY": "libvirt"}})
	vm := newVM(t, vmOptions{})
	vm.Start(t)
	id := vm.Name

	// The domain appears (defined, then running with its channel).
	deadline := time.Now().Add(45 * time.Second)
	for {
		_, st := h.Instance(id)
		if st == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			if strings.Contains(h.LogTail(200), "libvirt discovery is not available") {
				t.Skip("this hostd build has no libvirt discovery yet (it logs \"libvirt discovery is not available\"); the static --instance path is covered by the other tests")
			}
			t.Fatalf("domain %s not in GET /instances 45s after it started (status %d)", id, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, 30*time.Second, "the running domain's agent channel in GET /instances", func() (bool, string) {
		inst, _ := h.Instance(id)
		return inst.Source == "libvirt" && inst.State == "running" && inst.Endpoint == vm.Endpoint(), fmt.Sprintf("%+v", inst)
	})
	_, d := h.WaitActive(id, "found", bootTimeout)
	t.Logf("FIGURE boot to default persona active through libvirt discovery: %s (%s after discovery)",
		time.Since(vm.Started).Round(time.Millisecond), d.Round(time.Millisecond))
	if r := h.MustExec(id, "sh", "-c", "echo $FOUND_BY"); strings.TrimSpace(r.Stdout) != "libvirt" {
		t.Errorf("FOUND_BY=%q", r.Stdout)
	}
	// The domain's UUID names the instance too.
	if out, err := virsh(context.Background(), "domuuid", id); err == nil {
		if u := strings.TrimSpace(out); u != "" {
			if doc, st := h.Instance(u); st != http.StatusOK || doc.ID != id {
				t.Errorf("GET /instances/%s (the UUID): %d %+v", u, st, doc)
			}
		}
	}

	if _, err := virsh(context.Background(), "destroy", id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the destroyed domain to be seen as shut off", func() (bool, string) {
		inst, st := h.Instance(id)
		return st == http.StatusOK && inst.State == "shutoff", fmt.Sprintf("%d %+v", st, inst)
	})
}
