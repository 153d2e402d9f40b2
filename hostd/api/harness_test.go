package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/auth"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testguest"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// startGuest runs a real guest daemon listening on a unix socket and returns
// its endpoint. It is killed when the test ends.
func startGuest(t *testing.T) string {
	t.Helper()
	return "unix:" + testguest.Start(t, nil, nil).Sock
}

// hungAgent accepts connections and never answers: a guest that hangs.
func hungAgent(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hung.sock")
	testproc.ServeUnix(t, sock, testproc.Hold)
	return "unix:" + sock
}

const (
	tokAdmin    = "admin-token-0123456789"
	tokOperator = "operator-token-0123456789"
	tokViewer   = "viewer-token-0123456789"
)

type env struct {
	t       *testing.T
	srv     *httptest.Server
	store   *store.Store
	mgr     *agents.Manager
	metrics *metrics.Metrics
	api     *Server
}

// newEnv starts the API over a real Badger store and real agent connections
// to the given instances (name → endpoint).
func newEnv(t *testing.T, instances map[string]string) *env {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := auth.ParseTokens(strings.NewReader(
		tokAdmin + ",alice,1,\"admin\"\n" + tokOperator + ",oscar,2,operator\n" + tokViewer + ",victor,3,viewer\n"))
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.Default()
	}
	mgr := agents.NewManager(agents.Config{Store: st, Metrics: m, Logger: log, Heartbeat: 500 * time.Millisecond, DialTimeout: 2 * time.Second, CallTimeout: 5 * time.Second})
	for name, ep := range instances {
		e, err := agents.ParseEndpoint(ep)
		if err != nil {
			t.Fatal(err)
		}
		if err := mgr.Add(name, e, "static"); err != nil {
			t.Fatal(err)
		}
	}
	s := New(Config{Store: st, Agents: mgr, Metrics: m, Tokens: tokens, Logger: log, DefaultScriptTimeout: 20 * time.Second})
	srv := httptest.NewUnstartedServer(s)
	srv.Config = NewHTTPServer(s, s.cfg.Logger)
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		mgr.Close()
		st.Close()
	})
	return &env{t: t, srv: srv, store: st, mgr: mgr, metrics: m, api: s}
}

// waitConnected waits until the instance's agent has a session.
func (e *env) waitConnected(name string) {
	e.t.Helper()
	testproc.WaitFor(e.t, "instance "+name+" to connect", func() bool {
		st, err := e.mgr.Get(name)
		return err == nil && st.State == "connected"
	})
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("answer is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

func (e *env) do(method, path, token string, body any, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	checkAgainstOpenAPI(e.t, req, res.StatusCode, res.Header, b)
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

// must checks the status and, for errors, the problem document's shape.
func (e *env) must(r resp, status int) resp {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if status >= 400 {
		if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
			e.t.Fatalf("error answer has Content-Type %q, want application/problem+json", ct)
		}
		m := r.json(e.t)
		for _, k := range []string{"type", "title", "status", "detail"} {
			if _, ok := m[k]; !ok {
				e.t.Fatalf("problem document lacks %q: %s", k, r.body)
			}
		}
	}
	return r
}
