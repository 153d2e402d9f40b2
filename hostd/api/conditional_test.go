package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// withValue returns a copy of the persona with one field changed.
func withValue(p map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	for key, val := range p {
		out[key] = val
	}
	out[k] = v
	return out
}

// TestIfMatchRFC9110: If-Match compares strongly against the revision,
// accepts lists and *, and a well-formed tag that does not match is 412
// (a malformed header alone is 400).
func TestIfMatchRFC9110(t *testing.T) {
	e := newEnv(t, nil)
	e.must(e.do("POST", "/personas", tokAdmin, hardened), 201)
	e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened), 200) // revision 2
	cases := []struct {
		ifMatch string
		status  int
	}{
		{`"abc"`, 412},
		{`"1"`, 412},
		{`W/"2"`, 412}, // weak tags never match If-Match
		{`"7", W/"2"`, 412},
		{`abc`, 400},
		{`"2`, 400},
		{`"1", "2"`, 200}, // now at 3
		{`*`, 200},        // now at 4
		{`"4"`, 200},      // now at 5
	}
	for _, c := range cases {
		r := e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened, "If-Match", c.ifMatch), c.status)
		if c.status == 412 && !strings.Contains(r.json(t)["detail"].(string), `"2"`) {
			t.Errorf("If-Match %s: 412 does not say the current tag: %s", c.ifMatch, r.body)
		}
		if c.status == 400 && r.json(t)["field"] != "If-Match" {
			t.Errorf("If-Match %s: 400 does not name the header: %s", c.ifMatch, r.body)
		}
	}
	if r := e.must(e.do("GET", "/personas/hardened", tokAdmin, nil), 200); r.header.Get("ETag") != `"5"` {
		t.Fatalf("ETag after the updates = %s, want \"5\"", r.header.Get("ETag"))
	}
	// DELETE compares the same way.
	e.must(e.do("DELETE", "/personas/hardened", tokAdmin, nil, "If-Match", `W/"5"`), 412)
	e.must(e.do("DELETE", "/personas/hardened", tokAdmin, nil, "If-Match", `"4", "5"`), 204)
	// A persona that does not exist is 404 whatever the condition.
	e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened, "If-Match", `"1"`), 404)
}

// TestIfNoneMatch: 304 on GET when the tag matches (weak comparison), and
// PUT with If-None-Match: * creates a persona only when it is missing.
func TestIfNoneMatch(t *testing.T) {
	e := newEnv(t, nil)
	r := e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened, "If-None-Match", "*"), 201)
	if r.header.Get("Location") != "/personas/hardened" || r.header.Get("ETag") != `"1"` {
		t.Fatalf("create by PUT: Location %q ETag %q", r.header.Get("Location"), r.header.Get("ETag"))
	}
	e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened, "If-None-Match", "*"), 412)
	e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened, "If-None-Match", `W/"1"`), 412)
	// Without If-None-Match: * a missing persona is still 404.
	e.must(e.do("PUT", "/personas/other", tokAdmin, withValue(hardened, "name", "other")), 404)

	for _, inm := range []string{`"1"`, `W/"1"`, `"9", "1"`, `*`} {
		r := e.do("GET", "/personas/hardened", tokViewer, nil, "If-None-Match", inm)
		if r.status != http.StatusNotModified || len(r.body) != 0 || r.header.Get("ETag") != `"1"` {
			t.Errorf("If-None-Match %s: %d ETag %q body %q, want 304 with the ETag and no body", inm, r.status, r.header.Get("ETag"), r.body)
		}
	}
	if r := e.do("GET", "/personas/hardened", tokViewer, nil, "If-None-Match", `"2"`); r.status != 200 || len(r.body) == 0 {
		t.Errorf("If-None-Match of another revision: %d %s", r.status, r.body)
	}
	e.must(e.do("GET", "/personas/hardened", tokViewer, nil, "If-None-Match", `nope`), 400)
}

// TestHeadEverywhereGetIs: every GET route answers HEAD with GET's status
// and headers and no body.
func TestHeadEverywhereGetIs(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, hardened), 201)
	e.must(e.do("PUT", "/assignments/pin", tokAdmin, map[string]any{"persona": "hardened", "selector": map[string]any{"instances": []string{"vm1"}}}), 201)
	paths := map[string]string{"/personas/:name": "/personas/hardened", "/assignments/:name": "/assignments/pin", "/fleet/rollouts/:persona": "/fleet/rollouts/hardened", "/instances/:id": "/instances/vm1",
		"/instances/:id/active_persona": "/instances/vm1/active_persona", "/instances/:id/files": "/instances/vm1/files?path=/etc/passwd"}
	n := 0
	for _, rt := range e.api.routes {
		if rt.method != "GET" {
			continue
		}
		p := rt.path
		if v, ok := paths[p]; ok {
			p = v
		}
		if strings.Contains(p, ":") {
			t.Errorf("no concrete path for %s", p)
			continue
		}
		get := e.do("GET", p, tokAdmin, nil)
		head := e.do("HEAD", p, tokAdmin, nil)
		if head.status != get.status || len(head.body) != 0 || head.header.Get("Content-Type") != get.header.Get("Content-Type") ||
			head.header.Get("ETag") != get.header.Get("ETag") {
			t.Errorf("HEAD %s: %d %q body %d bytes; GET: %d %q", p, head.status, head.header.Get("Content-Type"), len(head.body), get.status, get.header.Get("Content-Type"))
		}
		n++
	}
	if n < 8 {
		t.Fatalf("only %d GET routes checked", n)
	}
}

