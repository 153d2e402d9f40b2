package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestUpdateWhileActiveIsDrifted: a persona updated while active is not
// re-applied by itself; the instance says drifted, active_persona says
// stale, and a rollout enforces the update.
func TestUpdateWhileActiveIsDrifted(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "p", "restricted_commands": []string{"rm"}}), 201)
	e.must(e.do("POST", "/instances/vm1/personas/p/activate", tokOperator, nil), 200)
	if ap := e.must(e.do("GET", "/instances/vm1/active_persona", tokViewer, nil), 200).json(t); ap["stale"] != false {
		t.Fatalf("active persona right after activation: %v", ap)
	}
	e.must(e.do("PUT", "/personas/p", tokAdmin, map[string]any{"name": "p", "restricted_commands": []string{"rm", "cat"}}), 200)

	ap := e.must(e.do("GET", "/instances/vm1/active_persona", tokViewer, nil), 200).json(t)
	if ap["stale"] != true || ap["revision"] != float64(1) {
		t.Errorf("active persona after an update: %v, want revision 1, stale", ap)
	}
	inst := e.must(e.do("GET", "/instances/vm1", tokViewer, nil), 200).json(t)
	desired, _ := inst["desired"].(map[string]any)
	active, _ := inst["active"].(map[string]any)
	if inst["sync"] != "drifted" || desired["persona"] != "p" || desired["revision"] != float64(1) ||
		active["persona"] != "p" || active["revision"] != float64(1) || inst["latest_revision"] != float64(2) {
		t.Errorf("instance after an update: %v", inst)
	}
	list := e.must(e.do("GET", "/instances", tokViewer, nil), 200).json(t)
	if is, _ := list["instances"].([]any); len(is) != 1 || is[0].(map[string]any)["sync"] != "drifted" {
		t.Errorf("instances: %v", list)
	}
	metrics := string(e.must(e.do("GET", "/metrics", "", nil), 200).body)
	for _, want := range []string{`vmpersona_instances{sync="drifted"} 1`, `vmpersona_instances{sync="in_sync"} 0`,
		`vmpersona_instance_info{instance="vm1",persona="p",revision="1",sync="drifted"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	e.must(e.do("POST", "/instances/vm1/exec", tokOperator, map[string]any{"command": "cat", "args": []string{"/dev/null"}}), 200)

	// The rollout, streamed: one line per instance, then the summary.
	r := e.must(e.do("POST", "/personas/p/rollout?stream=true", tokOperator, map[string]any{"max_parallel": 2}), 200)
	if ct := r.header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("stream content type %q", ct)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 || lines[0]["kind"] != "result" || lines[0]["instance"] != "vm1" || lines[0]["result"] != "activated" ||
		lines[1]["kind"] != "summary" {
		t.Fatalf("rollout stream: %s", r.body)
	}
	if sum := lines[1]["summary"].(map[string]any); sum["activated"] != float64(1) || sum["revision"] != float64(2) || sum["total"] != float64(1) {
		t.Errorf("summary: %v", sum)
	}
	e.must(e.do("POST", "/instances/vm1/exec", tokOperator, map[string]any{"command": "cat", "args": []string{"/dev/null"}}), 403)
	if ap := e.must(e.do("GET", "/instances/vm1/active_persona", tokViewer, nil), 200).json(t); ap["stale"] != false || ap["revision"] != float64(2) {
		t.Errorf("active persona after the rollout: %v", ap)
	}
	audit := e.must(e.do("GET", "/audit?type=rollout_finished", tokAdmin, nil), 200).json(t)
	if evs, _ := audit["events"].([]any); len(evs) != 1 {
		t.Errorf("rollout_finished events: %v", audit)
	}
}

// TestRolloutRequestErrors: bad rollout requests are 4xx naming the field.
func TestRolloutRequestErrors(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "p"}), 201)
	for _, c := range []struct {
		body   any
		status int
		field  string
	}{
		{map[string]any{"max_parallel": -1}, 422, "max_parallel"},
		{map[string]any{"max_parallel": 100000}, 422, "max_parallel"},
		{map[string]any{"max_failures": -2}, 422, "max_failures"},
		{map[string]any{"instances": []string{"nope"}}, 422, "instances"},
		{map[string]any{"max_parallel": "x"}, 400, "max_parallel"},
		{map[string]any{"bogus": 1}, 400, "bogus"},
	} {
		p := e.must(e.do("POST", "/personas/p/rollout", tokOperator, c.body), c.status).json(t)
		if p["field"] != c.field {
			t.Errorf("%v: field %v, want %s", c.body, p["field"], c.field)
		}
	}
	e.must(e.do("POST", "/personas/nope/rollout", tokOperator, nil), 404)
	e.must(e.do("POST", "/personas/p/rollout", tokViewer, nil), 403)
	// Nothing desires p: an empty rollout.
	ans := e.must(e.do("POST", "/personas/p/rollout", tokOperator, nil), 200).json(t)
	if sum := ans["summary"].(map[string]any); sum["total"] != float64(0) {
		t.Errorf("empty rollout: %v", ans)
	}
}

// TestAutoRollout: a persona with "rollout": "auto" reaches the instances
// desiring it as soon as it is updated; a bad rollout value is refused.
func TestAutoRollout(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "p", "rollout": "auto"}), 201)
	e.must(e.do("POST", "/instances/vm1/personas/p/activate", tokOperator, nil), 200)
	p := e.must(e.do("PUT", "/personas/p", tokAdmin, map[string]any{"name": "p", "rollout": "sometimes"}), 422).json(t)
	if p["field"] != "rollout" {
		t.Errorf("bad rollout value: %v", p)
	}
	e.must(e.do("PUT", "/personas/p", tokAdmin, map[string]any{"name": "p", "rollout": "auto", "restricted_commands": []string{"cat"}}), 200)
	deadline := time.Now().Add(30 * time.Second)
	for {
		inst := e.must(e.do("GET", "/instances/vm1", tokViewer, nil), 200).json(t)
		if active, _ := inst["active"].(map[string]any); inst["sync"] == "in_sync" && active["revision"] == float64(2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the update never rolled out: %v", inst)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.must(e.do("POST", "/instances/vm1/exec", tokOperator, map[string]any{"command": "cat", "args": []string{"/dev/null"}}), 403)
}
