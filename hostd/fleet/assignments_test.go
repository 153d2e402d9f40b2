package fleet

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/hostd/assignment"
)

func webAssignment(persona string, priority int) map[string]any {
	return map[string]any{"persona": persona, "priority": priority, "selector": map[string]any{"instance_labels": map[string]string{"role": "web"}}}
}

// An assignment written through one host is in etcd and in every host's
// copy; writes compare revisions, a retry with the same Idempotency-Key
// writes once, bad input names the field.
func TestAssignmentsAreSharedThroughEtcd(t *testing.T) {
	t.Parallel()
	a, b := twoHostds(t)
	if r := a.do("POST", "/personas", persona("hardened", false)); r.status != http.StatusCreated {
		t.Fatalf("create persona: %d %v", r.status, r.body)
	}
	if r := a.do("POST", "/personas", persona("staging", false)); r.status != http.StatusCreated {
		t.Fatalf("create persona: %d %v", r.status, r.body)
	}

	r := a.do("PUT", "/assignments/web", webAssignment("hardened", 10), "Idempotency-Key", "req-1")
	if r.status != http.StatusCreated || r.header.Get("ETag") != `"1"` || r.body["revision"] != 1.0 {
		t.Fatalf("first PUT: %d %v %v", r.status, r.header.Get("ETag"), r.body)
	}
	// A retry of the same request (its answer lost) writes nothing more.
	r = a.do("PUT", "/assignments/web", webAssignment("hardened", 10), "Idempotency-Key", "req-1")
	if r.status != http.StatusCreated || r.body["revision"] != 1.0 {
		t.Fatalf("retried PUT: %d %v", r.status, r.body)
	}
	// Host B has it in its copy (the write answered once A's copy had it;
	// B follows the watch).
	waitFor(t, "host b's copy of the assignment", func() bool {
		got, err := b.st.GetAssignment("web")
		return err == nil && got.Persona == "hardened" && got.Revision == 1
	})
	if r := b.do("GET", "/assignments/web", nil); r.status != http.StatusOK || r.header.Get("ETag") != `"1"` {
		t.Fatalf("GET on b: %d %v", r.status, r.body)
	}

	// If-Match: a stale revision is refused on the other host.
	if r := b.do("PUT", "/assignments/web", webAssignment("staging", 10), "If-Match", `"7"`); r.status != http.StatusPreconditionFailed || r.body["field"] != "If-Match" {
		t.Fatalf("stale If-Match: %d %v", r.status, r.body)
	}
	r = b.do("PUT", "/assignments/web", webAssignment("staging", 20), "If-Match", `"1"`)
	if r.status != http.StatusOK || r.body["revision"] != 2.0 || r.body["persona"] != "staging" {
		t.Fatalf("PUT If-Match 1 on b: %d %v", r.status, r.body)
	}
	waitFor(t, "host a's copy of revision 2", func() bool {
		got, err := a.st.GetAssignment("web")
		return err == nil && got.Revision == 2 && got.Priority == 20
	})

	// Bad input: 4xx naming the field, nothing written.
	for _, tc := range []struct {
		body  map[string]any
		field string
	}{
		{map[string]any{"persona": "hardened", "selector": map[string]any{}}, "selector"},
		{map[string]any{"persona": "nope", "selector": map[string]any{"hosts": []string{"a"}}}, "persona"},
		{map[string]any{"persona": "hardened", "selector": map[string]any{"uuids": []string{"not-a-uuid"}}}, "selector.uuids[0]"},
		{map[string]any{"persona": "hardened", "selector": map[string]any{"instance_labels": map[string]string{"bad key": "x"}}}, "selector.instance_labels.bad key"},
		{map[string]any{"persona": "hardened", "priority": 1 << 40, "selector": map[string]any{"hosts": []string{"a"}}}, "priority"},
		{map[string]any{"name": "other", "persona": "hardened", "selector": map[string]any{"hosts": []string{"a"}}}, "name"},
	} {
		r := a.do("PUT", "/assignments/bad", tc.body)
		if r.status < 400 || r.status >= 500 || r.body["field"] != tc.field {
			t.Errorf("PUT %v: %d field %v (want 4xx naming %q): %v", tc.body, r.status, r.body["field"], tc.field, r.body["detail"])
		}
	}
	if r := a.do("GET", "/assignments/bad", nil); r.status != http.StatusNotFound {
		t.Fatalf("a refused assignment was stored: %d %v", r.status, r.body)
	}

	// A persona created through a is checked in etcd, not in b's copy: an
	// assignment naming it is accepted through b at once.
	for i := range 5 {
		name := fmt.Sprintf("fresh%d", i)
		if r := a.do("POST", "/personas", persona(name, false)); r.status != http.StatusCreated {
			t.Fatalf("create %s: %d %v", name, r.status, r.body)
		}
		if r := b.do("PUT", "/assignments/"+name, webAssignment(name, 1)); r.status != http.StatusCreated {
			t.Fatalf("assignment through b right after the persona's create through a: %d %v", r.status, r.body)
		}
		if r := b.do("DELETE", "/assignments/"+name, nil); r.status != http.StatusNoContent {
			t.Fatalf("delete %s: %d %v", name, r.status, r.body)
		}
	}

	// Delete on a: gone from b's copy.
	if r := a.do("DELETE", "/assignments/web", nil, "If-Match", `"1"`); r.status != http.StatusPreconditionFailed {
		t.Fatalf("DELETE with a stale If-Match: %d %v", r.status, r.body)
	}
	if r := a.do("DELETE", "/assignments/web", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %v", r.status, r.body)
	}
	waitFor(t, "the delete in host b's copy", func() bool {
		list, err := b.st.ListAssignments()
		return err == nil && len(list) == 0
	})
	if r := a.do("DELETE", "/assignments/web", nil); r.status != http.StatusNotFound {
		t.Fatalf("DELETE of a missing assignment: %d %v", r.status, r.body)
	}
}

// A host that was down while assignments changed and the history was
// compacted reads everything again: a deleted assignment leaves its copy.
func TestFullReReadReplacesTheAssignmentsCopy(t *testing.T) {
	t.Parallel()
	a, b := twoHosts(t)
	if _, err := a.b.CreatePersona(persona("hardened", false)); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"one", "two"} {
		asg := testAssignment(n, "hardened")
		if _, _, err := a.b.PutAssignment(asg, 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both assignments on b", func() bool { l, _ := b.st.ListAssignments(); return len(l) == 2 })
	b.close()
	if err := a.b.DeleteAssignment("one", 0); err != nil {
		t.Fatal(err)
	}
	compact(t, a)
	b.open()
	waitFor(t, "b's copy without the deleted assignment", func() bool {
		l, _ := b.st.ListAssignments()
		return len(l) == 1 && l[0].Name == "two"
	})
}

func testAssignment(name, persona string) assignment.Assignment {
	return assignment.Assignment{Name: name, Persona: persona, Selector: assignment.Selector{InstanceLabels: map[string]string{"role": name}}}
}

// compact compacts etcd's history up to now, physically.
func compact(t *testing.T, h *host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := h.b.Client().Get(ctx, "compact-marker")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.b.Client().Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
}
