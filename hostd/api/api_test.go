package api

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

var hardened = map[string]any{
	"name":                   "hardened",
	"environment_variables":  map[string]string{"APP_ENV": "staging"},
	"pre_activation_script":  "#!/bin/sh\necho preparing",
	"post_activation_script": "#!/bin/sh\ntest -n \"$APP_ENV\"",
	"command_overrides":      map[string]string{"deploy": "#!/bin/sh\necho dry-run: \"$@\""},
	"restricted_commands":    []string{"rm", "shutdown"},
	"default_persona":        false,
}

func execBody(cmd string, args ...string) map[string]any {
	return map[string]any{"command": cmd, "args": args}
}

// waitAudit polls the audit log until an event of each type is present.
func (e *env) waitAudit(query string, types ...string) []map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.must(e.do("GET", "/audit?limit=10000"+query, tokAdmin, nil), 200)
		var out struct{ Events []map[string]any }
		json.Unmarshal(r.body, &out)
		seen := map[string]bool{}
		for _, ev := range out.Events {
			ty, _ := ev["type"].(string)
			if !slices.Contains(protocol.AuditTypes, ty) {
				e.t.Fatalf("audit event of type %q, which protocol.AuditTypes does not list: %v", ty, ev)
			}
			seen[ty] = true
		}
		missing := ""
		for _, ty := range types {
			if !seen[ty] {
				missing = ty
			}
		}
		if missing == "" {
			return out.Events
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("audit log never showed a %q event: %s", missing, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSeedScenario walks the product's main flow through HTTP against a real
// guest daemon.
func TestSeedScenario(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")

	r := e.must(e.do("POST", "/personas", tokAdmin, hardened), 201)
	if loc := r.header.Get("Location"); loc != "/personas/hardened" {
		t.Fatalf("Location %q", loc)
	}
	if et := r.header.Get("ETag"); et != `"1"` {
		t.Fatalf("ETag %q, want \"1\"", et)
	}
	staging := map[string]any{"name": "staging", "environment_variables": map[string]string{"APP_ENV": "staging", "REPLICAS": "1"}}
	e.must(e.do("POST", "/personas", tokAdmin, staging), 201)
	list := e.must(e.do("GET", "/personas", tokViewer, nil), 200).json(t)
	if n := len(list["personas"].([]any)); n != 2 {
		t.Fatalf("listed %d personas, want 2", n)
	}

	act := e.must(e.do("POST", "/instances/vm1/personas/hardened/activate", tokOperator, nil), 200).json(t)
	if act["result"] != "activated" || act["persona"] != "hardened" {
		t.Fatalf("activation answer %v", act)
	}
	ap := e.must(e.do("GET", "/instances/vm1/active_persona", tokViewer, nil), 200).json(t)
	if p, _ := ap["persona"].(map[string]any); p == nil || p["name"] != "hardened" || ap["stale"] != false {
		t.Fatalf("active persona %v", ap)
	}

	// Restricted, by name and by path: refused before anything runs.
	for _, cmd := range []string{"rm", "/bin/rm", "/usr/bin/rm"} {
		d := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody(cmd, "-rf", "/tmp/nothing")), 403).json(t)
		if d["detail"] != protocol.DeniedMessage {
			t.Fatalf("denied %s: detail %q", cmd, d["detail"])
		}
	}
	// Overridden.
	ov := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("deploy", "v1", "now")), 200).json(t)
	if ov["route"] != "override" || ov["stdout"] != "dry-run: v1 now\n" {
		t.Fatalf("override answer %v", ov)
	}
	// Default route, with the persona's environment.
	def := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("printenv", "APP_ENV")), 200).json(t)
	if def["route"] != "default" || def["stdout"] != "staging\n" || def["persona"] != "hardened" {
		t.Fatalf("default answer %v", def)
	}
	// A command that ran and failed is a 200 with its exit code.
	fail := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("sh", "-c", "echo oops >&2; exit 3")), 200).json(t)
	if fail["exit_code"] != float64(3) || fail["stderr"] != "oops\n" {
		t.Fatalf("failing command %v", fail)
	}
	// One that cannot start is a 422 naming it.
	nf := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("no-such-command-xyz")), 422).json(t)
	if !strings.Contains(nf["detail"].(string), "no-such-command-xyz") {
		t.Fatalf("not found detail %v", nf)
	}

	e.must(e.do("POST", "/instances/vm1/personas/staging/activate", tokOperator, nil), 200)
	rm := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("sh", "-c", "echo $REPLICAS; command -v rm >/dev/null && echo rm-allowed")), 200).json(t)
	if rm["stdout"] != "1\nrm-allowed\n" {
		t.Fatalf("after switching to staging: %v", rm)
	}
	d := e.must(e.do("POST", "/instances/vm1/deactivate", tokOperator, nil), 200).json(t)
	if d["result"] != "deactivated" {
		t.Fatalf("deactivate %v", d)
	}
	none := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("printenv", "APP_ENV")), 200).json(t)
	if none["exit_code"] != float64(1) || none["persona"] != nil {
		t.Fatalf("after deactivation APP_ENV still set: %v", none)
	}
	ap = e.must(e.do("GET", "/instances/vm1/active_persona", tokViewer, nil), 200).json(t)
	if ap["persona"] != nil {
		t.Fatalf("active persona after deactivation %v", ap)
	}

	evs := e.waitAudit("&instance=vm1", "activation_requested", "activation", "denial", "override", "deactivation")
	for _, ev := range evs {
		if ev["type"] == "denial" && ev["persona"] != "hardened" {
			t.Fatalf("denial event without persona: %v", ev)
		}
	}
	e.waitAudit("&type=persona_created", "persona_created")

	m := string(e.must(e.do("GET", "/metrics", "", nil), 200).body)
	for _, want := range []string{
		`vmpersona_activations_total{persona="hardened",result="activated"} 1`,
		`vmpersona_commands_total{route="denied"} 3`,
		`vmpersona_commands_total{route="override"} 1`,
		`vmpersona_agents_connected 1`,
		`vmpersona_activation_duration_seconds_count 2`,
		`vmpersona_deactivations_total{persona="staging",result="deactivated"} 1`,
		`vmpersona_deactivation_duration_seconds_count 1`,
		`vmpersona_agent_connected{instance="vm1"} 1`,
		`vmpersona_build_info{goversion="go`,
		`vmpersona_audit_events_total{type="persona_created"} 2`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// A deactivation is not an activation.
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "vmpersona_activations_total{") && strings.Contains(l, `result="deactivated"`) {
			t.Errorf("a deactivation is counted as an activation: %s", l)
		}
	}
}

