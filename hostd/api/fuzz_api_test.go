package api

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/auth"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/store"
)

// fuzzServer is the real API handler over a real Badger store, with one
// static instance whose agent is not running (instance routes answer 503).
// The handler is called in process (no sockets), so the fuzzer runs fast.
func fuzzServer(tb testing.TB) http.Handler {
	tb.Helper()
	st, err := store.Open(tb.TempDir(), store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tokens, err := auth.ParseTokens(strings.NewReader(tokAdmin + ",alice,1,\"admin\"\n" + tokViewer + ",victor,3,viewer\n"))
	if err != nil {
		tb.Fatal(err)
	}
	m := metrics.New()
	log := slog.New(slog.DiscardHandler)
	mgr := agents.NewManager(agents.Config{Store: st, Metrics: m, Logger: log, Heartbeat: time.Second, DialTimeout: 100 * time.Millisecond, CallTimeout: time.Second})
	ep, _ := agents.ParseEndpoint("unix:/nonexistent/vmpersona-fuzz.sock")
	if err := mgr.Add("vm1", ep, "static"); err != nil {
		tb.Fatal(err)
	}
	s := New(Config{Store: st, Agents: mgr, Metrics: m, Tokens: tokens, Logger: log, DefaultScriptTimeout: time.Second})
	tb.Cleanup(func() { mgr.Close(); st.Close() })
	return s
}

// checkAnswer holds every answer to the API's promises for hostile input:
// never a 5xx other than 503 (agent not connected) and 501 (channel
// enabling without libvirt), errors as problem+json.
func checkAnswer(t *testing.T, what string, rec *httptest.ResponseRecorder) {
	t.Helper()
	code := rec.Code
	if code >= 500 && code != http.StatusServiceUnavailable && code != http.StatusNotImplemented {
		t.Fatalf("%s: status %d: %.500s", what, code, rec.Body.Bytes())
	}
	if code >= 400 {
		if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
			t.Fatalf("%s: status %d with Content-Type %q", what, code, ct)
		}
		var p map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
			t.Fatalf("%s: problem document is not JSON: %v: %.300s", what, err, rec.Body.Bytes())
		}
		if s, _ := p["status"].(float64); int(s) != code {
			t.Fatalf("%s: problem status %v differs from HTTP status %d", what, p["status"], code)
		}
	}
}

// FuzzPersonaBody sends arbitrary bodies to POST /personas and PUT
// /personas/{name}; a created persona must read back with the same name.
func FuzzPersonaBody(f *testing.F) {
	for _, s := range []string{
		`{"name":"hardened","environment_variables":{"APP_ENV":"staging"},"pre_activation_script":"#!/bin/sh\necho hi","command_overrides":{"deploy":"#!/bin/sh\necho \"$@\"","ls":"/usr/local/bin/safe-ls"},"restricted_commands":["rm","/bin/shutdown"],"default_persona":false}`,
		`{"name":"a"}`, `{"name":"a","allowed_commands":["ls"]}`, `{"name":"a","unknown":1}`,
		`{"name":1}`, `{"name":"a","environment_variables":{"A=B":"x"}}`, `{"name":"a","environment_variables":{"PATH":"$(rm -rf /)"}}`,
		`{"name":"../x"}`, `{"name":"ａ"}`, "{\"name\":\"a\x00b\"}", `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`, `{"name":"a",`, ``, `null`, `"x"`,
		`{"name":"a","restricted_commands":"rm"}`, `{"name":"a","command_overrides":{"":"x"}}`, `{"name":"a","default_persona":"yes"}`,
	} {
		f.Add(s, "a")
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body, name string) {
		for _, method := range []string{"POST", "PUT"} {
			path := "/personas"
			if method == "PUT" {
				path = "/personas/" + urlPathEscape(name)
			}
			req := httptest.NewRequest(method, "http://hostd"+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tokAdmin)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			checkAnswer(t, method+" "+path, rec)
			if rec.Code == http.StatusCreated {
				var p map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
					t.Fatalf("created persona answer: %v", err)
				}
				n, _ := p["name"].(string)
				gr := httptest.NewRequest("GET", "http://hostd/personas/"+urlPathEscape(n), nil)
				gr.Header.Set("Authorization", "Bearer "+tokViewer)
				g := httptest.NewRecorder()
				h.ServeHTTP(g, gr)
				if g.Code != 200 {
					t.Fatalf("created persona %q does not read back: %d %s", n, g.Code, g.Body.Bytes())
				}
				d := httptest.NewRequest("DELETE", "http://hostd/personas/"+urlPathEscape(n)+"?force=true", nil)
				d.Header.Set("Authorization", "Bearer "+tokAdmin)
				h.ServeHTTP(httptest.NewRecorder(), d)
			}
		}
	})
}

func urlPathEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' {
			b.WriteByte(c)
		} else {
			const hex = "0123456789ABCDEF"
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// FuzzAPIRequest sends arbitrary methods, paths, queries, headers and bodies
// to every route, with and without tokens.
func FuzzAPIRequest(f *testing.F) {
	seeds := []struct{ method, path, body, auth, ifMatch string }{
		{"GET", "/personas", "", tokViewer, ""},
		{"GET", "/audit?limit=5&type=exec&since=15m&until=2030-01-01T00:00:00Z", "", tokAdmin, ""},
		{"GET", "/audit?limit=-1&since=yesterday", "", tokAdmin, ""},
		{"POST", "/instances/vm1/exec", `{"command":"ls","args":["-l"],"env":{"A":"b"},"timeout_seconds":30}`, tokAdmin, ""},
		{"POST", "/instances/vm1/exec?stream=true", `{"command":"","timeout_seconds":-5}`, tokAdmin, ""},
		{"POST", "/instances/vm1/personas/p/activate", `{"timeout_seconds":1e309}`, tokAdmin, ""},
		{"POST", "/instances/vm1/deactivate", ``, tokAdmin, ""},
		{"POST", "/instances/vm1/enable", `{}`, tokAdmin, ""},
		{"PUT", "/personas/a", `{"name":"a"}`, tokAdmin, `"7"`},
		{"DELETE", "/personas/a?force=maybe", ``, tokAdmin, `W/"x"`},
		{"GET", "/instances/%2e%2e%2fetc", "", tokViewer, ""},
		{"GET", "/personas/" + strings.Repeat("a", 10000), "", tokViewer, ""},
		{"PATCH", "/personas/a", "{}", "Basic xyz", ""},
		{"GET", "/healthz", "", "", ""},
		{"GET", "/openapi.json", "", "", ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.body, s.auth, s.ifMatch)
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, method, path, body, token, ifMatch string) {
		if !validMethod(method) || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") || !utf8.ValidString(path) {
			return // not an HTTP request line net/http would hand to the handler
		}
		if path == "/metrics" {
			return // the Prometheus handler is not ours
		}
		req, err := http.NewRequest(method, "http://hostd"+path, io.NopCloser(bytes.NewReader([]byte(body))))
		if err != nil {
			return
		}
		if token != "" && validHeader(token) {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if ifMatch != "" && validHeader(ifMatch) {
			req.Header.Set("If-Match", ifMatch)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkAnswer(t, method+" "+path, rec)
	})
}

func validMethod(m string) bool {
	if m == "" || len(m) > 16 {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

func validHeader(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return false
		}
	}
	return true
}
