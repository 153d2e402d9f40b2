package reliability

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testetcd"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// activeOn is the persona instance id's guest confirms on host h ("" for
// none or while unknown).
func activeOn(h *hostd, id string) string {
	a, err := call(h.client, "GET", "/instances/"+id, nil)
	if err != nil || a.status != 200 {
		return ""
	}
	var m struct {
		Active *struct {
			Persona *string `json:"persona"`
		} `json:"active"`
	}
	if json.Unmarshal(a.body, &m) != nil || m.Active == nil || m.Active.Persona == nil {
		return ""
	}
	return *m.Active.Persona
}

// An assignment by label, written through one host, activates on the
// matching VMs of every host (labels from the --instance flags, host labels
// from --fleet-host-label), against real etcd processes and real hostds;
// with a follower killed first, and with quorum lost an assignment write is
// refused (503) while the VMs keep their personas.
func TestFleetAssignmentByLabelWithRealEtcd(t *testing.T) {
	parallel(t)
	c := testetcd.Start(t, 3)
	dir := testproc.ShortDir(t)
	fleetArgs := func(name, rack string) []string {
		return []string{"--fleet-etcd", strings.Join(c.Endpoints(), ","), "--fleet-host", name, "--fleet-prefix", "/tier-assign/", "--fleet-host-label", "rack=" + rack}
	}
	guest := func(name string) string { _, ep := startGuest(t, filepath.Join(dir, name)); return ep }
	a := startHostd(t, filepath.Join(dir, "a"), filepath.Join(dir, "a.sock"), append(fleetArgs("a", "1"),
		"--instance", "web-a="+guest("ga1")+",role=web", "--instance", "db-a="+guest("ga2")+",role=db")...)
	b := startHostd(t, filepath.Join(dir, "b"), filepath.Join(dir, "b.sock"), append(fleetArgs("b", "2"),
		"--instance", "web-b="+guest("gb1")+",role=web", "--instance", "plain-b="+guest("gb2"))...)
	waitUntil(t, "both hosts connected", func() bool {
		return metricValue(t, a, "vmpersona_fleet_connected") == 1 && metricValue(t, b, "vmpersona_fleet_connected") == 1
	})
	for _, x := range []struct {
		h  *hostd
		vm string
	}{{a, "web-a"}, {a, "db-a"}, {b, "web-b"}, {b, "plain-b"}} {
		x.h.waitConnected(t, x.vm)
	}
	a.must(t, "POST", "/personas", map[string]any{"name": "web", "environment_variables": map[string]string{"ROLE": "web"}}, 201)
	a.must(t, "POST", "/personas", map[string]any{"name": "rack2"}, 201)

	// A follower down does not stop it.
	cli := c.Client(nil)
	leader := c.Leader(cli)
	cli.Close()
	c.Kill((leader + 1) % 3)

	b.must(t, "PUT", "/assignments/web", map[string]any{"persona": "web", "priority": 10,
		"selector": map[string]any{"instance_labels": map[string]string{"role": "web"}}}, 201)
	b.must(t, "PUT", "/assignments/rack2", map[string]any{"persona": "rack2",
		"selector": map[string]any{"host_labels": map[string]string{"rack": "2"}}}, 201)
	waitUntil(t, "web-a (host a) and web-b (host b) on web, plain-b on rack2", func() bool {
		return activeOn(a, "web-a") == "web" && activeOn(b, "web-b") == "web" && activeOn(b, "plain-b") == "rack2"
	})
	if got := activeOn(a, "db-a"); got != "" {
		t.Errorf("db-a (role=db, rack 1) runs %q; no assignment selects it", got)
	}

	// Quorum lost: the write is refused, nothing changes on the VMs.
	c.Kill(leader)
	r, err := call(a.client, "PUT", "/assignments/db", map[string]any{"persona": "web",
		"selector": map[string]any{"instance_labels": map[string]string{"role": "db"}}})
	if err != nil || r.status != 503 {
		t.Fatalf("assignment write without quorum: %v %d %s", err, r.status, r.body)
	}
	if got := activeOn(a, "db-a"); got != "" {
		t.Errorf("db-a runs %q after a refused assignment", got)
	}
	if got := activeOn(b, "web-b"); got != "web" {
		t.Errorf("web-b runs %q while etcd has no quorum, want web", got)
	}
}