func TestExecStream(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	r := e.must(e.do("POST", "/instances/vm1/exec?stream=true", tokOperator,
		execBody("sh", "-c", "echo one; echo two >&2; echo three; exit 4")), 200)
	if ct := r.header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("Content-Type %q", ct)
	}
	var out, errOut strings.Builder
	var last map[string]any
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("bad NDJSON line %q", sc.Text())
		}
		switch line["stream"] {
		case "stdout":
			out.WriteString(line["data"].(string))
		case "stderr":
			errOut.WriteString(line["data"].(string))
		}
		last = line
	}
	if out.String() != "one\nthree\n" || errOut.String() != "two\n" {
		t.Fatalf("streamed stdout %q stderr %q", out.String(), errOut.String())
	}
	if last["stream"] != "exit" || last["exit_code"] != float64(4) {
		t.Fatalf("last line %v", last)
	}
	// A denied command is an ordinary problem document, even when streaming.
	e.must(e.do("POST", "/personas", tokAdmin, hardened), 201)
	e.must(e.do("POST", "/instances/vm1/personas/hardened/activate", tokOperator, nil), 200)
	e.must(e.do("POST", "/instances/vm1/exec?stream=true", tokOperator, execBody("rm")), 403)
}

func TestActivationRefused(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "good", "environment_variables": map[string]string{"MODE": "good"}}), 201)
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "badpre", "pre_activation_script": "#!/bin/sh\necho no-go >&2\nexit 7"}), 201)
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "badpost",
		"environment_variables": map[string]string{"MODE": "badpost"}, "post_activation_script": "#!/bin/sh\necho post $MODE\nexit 9"}), 201)
	e.must(e.do("POST", "/instances/vm1/personas/good/activate", tokOperator, nil), 200)

	pre := e.must(e.do("POST", "/instances/vm1/personas/badpre/activate", tokOperator, nil), 409).json(t)
	if pre["result"] != "aborted" || pre["exit_code"] != float64(7) || pre["stderr"] != "no-go\n" {
		t.Fatalf("pre-script failure %v", pre)
	}
	post := e.must(e.do("POST", "/instances/vm1/personas/badpost/activate", tokOperator, nil), 409).json(t)
	if post["result"] != "rolled_back" || post["exit_code"] != float64(9) || post["stdout"] != "post badpost\n" {
		t.Fatalf("post-script failure %v", post)
	}
	mode := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("printenv", "MODE")), 200).json(t)
	if mode["stdout"] != "good\n" {
		t.Fatalf("after refused activations the environment is %v", mode)
	}
	ap := e.must(e.do("GET", "/instances/vm1/active_persona", tokViewer, nil), 200).json(t)
	if p := ap["persona"].(map[string]any); p["name"] != "good" {
		t.Fatalf("active persona %v", ap)
	}
	m := string(e.must(e.do("GET", "/metrics", "", nil), 200).body)
	for _, want := range []string{`result="aborted"} 1`, `result="rolled_back"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestPersonaErrors(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("POST", "/personas", tokAdmin, hardened), 201)

	cases := []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
		field                    string
	}{
		{"malformed", "POST", "/personas", `{"name":`, nil, 400, ""},
		{"not an object", "POST", "/personas", `[1,2]`, nil, 400, ""},
		{"empty body", "POST", "/personas", ``, nil, 400, ""},
		{"two values", "POST", "/personas", `{"name":"a"}{"name":"b"}`, nil, 400, ""},
		{"unknown field", "POST", "/personas", `{"name":"x","colour":"red"}`, nil, 400, "colour"},
		{"wrong type", "POST", "/personas", `{"name":"x","restricted_commands":"rm"}`, nil, 400, "restricted_commands"},
		{"bad name", "POST", "/personas", `{"name":"../x"}`, nil, 422, "name"},
		{"upper name", "POST", "/personas", `{"name":"Hardened"}`, nil, 422, "name"},
		{"bad env", "POST", "/personas", `{"name":"x","environment_variables":{"1X":"v"}}`, nil, 422, "environment_variables"},
		{"relative override", "POST", "/personas", `{"name":"x","command_overrides":{"ls":"bin/ls"}}`, nil, 422, "command_overrides"},
		{"exists", "POST", "/personas", `{"name":"hardened"}`, nil, 409, ""},
		{"missing", "GET", "/personas/nope", ``, nil, 404, ""},
		{"update missing", "PUT", "/personas/nope", `{"name":"nope"}`, nil, 404, ""},
		{"rename", "PUT", "/personas/hardened", `{"name":"other"}`, nil, 422, "name"},
		{"stale if-match", "PUT", "/personas/hardened", `{"name":"hardened"}`, []string{"If-Match", `"7"`}, 412, ""},
		{"bad if-match", "PUT", "/personas/hardened", `{"name":"hardened"}`, []string{"If-Match", `abc`}, 400, "If-Match"},
		{"delete stale", "DELETE", "/personas/hardened", ``, []string{"If-Match", `"9"`}, 412, ""},
		{"bad force", "DELETE", "/personas/hardened?force=maybe", ``, nil, 400, "force"},
		{"unknown instance", "POST", "/instances/nope/personas/hardened/activate", ``, nil, 404, ""},
		{"unknown persona", "POST", "/instances/vm1/personas/nope/activate", ``, nil, 404, ""},
		{"bad audit limit", "GET", "/audit?limit=0", ``, nil, 400, "limit"},
		{"bad audit since", "GET", "/audit?since=yesterday", ``, nil, 400, "since"},
		{"exec empty command", "POST", "/instances/vm1/exec", `{"command":""}`, nil, 422, "command"},
		{"exec bad env", "POST", "/instances/vm1/exec", `{"command":"true","env":{"A=B":"x"}}`, nil, 422, "env.A=B"},
		{"exec bad user", "POST", "/instances/vm1/exec", `{"command":"true","user":"a b"}`, nil, 422, "user"},
		{"exec bad group", "POST", "/instances/vm1/exec", `{"command":"true","group":"-x"}`, nil, 422, "group"},
		{"exec relative cwd", "POST", "/instances/vm1/exec", `{"command":"true","cwd":"tmp"}`, nil, 422, "cwd"},
		{"exec stdin without newline", "POST", "/instances/vm1/exec", `{"command":"cat"}x`, []string{"Content-Type", apitypes.ExecStdinMediaType}, 400, ""},
		{"exec stdin twice", "POST", "/instances/vm1/exec", "{\"command\":\"cat\",\"stdin\":\"a\"}\nb", []string{"Content-Type", apitypes.ExecStdinMediaType}, 422, "stdin"},
		{"exec stdin bad document", "POST", "/instances/vm1/exec", "{\"command\":\"cat\",\"nope\":1}\nb", []string{"Content-Type", apitypes.ExecStdinMediaType}, 400, "nope"},
		{"no route", "GET", "/nothing", ``, nil, 404, ""},
		{"wrong method", "PATCH", "/personas", ``, nil, 405, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.must(e.do(c.method, c.path, tokAdmin, c.body, c.hdr...), c.status)
			if c.field != "" {
				if f := r.json(t)["field"]; f == nil || !strings.HasPrefix(f.(string), c.field) {
					t.Fatalf("problem names field %v, want %q: %s", f, c.field, r.body)
				}
			}
		})
	}

	t.Run("exec streamed stdin", func(t *testing.T) {
		r := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, "{\"command\":\"wc\",\"args\":[\"-c\"]}\n"+strings.Repeat("x", 12345),
			"Content-Type", apitypes.ExecStdinMediaType), 200).json(t)
		if strings.TrimSpace(r["stdout"].(string)) != "12345" {
			t.Fatalf("wc -c of 12345 streamed bytes: %v", r["stdout"])
		}
		// The document alone: no input.
		r = e.must(e.do("POST", "/instances/vm1/exec", tokOperator, `{"command":"wc","args":["-c"]}`,
			"Content-Type", apitypes.ExecStdinMediaType), 200).json(t)
		if strings.TrimSpace(r["stdout"].(string)) != "0" {
			t.Fatalf("wc -c of no input: %v", r["stdout"])
		}
		// The document is bounded; the input after it is not.
		big := `{"command":"cat","cwd":"/` + strings.Repeat("a", MaxExecBody) + "\"}\n"
		e.must(e.do("POST", "/instances/vm1/exec", tokOperator, big, "Content-Type", apitypes.ExecStdinMediaType), 413)
		r = e.must(e.do("POST", "/instances/vm1/exec", tokOperator, "{\"command\":\"wc\",\"args\":[\"-c\"]}\n"+strings.Repeat("y", MaxExecBody+1000),
			"Content-Type", apitypes.ExecStdinMediaType), 200).json(t)
		if strings.TrimSpace(r["stdout"].(string)) != strconv.Itoa(MaxExecBody+1000) {
			t.Fatalf("wc -c of input beyond the body bound: %v", r["stdout"])
		}
	})

	t.Run("huge body", func(t *testing.T) {
		big := `{"name":"big","pre_activation_script":"` + strings.Repeat("a", MaxPersonaBody+10) + `"}`
		e.must(e.do("POST", "/personas", tokAdmin, big), 413)
	})

	t.Run("default conflict names the current default", func(t *testing.T) {
		e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "base", "default_persona": true}), 201)
		r := e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "base2", "default_persona": true}), 409)
		if !strings.Contains(string(r.body), `"base"`) {
			t.Fatalf("conflict does not name the current default: %s", r.body)
		}
	})

	t.Run("if-match and revisions", func(t *testing.T) {
		r := e.must(e.do("GET", "/personas/hardened", tokViewer, nil), 200)
		et := r.header.Get("ETag")
		upd := map[string]any{"name": "hardened", "restricted_commands": []string{"rm"}}
		r2 := e.must(e.do("PUT", "/personas/hardened", tokAdmin, upd, "If-Match", et), 200)
		if r2.header.Get("ETag") != `"2"` || r2.json(t)["revision"] != float64(2) {
			t.Fatalf("after update: ETag %q body %s", r2.header.Get("ETag"), r2.body)
		}
		e.must(e.do("PUT", "/personas/hardened", tokAdmin, upd, "If-Match", et), 412)
	})

	t.Run("delete while active", func(t *testing.T) {
		e.must(e.do("POST", "/instances/vm1/personas/hardened/activate", tokOperator, nil), 200)
		r := e.must(e.do("DELETE", "/personas/hardened", tokAdmin, nil), 409)
		if !strings.Contains(string(r.body), "vm1") {
			t.Fatalf("in-use conflict does not name the instance: %s", r.body)
		}
		e.must(e.do("DELETE", "/personas/hardened?force=true", tokAdmin, nil), 204)
		e.must(e.do("GET", "/personas/hardened", tokAdmin, nil), 404)
	})

	t.Run("exec not executable", func(t *testing.T) {
		r := e.must(e.do("POST", "/instances/vm1/exec", tokOperator, execBody("/etc/hostname")), 422).json(t)
		if r["reason"] != "not_executable" {
			t.Fatalf("reason %v", r["reason"])
		}
	})
}

