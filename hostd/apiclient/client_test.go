package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// recorder is an httptest server that answers with canned shapes and keeps
// the last request it saw.
type recorder struct {
	t       *testing.T
	mux     *http.ServeMux
	last    *http.Request
	lastRaw []byte
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{t: t, mux: http.NewServeMux()}
	return r
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.last, r.lastRaw = req, b
	req.Body = io.NopCloser(bytes.NewReader(b))
	r.mux.ServeHTTP(w, req)
}

func (r *recorder) handle(pattern string, status int, contentType, body string) {
	r.mux.HandleFunc(pattern, func(w http.ResponseWriter, _ *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	})
}

func (r *recorder) client(cfg Config) *Client {
	r.t.Helper()
	srv := httptest.NewServer(r)
	r.t.Cleanup(srv.Close)
	cfg.URL = srv.URL
	c, err := New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(c.Close)
	return c
}

const personaJSON = `{"name":"hardened","environment_variables":{"APP_ENV":"staging"},
 "pre_activation_script":"#!/bin/sh\necho preparing","post_activation_script":"",
 "command_overrides":{"deploy":"#!/bin/sh\necho dry-run"},"restricted_commands":["rm"],
 "default_persona":false,"revision":7,"created_at":"2026-11-26T09:00:00Z","updated_at":"2026-11-26T09:05:00Z"}`

func TestPersonaCRUD(t *testing.T) {
	r := newRecorder(t)
	r.handle("GET /personas", 200, "application/json", `{"personas":[`+personaJSON+`]}`)
	r.handle("GET /personas/{name}", 200, "application/json", personaJSON)
	r.handle("POST /personas", 201, "application/json", personaJSON)
	r.handle("PUT /personas/{name}", 200, "application/json", personaJSON)
	r.handle("DELETE /personas/{name}", 204, "", "")
	c := r.client(Config{Token: "s3cret"})
	ctx := context.Background()

	list, err := c.ListPersonas(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "hardened" || list[0].Revision != 7 {
		t.Fatalf("ListPersonas = %+v, %v", list, err)
	}
	if got := r.last.Header.Get("Authorization"); got != "Bearer s3cret" {
		t.Errorf("Authorization = %q", got)
	}

	p, err := c.GetPersona(ctx, "hardened")
	if err != nil || p.EnvironmentVariables["APP_ENV"] != "staging" || p.RestrictedCommands[0] != "rm" {
		t.Fatalf("GetPersona = %+v, %v", p, err)
	}
	if r.last.URL.Path != "/personas/hardened" {
		t.Errorf("path = %q", r.last.URL.Path)
	}

	in := protocol.Persona{Name: "hardened", Revision: 99, CreatedAt: time.Now()}
	if _, err := c.CreatePersona(ctx, in); err != nil {
		t.Fatal(err)
	}
	var sent map[string]any
	if err := json.Unmarshal(r.lastRaw, &sent); err != nil {
		t.Fatal(err)
	}
	if sent["revision"] != float64(0) || sent["created_at"] != nil {
		t.Errorf("create sent server-kept fields: %s", r.lastRaw)
	}
	if r.last.Header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type = %q", r.last.Header.Get("Content-Type"))
	}

	if _, err := c.UpdatePersona(ctx, in, 7); err != nil {
		t.Fatal(err)
	}
	if got := r.last.Header.Get("If-Match"); got != `"7"` {
		t.Errorf("If-Match = %q, want \"7\" quoted", got)
	}
	if _, err := c.UpdatePersona(ctx, in, 0); err != nil {
		t.Fatal(err)
	}
	if got := r.last.Header.Get("If-Match"); got != "" {
		t.Errorf("If-Match without revision = %q", got)
	}

	if err := c.DeletePersona(ctx, "hardened", DeleteOptions{Force: true, IfMatch: 3}); err != nil {
		t.Fatal(err)
	}
	if r.last.Method != "DELETE" || r.last.URL.Query().Get("force") != "true" || r.last.Header.Get("If-Match") != `"3"` {
		t.Errorf("delete sent %s %s If-Match %q", r.last.Method, r.last.URL, r.last.Header.Get("If-Match"))
	}
}

func TestPathSegmentsEscaped(t *testing.T) {
	r := newRecorder(t)
	r.handle("GET /instances/{id}", 200, "application/json", `{"id":"x"}`)
	c := r.client(Config{})
	if _, err := c.GetInstance(context.Background(), "a/b c"); err != nil {
		t.Fatal(err)
	}
	if got := r.last.URL.EscapedPath(); got != "/instances/a%2Fb%20c" {
		t.Errorf("escaped path = %q", got)
	}
}

