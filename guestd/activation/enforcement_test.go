package activation

import (
	"errors"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/protocol"
)

// On a kernel without Landlock, a persona asking for kernel enforcement is
// refused with the reason; one that does not ask falls back to the routing
// table; "agent" never builds a domain.
func TestEnforcementWithoutLandlock(t *testing.T) {
	saved := landlockABI
	t.Cleanup(func() { landlockABI = saved })
	landlockABI = func() int { return 0 }
	table, err := routing.Build(routing.Spec{Restricted: []string{"rm"}})
	if err != nil {
		t.Fatal(err)
	}
	p := &protocol.Persona{Name: "p", RestrictedCommands: []string{"rm"}, Enforcement: protocol.EnforcementKernel}
	if _, err := buildDomain(p, table, nil); !errors.Is(err, ErrNoKernelEnforcement) {
		t.Fatalf("kernel enforcement without Landlock: %v", err)
	}
	for _, mode := range []string{"", protocol.EnforcementAgent} {
		p.Enforcement = mode
		if d, err := buildDomain(p, table, nil); d != nil || err != nil {
			t.Fatalf("%q without Landlock: %v %v", mode, d, err)
		}
	}
	p.Enforcement = "strict"
	if _, err := buildDomain(p, table, nil); !errors.Is(err, ErrInvalidPersona) {
		t.Fatalf("unknown enforcement: %v", err)
	}
}

func TestEnforcementWithLandlock(t *testing.T) {
	if landlockABI() == 0 {
		t.Skip("this kernel has no Landlock")
	}
	table, err := routing.Build(routing.Spec{Restricted: []string{"rm"}})
	if err != nil {
		t.Fatal(err)
	}
	p := &protocol.Persona{Name: "p", RestrictedCommands: []string{"rm"}}
	d, err := buildDomain(p, table, nil)
	if err != nil || d == nil || d.Rules == 0 {
		t.Fatalf("default enforcement on a Landlock kernel: %+v %v", d, err)
	}
	p.Enforcement = protocol.EnforcementAgent
	if d, err := buildDomain(p, table, nil); d != nil || err != nil {
		t.Fatalf("agent: %v %v", d, err)
	}
}
