//go:build integration

package integration

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// TestDesiredStateOnRealVM: on a real TCG guest, a new VM gets the default
// persona; a deliberate deactivation survives a hostd restart, guestd
// killed with SIGKILL and a VM reboot; a persona updated while active shows
// drifted (active_persona stale) and is not enforced until a rollout; the
// dry run announces the rollout's change and changes nothing; reconnects in
// step audit nothing.
func TestDesiredStateOnRealVM(t *testing.T) {
	t.Parallel()
	vm := newVM(t, vmOptions{})
	h := startHostd(t, hostdOptions{Instances: map[string]string{vm.Name: vm.Endpoint()}})
	id := vm.Name
	h.CreatePersona(protocol.Persona{Name: "baseline", DefaultPersona: true, RestrictedCommands: []string{"shutdown"}})
	h.CreatePersona(protocol.Persona{Name: "web", EnvironmentVariables: map[string]string{"TIER": "web"}, RestrictedCommands: []string{"rm"}})
	vm.Start(t)

	// A new VM gets the default persona.
	h.WaitActive(id, "baseline", bootTimeout)
	inst, _ := h.Instance(id)
	if inst.Sync != apitypes.SyncInSync || inst.Desired.SetBy != apitypes.SetByDefault {
		t.Errorf("new VM: sync %s, desired %+v", inst.Sync, inst.Desired)
	}

	// A deliberate deactivation is a desired state.
	h.Must(http.StatusOK, http.MethodPost, "/instances/"+id+"/deactivate", nil, nil)
	stayBare := func(stage string) {
		t.Helper()
		h.WaitActive(id, "", reconnTimeout)
		inst, _ := h.Instance(id)
		if inst.Active.Persona != nil || inst.Desired.Persona != nil || inst.Sync != apitypes.SyncInSync {
			t.Errorf("%s: active %+v desired %+v sync %s, want none and in_sync", stage, inst.Active, inst.Desired, inst.Sync)
		}
	}
	stayBare("after deactivation")
	h.Kill9()
	h.Start()
	h.WaitConnected(id, reconnTimeout)
	stayBare("after a hostd restart")

	first, _ := h.WaitConnected(id, reconnTimeout)
	pid := strings.TrimSpace(h.MustExec(id, "pidof", "vmpersona-guestd").Stdout)
	if _, err := strconv.Atoi(pid); err != nil {
		t.Fatalf("pidof vmpersona-guestd: %q", pid)
	}
	h.Exec(id, apitypes.ExecRequest{Command: "kill", Args: []string{"-9", pid}})
	waitFor(t, reconnTimeout, "a new guestd session", func() (bool, string) {
		inst, _ := h.Instance(id)
		return inst.Agent.State == "connected" && inst.Agent.ConnectedAt.After(first.Agent.ConnectedAt), fmt.Sprintf("%+v", inst.Agent)
	})
	stayBare("after guestd was killed")

	bootID := first.Agent.BootID
	h.Exec(id, apitypes.ExecRequest{Command: "reboot", Args: []string{"-f"}, TimeoutSeconds: 5})
	waitFor(t, bootTimeout, "the VM back after reboot", func() (bool, string) {
		inst, _ := h.Instance(id)
		return inst.Agent.State == "connected" && inst.Agent.BootID != "" && inst.Agent.BootID != bootID, fmt.Sprintf("%+v", inst.Agent)
	})
	stayBare("after a VM reboot")
	if evs := h.Audit("instance=" + id + "&type=default_activation"); len(evs) != 1 {
		t.Errorf("default_activation events: %d, want only the first boot's", len(evs))
	}

	// An update while active: drifted, not enforced, until a rollout.
	h.Activate(id, "web")
	h.Must(http.StatusOK, http.MethodPut, "/personas/web", protocol.Persona{Name: "web",
		EnvironmentVariables: map[string]string{"TIER": "web", "API_TOKEN": "t0ken"}, RestrictedCommands: []string{"rm", "cat"}}, nil)
	inst, _ = h.Instance(id)
	if inst.Sync != apitypes.SyncDrifted || inst.Active.Revision != 1 || inst.LatestRevision != 2 {
		t.Errorf("after the update: sync %s active %+v latest %d", inst.Sync, inst.Active, inst.LatestRevision)
	}
	if a := h.Active(id); !a.Stale || a.Revision != 1 {
		t.Errorf("active_persona after the update: %+v, want revision 1, stale", a)
	}
	h.MustExec(id, "cat", "/proc/version")

	var dry apitypes.DryRunResult
	h.Must(http.StatusOK, http.MethodPost, "/instances/"+id+"/personas/web/activate?dry_run=true", nil, &dry)
	if d := dry.Diff; len(d.Restrictions.Added) != 1 || d.Restrictions.Added[0] != "cat" || len(d.Environment) != 1 ||
		d.Environment[0].Name != "API_TOKEN" || d.Environment[0].New != protocol.MaskedValue {
		t.Errorf("dry run: %+v", d)
	}
	h.MustExec(id, "cat", "/proc/version") // the dry run changed nothing

	var ans apitypes.RolloutAnswer
	h.Must(http.StatusOK, http.MethodPost, "/personas/web/rollout", apitypes.RolloutRequest{MaxParallel: 5}, &ans)
	if ans.Summary.Activated != 1 || len(ans.Results) != 1 || ans.Results[0].Result != apitypes.RolloutActivated {
		t.Errorf("rollout: %+v", ans)
	}
	if _, _, st := h.Exec(id, apitypes.ExecRequest{Command: "cat", Args: []string{"/proc/version"}}); st != http.StatusForbidden {
		t.Errorf("cat after the rollout: %d, want 403", st)
	}
	inst, _ = h.Instance(id)
	if inst.Sync != apitypes.SyncInSync || inst.Active.Revision != 2 {
		t.Errorf("after the rollout: sync %s active %+v", inst.Sync, inst.Active)
	}

	// Reconnects in step write no reconciled events.
	before := len(h.Audit("instance=" + id + "&type=reconciled"))
	h.Kill9()
	h.Start()
	h.WaitActive(id, "web", reconnTimeout)
	if after := len(h.Audit("instance=" + id + "&type=reconciled")); after != before {
		t.Errorf("reconciled events: %d after a restart in step, %d before", after, before)
	}
	if m := h.Metrics(); !strings.Contains(m, `vmpersona_instances{sync="in_sync"} 1`) {
		t.Errorf("metrics lack vmpersona_instances{sync=\"in_sync\"} 1")
	}
}