// TestAgentFailures: an absent agent answers 503 and a hung one 504, within
// their deadlines, while another instance keeps working.
func TestAgentFailures(t *testing.T) {
	e := newEnv(t, map[string]string{
		"good":   startGuest(t),
		"absent": "unix:" + t.TempDir() + "/nobody.sock",
		"hung":   hungAgent(t),
	})
	e.waitConnected("good")
	e.must(e.do("POST", "/instances/absent/exec", tokOperator, execBody("true")), 503)
	e.must(e.do("POST", "/personas", tokAdmin, map[string]any{"name": "p"}), 201)
	e.must(e.do("POST", "/instances/absent/personas/p/activate", tokOperator, nil), 503)
	// The hung agent never completes a handshake: not connected.
	e.must(e.do("POST", "/instances/hung/exec", tokOperator, execBody("true")), 503)
	inst := e.must(e.do("GET", "/instances/absent", tokViewer, nil), 200).json(t)
	if inst["agent"].(map[string]any)["state"] == "connected" || inst["reason"] == "" {
		t.Fatalf("absent instance %v", inst)
	}
	e.must(e.do("POST", "/instances/good/exec", tokOperator, execBody("true")), 200)

	// An agent that connected and then hangs on a request: 504 at the
	// exec's deadline.
	slow := e.must(e.do("POST", "/instances/good/exec", tokOperator,
		map[string]any{"command": "sleep", "args": []string{"5"}, "timeout_seconds": 0.5}), 200).json(t)
	if slow["timed_out"] != true {
		t.Fatalf("a command past its timeout: %v", slow)
	}
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

func TestAuthMatrix(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": "unix:" + t.TempDir() + "/none.sock"})
	roles := map[string]string{"viewer": tokViewer, "operator": tokOperator, "admin": tokAdmin}
	rank := map[string]int{"": 0, "viewer": 1, "operator": 2, "admin": 3}
	refused := 0
	for _, rt := range e.api.routes {
		path := strings.NewReplacer(":name", "x", ":id", "vm1", ":persona", "x").Replace(rt.path)
		need := rt.role.String()
		if need == "none" {
			need = ""
		}
		for _, who := range []string{"none", "bad", "viewer", "operator", "admin"} {
			tok := roles[who]
			if who == "bad" {
				tok = "not-a-token"
			}
			r := e.do(rt.method, path, tok, nil)
			var want int
			switch {
			case need == "":
				want = 0 // open: anything but 401/403
			case who == "none" || who == "bad":
				want = http.StatusUnauthorized
			case rank[who] < rank[need]:
				want = http.StatusForbidden
			}
			if want == 0 {
				if r.status == 401 || r.status == 403 {
					t.Errorf("%s %s as %s: %d, want access", rt.method, rt.path, who, r.status)
				}
				continue
			}
			if r.status != want {
				t.Errorf("%s %s as %s: %d, want %d", rt.method, rt.path, who, r.status, want)
			}
			if want == http.StatusForbidden {
				// The refusal says what the user tried, not the route.
				d, _ := r.json(t)["detail"].(string)
				if rt.action == "" || d != "user "+map[string]string{"viewer": "victor", "operator": "oscar"}[who]+" has role "+who+"; "+rt.action+" needs the "+need+" role" {
					t.Errorf("%s %s as %s: detail %q (action %q)", rt.method, rt.path, who, d, rt.action)
				}
				if strings.Contains(d, "/") || strings.Contains(d, rt.method+" ") {
					t.Errorf("%s %s as %s: detail %q shows the route", rt.method, rt.path, who, d)
				}
			}
			refused++
		}
	}
	// Every refusal is counted; they are audited at a bounded rate per
	// source (all of these come from one), naming the route pattern.
	m := e.api.cfg.Metrics
	counted := counterValue(m.AuthFailures.WithLabelValues("401")) + counterValue(m.AuthFailures.WithLabelValues("403"))
	if int(counted) != refused {
		t.Fatalf("%v refusals counted, %d made", counted, refused)
	}
	evs := e.waitAudit("&type=auth_failure", "auth_failure")
	if len(evs) < 1 || len(evs) > authFailBurst+1 {
		t.Fatalf("%d auth failures audited of %d refusals from one source; want 1..%d", len(evs), refused, authFailBurst+1)
	}
	for _, ev := range evs {
		if d, _ := ev["detail"].(string); !strings.Contains(d, "/:") && !strings.Contains(d, "/audit") && !strings.Contains(d, "/personas") && !strings.Contains(d, "/instances") {
			t.Errorf("detail %q names no route pattern", d)
		}
	}
}

func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatal(err)
	}
	described := 0
	for _, rt := range New(Config{}).routes {
		p := rt.path
		for _, seg := range strings.Split(p, "/") {
			if strings.HasPrefix(seg, ":") {
				p = strings.Replace(p, seg, "{"+seg[1:]+"}", 1)
			}
		}
		ops, ok := doc.Paths[p]
		if !ok {
			t.Errorf("route %s %s is not described in openapi.json", rt.method, p)
			continue
		}
		var op struct {
			Role string `json:"x-vmpersona-role"`
		}
		raw, ok := ops[strings.ToLower(rt.method)]
		if !ok {
			t.Errorf("route %s %s: method not described", rt.method, p)
			continue
		}
		json.Unmarshal(raw, &op)
		if want := rt.role.String(); op.Role != want {
			t.Errorf("route %s %s: openapi says role %q, route table %q", rt.method, p, op.Role, want)
		}
		described++
	}
	total := 0
	for _, ops := range doc.Paths {
		total += len(ops)
	}
	if total != described {
		t.Errorf("openapi.json describes %d operations, the route table has %d", total, described)
	}
}

func TestMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (make test installs Debian's prometheus package)")
	}
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	e.must(e.do("GET", "/personas", tokViewer, nil), 200)
	body := e.must(e.do("GET", "/metrics", "", nil), 200).body
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestStreamedInputKeepsConnection: a streamed-input exec whose command
// ends while its input is still being taken does not spoil the keep-alive
// connection for the requests after it (a stop that set the connection's
// read deadline in the past while the server's own read waited at the
// body's end canceled every later request on it: 499).
func TestStreamedInputKeepsConnection(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	for i := range 150 {
		input := strings.Repeat("x", i*97)
		e.must(e.do("POST", "/instances/vm1/exec", tokOperator, "{\"command\":\"wc\",\"args\":[\"-c\"]}\n"+input,
			"Content-Type", apitypes.ExecStdinMediaType), 200)
		e.must(e.do("GET", "/instances/vm1", tokViewer, nil), 200)
	}
}
