package api

import (
	"net/http"
	"testing"
)

// On one host the assignments live in its Badger store; the routes answer
// as in fleet mode (revisions, If-Match, Idempotency-Key, roles).
func TestAssignmentRoutesOnOneHost(t *testing.T) {
	e := newEnv(t, nil)
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "hardened"}), http.StatusCreated)
	body := map[string]any{"persona": "hardened", "priority": 5, "selector": map[string]any{"instances": []string{"vm2", "vm1"}}}

	e.must(e.do("PUT", "/assignments/pin", tokOperator, body), http.StatusForbidden)
	r := e.must(e.do("PUT", "/assignments/pin", tokAdmin, body, "Idempotency-Key", "k1"), http.StatusCreated)
	if r.header.Get("Location") != "/assignments/pin" || r.header.Get("ETag") != `"1"` {
		t.Fatalf("created: headers %v", r.header)
	}
	got := r.json(t)
	if sel := got["selector"].(map[string]any)["instances"].([]any); len(sel) != 2 || sel[0] != "vm1" {
		t.Fatalf("selector not normalised (sorted): %v", got)
	}
	// The same request again: the first answer, no second revision.
	r = e.must(e.do("PUT", "/assignments/pin", tokAdmin, body, "Idempotency-Key", "k1"), http.StatusCreated)
	if r.json(t)["revision"] != 1.0 {
		t.Fatalf("a retried request wrote again: %s", r.body)
	}
	body["priority"] = 7
	e.must(e.do("PUT", "/assignments/pin", tokAdmin, body, "If-Match", `"2"`), http.StatusPreconditionFailed)
	r = e.must(e.do("PUT", "/assignments/pin", tokAdmin, body, "If-Match", `"1"`), http.StatusOK)
	if m := r.json(t); m["revision"] != 2.0 || m["priority"] != 7.0 {
		t.Fatalf("update: %v", m)
	}
	r = e.must(e.do("GET", "/assignments", tokViewer, nil), http.StatusOK)
	if list := r.json(t)["assignments"].([]any); len(list) != 1 {
		t.Fatalf("list: %s", r.body)
	}
	e.must(e.do("GET", "/assignments/pin", tokViewer, nil), http.StatusOK)
	e.must(e.do("DELETE", "/assignments/pin", tokOperator, nil), http.StatusForbidden)
	e.must(e.do("DELETE", "/assignments/pin", tokAdmin, nil), http.StatusNoContent)
	e.must(e.do("GET", "/assignments/pin", tokViewer, nil), http.StatusNotFound)
	// Every write answered is audited, the retried one too.
	for typ, n := range map[string]int{"assignment_set": 3, "assignment_deleted": 1} {
		r := e.must(e.do("GET", "/audit?type="+typ, tokAdmin, nil), http.StatusOK)
		if evs := r.json(t)["events"].([]any); len(evs) != n {
			t.Errorf("%d %s events, want %d: %s", len(evs), typ, n, r.body)
		}
	}

	// Bad input names the field.
	for field, b := range map[string]any{
		"selector":          map[string]any{"persona": "hardened"},
		"persona":           map[string]any{"persona": "missing", "selector": map[string]any{"hosts": []string{"h"}}},
		"selector.hosts[0]": map[string]any{"persona": "hardened", "selector": map[string]any{"hosts": []string{"a/b"}}},
	} {
		r := e.do("PUT", "/assignments/bad", tokAdmin, b)
		if r.status < 400 || r.status >= 500 || r.json(t)["field"] != field {
			t.Errorf("%v: %d %s (want 4xx naming %s)", b, r.status, r.body, field)
		}
	}
	r = e.do("PUT", "/assignments/Bad_Name", tokAdmin, body)
	if r.status != http.StatusBadRequest && r.status != http.StatusUnprocessableEntity {
		t.Errorf("bad name: %d %s", r.status, r.body)
	}
}

// A static instance's labels come from its flag: the label route says so;
// bad labels name the field.
func TestInstanceLabelsRoute(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": "unix:/nonexistent/vm1"})
	r := e.do("PUT", "/instances/vm1/labels", tokAdmin, map[string]any{"labels": map[string]string{"bad key": "x"}})
	if r.status != http.StatusBadRequest && r.status != http.StatusUnprocessableEntity || r.json(t)["field"] != "labels.bad key" {
		t.Fatalf("bad label: %d %s", r.status, r.body)
	}
	e.must(e.do("PUT", "/instances/vm1/labels", tokAdmin, map[string]any{"labels": map[string]string{"role": "web"}}), http.StatusConflict)
	e.must(e.do("PUT", "/instances/vm1/labels", tokOperator, map[string]any{"labels": map[string]string{"role": "web"}}), http.StatusForbidden)
	e.must(e.do("PUT", "/instances/nope/labels", tokAdmin, map[string]any{"labels": map[string]string{"role": "web"}}), http.StatusNotFound)
}
