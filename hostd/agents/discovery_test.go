package agents

import (
	"reflect"
	"testing"
)

func TestSnapshots(t *testing.T) {
	s := NewSnapshots("libvirt")
	const uuid = "6695EB01-F6A4-8304-79AA-97F2502E193F"
	s.Set(Discovered{Name: "b", UUID: uuid, State: InstanceRunning})
	s.Set(Discovered{Name: "a", State: InstanceShutoff, Source: "ignored"})

	for _, id := range []string{"b", uuid, "6695eb01f6a4830479aa97f2502e193f"} {
		d, ok := s.Lookup(id)
		if !ok || d.Name != "b" || d.Source != "libvirt" || d.UpdatedAt.IsZero() {
			t.Errorf("Lookup(%q) = %+v, %v; want b from libvirt with a time", id, d, ok)
		}
		if n, ok := s.Resolve(id); !ok || n != "b" {
			t.Errorf("Resolve(%q) = %q, %v", id, n, ok)
		}
	}
	if _, ok := s.Lookup(""); ok {
		t.Error("Lookup(\"\") found something (an instance without a UUID)")
	}
	if got := s.List(); len(got) != 2 || got[0].Name != "a" || got[1].Name != "b" || got[0].Source != "libvirt" {
		t.Errorf("List = %+v, want a, b", got)
	}

	// Update changes fields in place and returns the snapshot before.
	prev := s.Update("b", func(d *Discovered) { d.State, d.Endpoint = InstancePaused, "unix:/x" })
	if prev.State != InstanceRunning {
		t.Errorf("Update returned %+v, want the running snapshot", prev)
	}
	if d, _ := s.Lookup(uuid); d.State != InstancePaused || d.Endpoint != "unix:/x" || d.UUID != uuid {
		t.Errorf("after Update: %+v", d)
	}

	// A new UUID under the same name drops the old one; Delete drops both.
	s.Set(Discovered{Name: "b", UUID: "11111111-2222-3333-4444-555555555555"})
	if _, ok := s.Resolve(uuid); ok {
		t.Error("the old UUID still resolves after the domain got a new one")
	}
	if d, ok := s.Delete("b"); !ok || d.Name != "b" {
		t.Errorf("Delete = %+v, %v", d, ok)
	}
	if _, ok := s.Resolve("11111111222233334444555555555555"); ok {
		t.Error("a deleted instance's UUID still resolves")
	}
	if got := s.Names(); !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("Names = %v, want [a]", got)
	}
}
