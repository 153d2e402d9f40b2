package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/api"
	"github.com/vmpersona/vmpersona/hostd/auth"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/internal/testetcd"
	"github.com/vmpersona/vmpersona/internal/testguest"
)

// startGuest runs a real guest daemon on a unix socket; killed at the end.
func startGuest(t *testing.T) string {
	t.Helper()
	return "unix:" + testguest.Start(t, nil, nil).Sock
}

const adminToken = "fleet-test-admin-token"

// hostd is one host's REST API over its fleet backend, served over real
// HTTP, with real agent connections.
type hostd struct {
	*host
	srv *httptest.Server
	mgr *agents.Manager
}

func newHostd(t *testing.T, name string, endpoints []string, offline string, instances map[string]string) *hostd {
	t.Helper()
	h := &host{t: t, dir: t.TempDir(), cfg: Config{Endpoints: endpoints, Host: name, Prefix: "/test/", OfflineActivation: offline}}
	h.open()
	hd := serveHostd(t, h, metrics.New(), nil)
	for n, ep := range instances {
		hd.addInstance(n, ep)
	}
	return hd
}

// twoHostds starts a one-member cluster and two host daemons without
// instances, a and b, connected to it.
func twoHostds(t *testing.T) (a, b *hostd) {
	t.Helper()
	c := testetcd.Start(t, 1)
	a, b = newHostd(t, "a", c.Endpoints(), "", nil), newHostd(t, "b", c.Endpoints(), "", nil)
	a.waitConnected()
	b.waitConnected()
	return a, b
}

// serveHostd serves the REST API of host h over real HTTP, with an agent
// manager; with a reconciler, wired as vmpersona-hostd wires it (the
// manager's converger, the backend's rollout runner, the API's). All of it
// stops, and h closes, when the test ends.
func serveHostd(t *testing.T, h *host, m *metrics.Metrics, rec *reconcile.Reconciler) *hostd {
	t.Helper()
	tokens, err := auth.ParseTokens(strings.NewReader(adminToken + ",alice,1,admin\n"))
	if err != nil {
		t.Fatal(err)
	}
	mcfg := agents.Config{Store: h.st, Metrics: m, Logger: testLogger(), Heartbeat: 500 * time.Millisecond, DialTimeout: 2 * time.Second, CallTimeout: 10 * time.Second}
	acfg := api.Config{Store: h.b, Fleet: h.b, Metrics: m, Tokens: tokens, Logger: testLogger(), DefaultScriptTimeout: 20 * time.Second}
	if rec != nil {
		mcfg.Converger, acfg.Reconciler = rec, rec
	}
	mgr := agents.NewManager(mcfg)
	if rec != nil {
		rec.Bind(mgr)
		h.b.SetRolloutRunner(rec.Rollout)
	}
	acfg.Agents = mgr
	s := api.New(acfg)
	srv := httptest.NewUnstartedServer(s)
	srv.Config = api.NewHTTPServer(s, testLogger())
	srv.Start()
	h.b.PublishInstances(context.Background(), 50*time.Millisecond, s.InstanceViews)
	t.Cleanup(func() {
		srv.Close()
		if rec != nil {
			rec.Close()
		}
		mgr.Close()
		h.close()
	})
	return &hostd{host: h, srv: srv, mgr: mgr}
}

// addInstance gives the host's agent manager a static instance.
func (h *hostd) addInstance(name, ep string) {
	h.t.Helper()
	e, err := agents.ParseEndpoint(ep)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.mgr.Add(name, e, "static"); err != nil {
		h.t.Fatal(err)
	}
}

// fleetRow is one instance of a fleet listing (GET /instances?scope=fleet).
type fleetRow struct{ host, id, active string }