func TestProblems(t *testing.T) {
	tests := []struct {
		name   string
		status int
		ctype  string
		body   string
		want   []error
		check  func(*testing.T, *apitypes.Problem)
	}{
		{"not found", 404, "application/problem+json",
			`{"type":"urn:vmpersona:problem:not-found","title":"Not found","status":404,"detail":"persona \"x\" not found"}`,
			[]error{ErrNotFound}, nil},
		{"denied", 403, "application/problem+json",
			`{"type":"urn:vmpersona:problem:command-denied","title":"Command not allowed","status":403,"detail":"Error: Command not allowed in current persona","command":"rm","persona":"hardened"}`,
			[]error{ErrForbidden, ErrCommandDenied}, func(t *testing.T, p *apitypes.Problem) {
				if p.Command != "rm" || p.Persona != "hardened" {
					t.Errorf("command/persona = %q/%q", p.Command, p.Persona)
				}
			}},
		{"role forbidden is not a denial", 403, "application/problem+json",
			`{"type":"urn:vmpersona:problem:forbidden","title":"Forbidden","status":403,"detail":"viewer may not exec"}`,
			[]error{ErrForbidden}, nil},
		{"not startable", 422, "application/problem+json",
			`{"type":"urn:vmpersona:problem:command-not-startable","title":"Command cannot be started","status":422,"detail":"nope: not found","command":"nope","reason":"not_found"}`,
			[]error{ErrUnprocessable, ErrCommandNotFound}, nil},
		{"not executable", 422, "application/problem+json",
			`{"type":"urn:vmpersona:problem:command-not-startable","title":"Command cannot be started","status":422,"detail":"x","command":"/etc/passwd","reason":"not_executable"}`,
			[]error{ErrUnprocessable, ErrCommandNotExecutable}, nil},
		{"aborted", 409, "application/problem+json",
			`{"type":"urn:vmpersona:problem:activation-refused","title":"Activation refused","status":409,"detail":"pre","result":"aborted","phase":"pre","exit_code":3,"stdout":"out","stderr":"err","newer_member":7}`,
			[]error{ErrConflict, ErrActivationRefused}, func(t *testing.T, p *apitypes.Problem) {
				if p.ExitCode == nil || *p.ExitCode != 3 || p.Phase != "pre" || p.Stdout != "out" || p.Stderr != "err" || p.Extra["newer_member"] != 7.0 || len(p.Extra) != 1 {
					t.Errorf("activation members = %+v", p)
				}
				if p.Result != "aborted" {
					t.Errorf("result = %q", p.Result)
				}
			}},
		{"mismatch", 412, "application/problem+json", `{"title":"Revision mismatch","status":412}`, []error{ErrPreconditionFailed}, nil},
		{"unauthorized", 401, "application/problem+json", `{"title":"Unauthorized","status":401}`, []error{ErrUnauthorized}, nil},
		{"unavailable", 503, "application/problem+json", `{"title":"Agent not connected","status":503}`, []error{ErrUnavailable}, nil},
		{"timeout", 504, "application/problem+json", `{"title":"Agent did not answer in time","status":504}`, []error{ErrTimeout}, nil},
		{"plain text", 502, "text/plain", "bad gateway from a proxy\n", []error{ErrServer}, func(t *testing.T, p *apitypes.Problem) {
			if p.Detail != "bad gateway from a proxy" || p.Title != "Bad Gateway" {
				t.Errorf("problem from text = %+v", p)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecorder(t)
			r.handle("/", tt.status, tt.ctype, tt.body)
			c := r.client(Config{})
			_, err := c.Exec(context.Background(), "vm1", apitypes.ExecRequest{Command: "rm"})
			var p *apitypes.Problem
			if !errors.As(err, &p) {
				t.Fatalf("err = %v, not a *Problem", err)
			}
			if p.Status != tt.status {
				t.Errorf("status = %d", p.Status)
			}
			for _, w := range tt.want {
				if !errors.Is(err, w) {
					t.Errorf("errors.Is(%v, %v) = false", err, w)
				}
			}
			if tt.status == 403 && !slicesContains(tt.want, ErrCommandDenied) && errors.Is(err, ErrCommandDenied) {
				t.Errorf("a role refusal reads as a command denial")
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

func slicesContains(s []error, e error) bool {
	for _, x := range s {
		if x == e {
			return true
		}
	}
	return false
}

func TestInstancesAndActive(t *testing.T) {
	r := newRecorder(t)
	inst := `{"id":"vm1","source":"static","endpoint":"unix:/tmp/x.sock","state":"running",
	  "agent":{"state":"connected","version":"0.1.0","boot_id":"b","capabilities":["exec-stream"],"connected_at":"2026-11-26T09:00:00Z","last_error":""},
	  "active_persona":"hardened"}`
	r.handle("GET /instances", 200, "application/json", `{"instances":[`+inst+`,{"id":"vm2","source":"libvirt","state":"shutoff","agent":{"state":"disconnected"},"active_persona":null,"reason":"domain is shut off"}]}`)
	r.handle("GET /instances/{id}/active_persona", 200, "application/json",
		`{"instance":"vm1","persona":`+personaJSON+`,"revision":7,"activation_id":"act-1","activated_at":"2026-11-26T09:06:00Z","stale":true}`)
	c := r.client(Config{})
	list, err := c.ListInstances(context.Background())
	if err != nil || len(list) != 2 {
		t.Fatalf("ListInstances = %+v, %v", list, err)
	}
	if list[0].ActivePersona == nil || *list[0].ActivePersona != "hardened" || list[0].Agent.Capabilities[0] != "exec-stream" || list[0].Agent.ConnectedAt.IsZero() {
		t.Errorf("vm1 = %+v", list[0])
	}
	if list[1].ActivePersona != nil || list[1].Reason != "domain is shut off" {
		t.Errorf("vm2 = %+v", list[1])
	}
	ap, err := c.ActivePersona(context.Background(), "vm1")
	if err != nil || ap.Persona == nil || ap.Persona.Name != "hardened" || !ap.Stale || ap.ActivationID != "act-1" {
		t.Fatalf("apitypes.ActivePersona = %+v, %v", ap, err)
	}
}

func TestActivateAndDeactivate(t *testing.T) {
	r := newRecorder(t)
	r.handle("POST /instances/{id}/personas/{p}/activate", 200, "application/json",
		`{"instance":"vm1","result":"activated","persona":"hardened","revision":7,"activation_id":"a1","activated_at":"2026-11-26T09:06:00Z","duration_ms":12.5}`)
	r.handle("POST /instances/{id}/deactivate", 200, "application/json", `{"instance":"vm1","result":"deactivated","duration_ms":3}`)
	c := r.client(Config{})
	res, err := c.Activate(context.Background(), "vm1", "hardened", ActivateOptions{ScriptTimeout: 1500 * time.Millisecond})
	if err != nil || res.Result != "activated" || res.Revision != 7 || res.DurationMillis != 12.5 {
		t.Fatalf("Activate = %+v, %v", res, err)
	}
	if string(r.lastRaw) != `{"script_timeout_seconds":2}` {
		t.Errorf("activate body = %s, want the timeout rounded up to whole seconds", r.lastRaw)
	}
	if _, err := c.Activate(context.Background(), "vm1", "hardened", ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(r.lastRaw) != 0 {
		t.Errorf("activate without options sent a body: %s", r.lastRaw)
	}
	d, err := c.Deactivate(context.Background(), "vm1")
	if err != nil || d.Result != "deactivated" {
		t.Fatalf("Deactivate = %+v, %v", d, err)
	}
}

func TestExecPlain(t *testing.T) {
	r := newRecorder(t)
	r.handle("POST /instances/{id}/exec", 200, "application/json",
		`{"exit_code":2,"signal":"","stdout":"a\n","stderr":"b\n","stdout_truncated":true,"stderr_truncated":false,"route":"override","persona":"hardened","duration_ms":1.2}`)
	c := r.client(Config{})
	res, err := c.Exec(context.Background(), "vm1", apitypes.ExecRequest{Command: "ls", Env: map[string]string{"A": "1"}, TimeoutSeconds: 5})
	if err != nil || res.ExitCode != 2 || res.Stdout != "a\n" || !res.StdoutTruncated || res.Route != "override" || *res.Persona != "hardened" {
		t.Fatalf("Exec = %+v, %v", res, err)
	}
	var sent map[string]any
	json.Unmarshal(r.lastRaw, &sent)
	if sent["command"] != "ls" || sent["timeout_seconds"] != float64(5) || sent["args"] == nil {
		t.Errorf("exec body = %s", r.lastRaw)
	}
	if r.last.URL.Query().Get("stream") != "" {
		t.Errorf("plain exec asked for a stream")
	}
}

func TestExecStream(t *testing.T) {
	r := newRecorder(t)
	r.mux.HandleFunc("POST /instances/{id}/exec", func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Query().Get("stream") != "true" {
			http.Error(w, "want stream", 400)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		f := w.(http.Flusher)
		for _, l := range []string{
			`{"stream":"stdout","data":"hello "}`,
			`{"stream":"stderr","data":"warn\n"}`,
			`{"stream":"progress","data":"ignored"}`,
			``,
			`{"stream":"stdout","data":"world\n"}`,
			`{"stream":"exit","exit_code":0,"signal":"SIGTERM","route":"default","persona":null,"duration_ms":4}`,
		} {
			io.WriteString(w, l+"\n")
			f.Flush()
		}
	})
	c := r.client(Config{})
	var out, errb bytes.Buffer
	res, err := c.ExecStream(context.Background(), "vm1", apitypes.ExecRequest{Command: "echo"}, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello world\n" || errb.String() != "warn\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errb.String())
	}
	if res.Signal != "SIGTERM" || res.Route != "default" || res.Persona != nil || res.DurationMillis != 4 {
		t.Errorf("result = %+v", res)
	}
}

func TestExecStreamFailures(t *testing.T) {
	tests := []struct {
		name, ctype, body string
		want              error
	}{
		{"no exit line", "application/x-ndjson", `{"stream":"stdout","data":"partial"}` + "\n", ErrProtocol},
		{"garbage line", "application/x-ndjson", "not json\n", ErrProtocol},
		{"error line after output", "application/x-ndjson", `{"stream":"stdout","data":"x"}` + "\n" +
			`{"stream":"error","type":"urn:vmpersona:problem:agent-unavailable","title":"Agent not connected","status":503,"detail":"session closed"}` + "\n", ErrUnavailable},
		{"wrong content type", "text/html", "<html>", ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRecorder(t)
			r.handle("POST /instances/{id}/exec", 200, tt.ctype, tt.body)
			c := r.client(Config{})
			_, err := c.ExecStream(context.Background(), "vm1", apitypes.ExecRequest{Command: "x"}, io.Discard, io.Discard)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestExecStreamFallsBackToPlainJSON(t *testing.T) {
	r := newRecorder(t)
	r.handle("POST /instances/{id}/exec", 200, "application/json",
		`{"exit_code":1,"signal":"","stdout":"o","stderr":"e","route":"default","persona":null,"duration_ms":1}`)
	c := r.client(Config{})
	var out, errb bytes.Buffer
	res, err := c.ExecStream(context.Background(), "vm1", apitypes.ExecRequest{Command: "x"}, &out, &errb)
	if err != nil || res.ExitCode != 1 || out.String() != "o" || errb.String() != "e" || res.Stdout != "" {
		t.Fatalf("res %+v err %v out %q err %q", res, err, out.String(), errb.String())
	}
}

func TestAuditQuery(t *testing.T) {
	r := newRecorder(t)
	r.handle("GET /audit", 200, "application/json",
		`{"events":[{"id":"0000000000000005","time":"2026-11-26T09:00:00Z","instance":"vm1","actor":"root","type":"denial","persona":"hardened","command":"rm","route":"denied","result":"denied","source":"guest","guest_seq":3}],"next":"0000000000000005"}`)
	c := r.client(Config{})
	since := time.Date(2026, 11, 26, 8, 0, 0, 0, time.FixedZone("x", 3600))
	page, err := c.Audit(context.Background(), AuditQuery{Instance: "vm1", Type: "denial", Since: since, Limit: 10, After: "0000000000000004"})
	if err != nil || len(page.Events) != 1 || page.Next != "0000000000000005" || page.Events[0].GuestSeq != 3 {
		t.Fatalf("Audit = %+v, %v", page, err)
	}
	q := r.last.URL.Query()
	if q.Get("instance") != "vm1" || q.Get("type") != "denial" || q.Get("since") != "2026-11-26T07:00:00Z" ||
		q.Get("limit") != "10" || q.Get("after") != "0000000000000004" || q.Has("persona") || q.Has("until") {
		t.Errorf("query = %v", q)
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"personas":[]}`)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for _, u := range []string{sock, "unix:" + sock, "unix://" + sock} {
		c, err := New(Config{URL: u})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Healthz(context.Background()); err != nil {
			t.Errorf("%s: Healthz: %v", u, err)
		}
		if l, err := c.ListPersonas(context.Background()); err != nil || len(l) != 0 {
			t.Errorf("%s: ListPersonas = %v, %v", u, l, err)
		}
		c.Close()
	}
}

func TestTransportErrors(t *testing.T) {
	c, err := New(Config{URL: "unix:" + filepath.Join(t.TempDir(), "missing.sock")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListPersonas(context.Background())
	var te *TransportError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "missing.sock") {
		t.Errorf("err = %v, want a TransportError naming the socket", err)
	}

	// A daemon that never answers is cut by the client's timeout.
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-block:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(block) })
	c, err = New(Config{URL: srv.URL, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ListInstances(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "did not answer in time") {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
}

func TestBadURLs(t *testing.T) {
	for _, u := range []string{"ftp://x", "http://", "unix:", "::::"} {
		if _, err := New(Config{URL: u}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

func TestBasePathKept(t *testing.T) {
	r := newRecorder(t)
	r.handle("GET /prefix/personas", 200, "application/json", `{"personas":[]}`)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	c, err := New(Config{URL: srv.URL + "/prefix/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListPersonas(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Answers are read to the end so that one connection serves every call.
func TestConnectionReused(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /personas/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", `"7"`)
		io.WriteString(w, personaJSON+"\n")
	})
	mux.HandleFunc("POST /instances/{id}/exec", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		io.WriteString(w, `{"stream":"stdout","data":"x"}`+"\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, `{"stream":"exit","exit_code":0,"signal":"","route":"default","persona":null,"duration_ms":1}`+"\n")
		// As the host daemon does: the exit line goes out on its own, the
		// end of the chunked body a little later.
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
	})
	mux.HandleFunc("GET /personas", func(w http.ResponseWriter, r *http.Request) {
		// A chunked document whose end comes after the JSON value.
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"personas":[`+personaJSON+`]}`)
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		io.WriteString(w, "\n")
	})
	mux.HandleFunc("GET /instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(404)
		io.WriteString(w, `{"title":"Unknown instance","status":404}`+"\n")
	})
	srv := httptest.NewUnstartedServer(mux)
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := c.GetPersona(ctx, "hardened"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecStream(ctx, "vm1", apitypes.ExecRequest{Command: "x"}, io.Discard, io.Discard); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetInstance(ctx, "vm9"); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if _, err := c.ListPersonas(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 12 sequential calls, want 1", n)
	}
}

// Lists are read to their last page, following the cursor, with the
// list's own query kept on every page.
func TestListsFollowTheirPages(t *testing.T) {
	r := newRecorder(t)
	var queries []string
	r.mux.HandleFunc("GET /instances", func(w http.ResponseWriter, req *http.Request) {
		queries = append(queries, req.URL.RawQuery)
		w.Header().Set("Content-Type", "application/json")
		switch req.URL.Query().Get("after") {
		case "":
			io.WriteString(w, `{"instances":[{"id":"vm1"}],"next":"vm1"}`)
		case "vm1":
			io.WriteString(w, `{"instances":[{"id":"vm2"}]}`)
		default:
			http.Error(w, "unknown cursor", 400)
		}
	})
	r.handle("GET /fleet/hosts", 200, "application/json", `{"hosts":null}`)
	c := r.client(Config{})
	for _, list := range []func(context.Context) ([]apitypes.Instance, error){c.ListInstances, c.ListFleetInstances} {
		queries = nil
		got, err := list(context.Background())
		if err != nil || len(got) != 2 || got[0].ID != "vm1" || got[1].ID != "vm2" {
			t.Fatalf("list = %+v, %v", got, err)
		}
		if len(queries) != 2 || !strings.Contains(queries[1], "after=vm1") {
			t.Errorf("pages asked: %q", queries)
		}
	}
	for _, q := range queries {
		if !strings.Contains(q, "scope=fleet") {
			t.Errorf("a fleet page without its scope: %q", q)
		}
	}
	hosts, err := c.ListFleetHosts(context.Background())
	if err != nil || hosts == nil || len(hosts) != 0 {
		t.Fatalf("ListFleetHosts = %#v, %v; want an empty list", hosts, err)
	}
}