// TestUnauthorizedNamesTheScheme: a 401 carries WWW-Authenticate: Bearer
// (RFC 6750), with error="invalid_token" when a token was refused.
func TestUnauthorizedNamesTheScheme(t *testing.T) {
	e := newEnv(t, nil)
	r := e.must(e.do("GET", "/personas", "", nil), 401)
	if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer ") || strings.Contains(got, "error=") {
		t.Errorf("no token: WWW-Authenticate %q", got)
	}
	r = e.must(e.do("GET", "/personas", "wrong", nil), 401)
	if got := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer ") || !strings.Contains(got, `error="invalid_token"`) {
		t.Errorf("bad token: WWW-Authenticate %q", got)
	}
	if r := e.must(e.do("GET", "/audit", tokViewer, nil), 403); r.header.Get("WWW-Authenticate") != "" {
		t.Errorf("403 carries WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
	}
}

// TestListPaging: /personas and /instances page by name with a next that
// ends; /audit's next ends too.
func TestListPaging(t *testing.T) {
	e := newEnv(t, map[string]string{"a": "unix:/nonexistent/a", "b": "unix:/nonexistent/b", "c": "unix:/nonexistent/c"})
	for i := range 5 {
		e.must(e.do("POST", "/personas", tokAdmin, withValue(hardened, "name", fmt.Sprintf("p%d", i))), 201)
	}
	walk := func(path, key, id string) []string {
		var names []string
		after := ""
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatalf("%s: next never ends", path)
			}
			q := path + "?limit=2"
			if after != "" {
				q += "&after=" + after
			}
			m := e.must(e.do("GET", q, tokAdmin, nil), 200).json(t)
			items := m[key].([]any)
			if len(items) > 2 {
				t.Fatalf("%s: %d items, limit 2", q, len(items))
			}
			for _, it := range items {
				names = append(names, it.(map[string]any)[id].(string))
			}
			next, ok := m["next"].(string)
			if !ok {
				return names
			}
			after = next
		}
	}
	if got := strings.Join(walk("/personas", "personas", "name"), ","); got != "p0,p1,p2,p3,p4" {
		t.Errorf("personas paged: %s", got)
	}
	if got := strings.Join(walk("/instances", "instances", "id"), ","); got != "a,b,c" {
		t.Errorf("instances paged: %s", got)
	}
	if m := e.must(e.do("GET", "/personas", tokAdmin, nil), 200).json(t); len(m["personas"].([]any)) != 5 || m["next"] != nil {
		t.Errorf("one full page: %v", m)
	}
	e.must(e.do("GET", "/personas?limit=0", tokAdmin, nil), 400)
	e.must(e.do("GET", "/instances?limit=1001", tokAdmin, nil), 400)

	// /audit: five creations; pages of 2 end after the third.
	pages := 0
	for after := ""; ; pages++ {
		if pages > 10 {
			t.Fatal("/audit: next never ends")
		}
		m := e.must(e.do("GET", "/audit?type=persona_created&limit=2&after="+after, tokAdmin, nil), 200).json(t)
		next, ok := m["next"].(string)
		if !ok {
			break
		}
		after = next
	}
	if pages != 2 {
		t.Errorf("/audit: %d pages with a next, want 2 (2+2+1 events)", pages)
	}
}

// TestActivateSamePersonaIsUnchanged: activating the persona the instance
// already holds at its revision runs nothing and answers unchanged; force
// activates again; a new revision activates.
func TestActivateSamePersonaIsUnchanged(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, hardened), 201)
	first := e.must(e.do("POST", "/instances/vm1/personas/hardened/activate", tokOperator, nil), 200).json(t)
	if first["result"] != "activated" {
		t.Fatalf("first activation: %v", first)
	}
	again := e.must(e.do("POST", "/instances/vm1/personas/hardened/activate", tokOperator, nil), 200).json(t)
	if again["result"] != "unchanged" || again["activation_id"] != first["activation_id"] {
		t.Fatalf("second activation: %v, want unchanged with activation %v", again, first["activation_id"])
	}
	forced := e.must(e.do("POST", "/instances/vm1/personas/hardened/activate?force=true", tokOperator, nil), 200).json(t)
	if forced["result"] != "activated" || forced["activation_id"] == first["activation_id"] {
		t.Fatalf("forced activation: %v", forced)
	}
	e.must(e.do("PUT", "/personas/hardened", tokAdmin, hardened), 200)
	next := e.must(e.do("POST", "/instances/vm1/personas/hardened/activate", tokOperator, nil), 200).json(t)
	if next["result"] != "activated" || next["revision"] != float64(2) {
		t.Fatalf("activation of revision 2: %v", next)
	}
	e.must(e.do("GET", "/instances/vm1/personas/hardened/activate?force=maybe", tokOperator, nil), 405)
	e.must(e.do("POST", "/instances/vm1/personas/hardened/activate?force=maybe", tokOperator, nil), 400)
}