// fleetListing is the host's fleet listing: host, instance and the
// persona active on it.
func (h *hostd) fleetListing() []fleetRow {
	h.t.Helper()
	r := h.do("GET", "/instances?scope=fleet", nil)
	if r.status != http.StatusOK {
		h.t.Fatalf("scope=fleet: %d %v", r.status, r.body)
	}
	var out []fleetRow
	for _, v := range r.body["instances"].([]any) {
		m := v.(map[string]any)
		act, _ := m["active"].(map[string]any)
		name, _ := act["persona"].(string)
		out = append(out, fleetRow{fmt.Sprint(m["host"]), fmt.Sprint(m["id"]), name})
	}
	return out
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
}

func (h *hostd) do(method, path string, body any, hdr ...string) answer {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, h.srv.URL+path, rd)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, header: resp.Header}
	raw, _ := io.ReadAll(resp.Body)
	json.Unmarshal(raw, &a.body)
	return a
}

func TestPersonaCreatedOnOneHostIsServedByAnother(t *testing.T) {
	t.Parallel()
	a, b := twoHostds(t)

	created := time.Now()
	r := a.do("POST", "/personas", persona("shared", false))
	if r.status != http.StatusCreated {
		t.Fatalf("create on a: %d %v", r.status, r.body)
	}
	if r.header.Get("ETag") != `"1"` {
		t.Fatalf("ETag %q, want \"1\"", r.header.Get("ETag"))
	}
	// a reads its own write at once.
	if got := a.do("GET", "/personas/shared", nil); got.status != http.StatusOK {
		t.Fatalf("read on a right after its create: %d", got.status)
	}
	var seen time.Duration
	waitFor(t, "b to serve the persona", func() bool {
		if b.do("GET", "/personas/shared", nil).status == http.StatusOK {
			seen = time.Since(created)
			return true
		}
		return false
	})
	t.Logf("persona created through a served by b %v after a's create was sent", seen.Round(time.Microsecond))
	got := b.do("GET", "/personas/shared", nil)
	if got.header.Get(api.HeaderFleetRevision) == "" || got.header.Get(api.HeaderFleetStaleSince) != "" {
		t.Fatalf("b's fleet headers while connected: %v", got.header)
	}

	// An update through b with a's ETag wins once; the second is refused.
	upd := persona("shared", false)
	upd.RestrictedCommands = []string{"rm"}
	if r := b.do("PUT", "/personas/shared", upd, "If-Match", `"1"`); r.status != http.StatusOK {
		t.Fatalf("update through b: %d %v", r.status, r.body)
	}
	if r := a.do("PUT", "/personas/shared", upd, "If-Match", `"1"`); r.status != http.StatusPreconditionFailed {
		t.Fatalf("stale update through a: %d %v, want 412", r.status, r.body)
	}
	// A second default across hosts: 409 naming the holder.
	if r := a.do("POST", "/personas", persona("d1", true)); r.status != http.StatusCreated {
		t.Fatalf("default on a: %d %v", r.status, r.body)
	}
	r = b.do("POST", "/personas", persona("d2", true))
	if r.status != http.StatusConflict || r.body["current_default"] != "d1" {
		t.Fatalf("second default through b: %d %v, want 409 naming d1", r.status, r.body)
	}
	// A retried create with the same Idempotency-Key is answered, not refused.
	r1 := a.do("POST", "/personas", persona("once", false), api.HeaderIdempotencyKey, "k-1")
	r2 := a.do("POST", "/personas", persona("once", false), api.HeaderIdempotencyKey, "k-1")
	if r1.status != http.StatusCreated || r2.status != http.StatusCreated || r2.header.Get("ETag") != `"1"` {
		t.Fatalf("create and its retry with one key: %d then %d %v", r1.status, r2.status, r2.body)
	}
}

