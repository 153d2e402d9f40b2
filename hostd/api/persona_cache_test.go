package api

import (
	"bytes"
	"encoding/json"
	"testing"
)

// GET /personas/{name} answers from an encoded cache: every write shows in
// the next read, and the cached answer is the full persona.
func TestPersonaGetCacheFollowsWrites(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": "unix:" + t.TempDir() + "/none.sock"})
	get := func() (map[string]any, resp) {
		r := e.must(e.do("GET", "/personas/cached", tokViewer, nil), 200)
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		return r.json(t), r
	}
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "cached", "environment_variables": map[string]string{"V": "one"}}), 201)
	p1, r1 := get()
	_, r1b := get()
	if !bytes.Equal(r1.body, r1b.body) || r1.header.Get("ETag") != `"1"` {
		t.Fatalf("repeated reads differ or wrong ETag %q:\n%s\n%s", r1.header.Get("ETag"), r1.body, r1b.body)
	}
	if p1["revision"] != float64(1) || p1["environment_variables"].(map[string]any)["V"] != "one" {
		t.Fatalf("first read %v", p1)
	}
	for _, f := range []string{"command_overrides", "restricted_commands", "created_at", "updated_at"} {
		if _, ok := p1[f]; !ok {
			t.Errorf("cached answer lacks %s: %s", f, r1.body)
		}
	}

	e.must(e.do("PUT", "/personas/cached", tokAdmin, map[string]any{"name": "cached", "environment_variables": map[string]string{"V": "two"}}, "If-Match", `"1"`), 200)
	p2, r2 := get()
	if p2["revision"] != float64(2) || p2["environment_variables"].(map[string]any)["V"] != "two" || r2.header.Get("ETag") != `"2"` {
		t.Fatalf("read after update: ETag %q %v", r2.header.Get("ETag"), p2)
	}
	// A refused write changes nothing.
	e.must(e.do("PUT", "/personas/cached", tokAdmin, map[string]any{"name": "cached", "environment_variables": map[string]string{"V": "three"}}, "If-Match", `"1"`), 412)
	if _, r := get(); !bytes.Equal(r.body, r2.body) {
		t.Fatalf("a refused update changed the answer: %s", r.body)
	}

	// Deleted, then created again at revision 1 with other content.
	e.must(e.do("DELETE", "/personas/cached", tokAdmin, nil), 204)
	e.must(e.do("GET", "/personas/cached", tokViewer, nil), 404)
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "cached", "environment_variables": map[string]string{"V": "again"}}), 201)
	p3, r3 := get()
	if p3["revision"] != float64(1) || p3["environment_variables"].(map[string]any)["V"] != "again" || r3.header.Get("ETag") != `"1"` {
		t.Fatalf("read after re-create: %v", p3)
	}
	// The same document the list holds.
	list := e.must(e.do("GET", "/personas", tokViewer, nil), 200)
	var l struct{ Personas []json.RawMessage }
	json.Unmarshal(list.body, &l)
	if len(l.Personas) != 1 || !bytes.Equal(bytes.TrimSpace(r3.body), compact(t, l.Personas[0])) {
		t.Fatalf("GET answer %s differs from the listed %s", r3.body, l.Personas)
	}
}

func compact(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Each activation request is audited once, whether the guest activated
// (the request rides in the instance record's commit) or refused.
func TestActivationRequestAuditedEitherWay(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "ok"}), 201)
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "fails", "pre_activation_script": "#!/bin/sh\nexit 3\n"}), 201)
	e.must(e.do("POST", "/instances/vm1/personas/ok/activate", tokOperator, nil), 200)
	e.must(e.do("POST", "/instances/vm1/personas/fails/activate", tokOperator, nil), 409)
	e.must(e.do("POST", "/instances/vm1/deactivate", tokOperator, nil), 200)

	r := e.must(e.do("GET", "/audit?instance=vm1&limit=10000", tokAdmin, nil), 200)
	var out struct{ Events []map[string]any }
	json.Unmarshal(r.body, &out)
	count := map[string]int{}
	for _, ev := range out.Events {
		if ev["source"] == "host" {
			count[ev["type"].(string)+" "+str(ev["persona"])]++
		}
	}
	for k, want := range map[string]int{"activation_requested ok": 1, "activation_requested fails": 1, "deactivation_requested ": 1} {
		if count[k] != want {
			t.Errorf("%q audited %d times, want %d (all: %v)", k, count[k], want, count)
		}
	}
}

func str(v any) string {
	s, _ := v.(string)
	return s
}