func TestWithoutQuorumWritesAre503AndReadsAndActivationsUseTheCopy(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 3)
	a := newHostd(t, "a", c.Endpoints(), OfflineCached, map[string]string{"vm1": startGuest(t)})
	strict := newHostd(t, "strict", c.Endpoints(), OfflineRefuse, nil)
	a.waitConnected()
	strict.waitConnected()
	if r := a.do("POST", "/personas", persona("cached", false)); r.status != http.StatusCreated {
		t.Fatalf("create: %d %v", r.status, r.body)
	}
	waitFor(t, "vm1's agent", func() bool {
		st, err := a.mgr.Get("vm1")
		return err == nil && st.State == "connected"
	})
	c.Kill(1)
	c.Kill(2)

	start := time.Now()
	r := a.do("POST", "/personas", persona("refused", false))
	t.Logf("POST /personas without quorum answered %d after %v", r.status, time.Since(start).Round(time.Millisecond))
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("write without quorum: %d %v, want 503", r.status, r.body)
	}
	waitFor(t, "a to notice the loss", func() bool { return !a.b.Status().Connected })
	waitFor(t, "strict to notice the loss", func() bool { return !strict.b.Status().Connected })
	got := a.do("GET", "/personas/cached", nil)
	if got.status != http.StatusOK || got.header.Get(api.HeaderFleetStaleSince) == "" || got.header.Get(api.HeaderFleetRevision) == "" {
		t.Fatalf("read without quorum: %d, headers %v; want 200 saying since when it is stale", got.status, got.header)
	}
	if r := a.do("POST", "/instances/vm1/personas/cached/activate", nil); r.status != http.StatusOK {
		t.Fatalf("activation from the copy (cached): %d %v", r.status, r.body)
	}
	r = strict.do("POST", "/instances/vm1/personas/cached/activate", nil)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(r.body["detail"]), "refuse") {
		t.Fatalf("activation with refuse: %d %v, want 503 saying it refuses", r.status, r.body)
	}
	if r := a.do("GET", "/personas/refused", nil); r.status != http.StatusNotFound {
		t.Fatalf("the refused write exists locally: %d", r.status)
	}
}

func TestFleetInstanceListing(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	a := newHostd(t, "a", c.Endpoints(), "", map[string]string{"vm1": startGuest(t)})
	b := newHostd(t, "b", c.Endpoints(), "", map[string]string{"vm2": startGuest(t)})
	a.waitConnected()
	b.waitConnected()
	if r := a.do("POST", "/personas", persona("web", false)); r.status != http.StatusCreated {
		t.Fatalf("create: %d %v", r.status, r.body)
	}
	waitFor(t, "web on b", func() bool { return b.do("GET", "/personas/web", nil).status == http.StatusOK })
	if r := b.do("POST", "/instances/vm2/personas/web/activate", nil); r.status != http.StatusOK {
		t.Fatalf("activate on b: %d %v", r.status, r.body)
	}
	want := []fleetRow{{"a", "vm1", ""}, {"b", "vm2", "web"}}
	var last []fleetRow
	waitFor(t, "both hosts' instances in a's fleet listing", func() bool {
		last = a.fleetListing()
		if testing.Verbose() {
			t.Logf("%v", last)
		}
		return fmt.Sprint(last) == fmt.Sprint(want)
	})
	if got := b.fleetListing(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("b's fleet listing %v, want %v", got, want)
	}
	waitFor(t, "both hosts in GET /fleet/hosts", func() bool {
		r := a.do("GET", "/fleet/hosts", nil)
		hs, _ := r.body["hosts"].([]any)
		var names []string
		for _, h := range hs {
			names = append(names, fmt.Sprint(h.(map[string]any)["host"]))
		}
		return r.status == http.StatusOK && fmt.Sprint(names) == "[a b]"
	})
	if r := a.do("GET", "/instances?scope=galaxy", nil); r.status != http.StatusBadRequest || r.body["field"] != "scope" {
		t.Fatalf("scope=galaxy: %d %v, want 400 naming the field", r.status, r.body)
	}
	// An instance the host no longer has leaves the listing.
	b.mgr.Remove("vm2")
	waitFor(t, "vm2 to leave the fleet listing", func() bool { return fmt.Sprint(a.fleetListing()) == fmt.Sprint(want[:1]) })
}
