// Package api is the host daemon's REST API: one table of routes with the
// role each requires, one authentication step, and one mapping from errors
// to problem documents.
package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/auth"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/hostd/store"
)

// Limits of request bodies.
const (
	MaxPersonaBody = 8 << 20 // a persona with its scripts and inline overrides
	MaxExecBody    = 8 << 20 // an exec request with its stdin
	MaxSmallBody   = 64 << 10
)

// Config wires the API to the daemon's parts.
type Config struct {
	Store  store.Backend // Badger (*store.Store) on one host
	Agents *agents.Manager
	// Reconciler keeps each instance's desired state and converges the
	// guests to it; it must be the Agents manager's Converger. nil: one is
	// made here, which tracks the desired state of API requests only.
	Reconciler *reconcile.Reconciler
	Metrics    *metrics.Metrics
	Tokens     *auth.Tokens // nil: no tokens accepted
	// Inventories are discovery sources (libvirt, QMP) merged into the
	// instance listing; ids resolve through them (a libvirt UUID, say).
	Inventories []Inventory
	// Enabler adds the agent channel to a libvirt domain; nil without libvirt.
	Enabler ChannelEnabler
	Logger  *slog.Logger
	// DefaultScriptTimeout bounds activation scripts when a request names none.
	DefaultScriptTimeout time.Duration
	// MaxFileBytes bounds a file pushed into or pulled from a guest
	// (default DefaultMaxFileBytes); beyond it the answer is 413.
	MaxFileBytes int64
	// Fleet is the fleet backend's link to etcd; nil outside fleet mode.
	Fleet FleetLink
	// InstanceLabels answers an instance's labels (libvirt metadata, else
	// its flag); nil: none shown. Labeler writes a libvirt domain's.
	InstanceLabels func(instance string) map[string]string
	Labeler        Labeler
}

// Server is the REST API handler.
type Server struct {
	cfg    Config
	router *httprouter.Router
	routes []route
	// personaJSON caches encoded GET /personas/{name} answers.
	personaJSON personaJSONCache
	// authFails bounds how often refused requests are audited.
	authFails authFailLimiter
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error

// route is one endpoint: method, path, who may call it, and what it does.
type route struct {
	method string
	path   string
	role   auth.Role // RoleNone: open to everyone
	// action says what the route does, for the 403 answer ("activating a
	// persona needs the operator role"): users are told the action, not
	// the route pattern.
	action  string
	bodyMax int64
	// long routes wait on the guest: their write deadline follows the request.
	long    bool
	handler handlerFunc

	// The route's contract, which a test compares with openapi.json field
	// by field: the Go types of its JSON request body (nil: none) and of its
	// answer (nil: no JSON answer), the answer's status (0: 200), the
	// headers it carries, and the type of a line when it streams NDJSON.
	in, out any
	status  int
	headers []string
	line    any
	// raw routes carry a file's bytes (application/octet-stream): in the
	// request body of a PUT, in the answer of a GET.
	raw bool
	// stdin routes also take apitypes.ExecStdinMediaType, whose body is not
	// bounded by bodyMax as a whole: the handler bounds its document.
	stdin bool
}

// routeTable is every endpoint of the API. Access is declared here, beside
// each route, and enforced in one place (serve).
// doing is the route's action for messages; "this request" when it has none.
func (rt route) doing() string {
	if rt.action == "" {
		return "this request"
	}
	return rt.action
}

func (s *Server) routeTable() []route {
	return []route{
		{method: "GET", path: "/healthz", handler: s.healthz, out: apitypes.Health{}},
		{method: "GET", path: "/readyz", handler: s.readyz, out: apitypes.Ready{}},
		{method: "GET", path: "/metrics", handler: s.metricsHandler()},
		{method: "GET", path: "/openapi.json", handler: s.openapi},

		{method: "GET", path: "/personas", action: "listing personas", role: auth.RoleViewer, handler: s.listPersonas, out: apitypes.PersonaList{}},
		{method: "POST", path: "/personas", action: "creating a persona", role: auth.RoleAdmin, bodyMax: MaxPersonaBody, handler: s.createPersona,
			in: apitypes.Persona{}, out: apitypes.Persona{}, status: http.StatusCreated, headers: []string{"ETag", "Location"}},
		{method: "GET", path: "/personas/:name", action: "reading a persona", role: auth.RoleViewer, handler: s.getPersona,
			out: apitypes.Persona{}, headers: []string{"ETag"}},
		{method: "PUT", path: "/personas/:name", action: "changing a persona", role: auth.RoleAdmin, bodyMax: MaxPersonaBody, handler: s.updatePersona,
			in: apitypes.Persona{}, out: apitypes.Persona{}, headers: []string{"ETag"}},
		{method: "DELETE", path: "/personas/:name", action: "deleting a persona", role: auth.RoleAdmin, handler: s.deletePersona, status: http.StatusNoContent},
		{method: "POST", path: "/personas/:name/rollout", action: "rolling out a persona", role: auth.RoleOperator, bodyMax: MaxRolloutBody, long: true, handler: s.rollout,
			in: apitypes.RolloutRequest{}, out: apitypes.RolloutAnswer{}, line: apitypes.RolloutLine{}},

		{method: "GET", path: "/instances", action: "listing instances", role: auth.RoleViewer, handler: s.listInstances, out: apitypes.InstanceList{}},
		{method: "GET", path: "/instances/:id", action: "reading an instance", role: auth.RoleViewer, handler: s.getInstance, out: apitypes.Instance{}},
		{method: "GET", path: "/instances/:id/active_persona", action: "reading an instance's active persona", role: auth.RoleViewer, handler: s.activePersona, out: apitypes.ActivePersona{}},
		{method: "POST", path: "/instances/:id/personas/:persona/activate", action: "activating a persona", role: auth.RoleOperator, bodyMax: MaxSmallBody, long: true, handler: s.activate,
			in: apitypes.ActivateRequest{}, out: apitypes.ActivationResult{}},
		{method: "POST", path: "/instances/:id/deactivate", action: "deactivating a persona", role: auth.RoleOperator, bodyMax: MaxSmallBody, long: true, handler: s.deactivate,
			in: apitypes.ActivateRequest{}, out: apitypes.ActivationResult{}},
		{method: "POST", path: "/instances/:id/enable", action: "enabling an instance's channel", role: auth.RoleAdmin, bodyMax: MaxSmallBody, long: true, handler: s.enableChannel, out: apitypes.EnableResult{}},
		{method: "PUT", path: "/instances/:id/labels", action: "labelling instances", role: auth.RoleAdmin, bodyMax: MaxSmallBody, long: true, handler: s.setInstanceLabels,
			in: apitypes.InstanceLabels{}, out: apitypes.InstanceLabels{}},
		{method: "POST", path: "/instances/:id/exec", action: "running a command in an instance", role: auth.RoleOperator, bodyMax: MaxExecBody, long: true, stdin: true, handler: s.exec,
			in: apitypes.ExecRequest{}, out: apitypes.ExecResult{}, line: apitypes.ExecStreamLine{}},

		{method: "PUT", path: "/instances/:id/files", action: "writing files in guests", role: auth.RoleAdmin, bodyMax: s.cfg.MaxFileBytes, long: true, handler: s.pushFile,
			raw: true, out: apitypes.FileResult{}},
		{method: "GET", path: "/instances/:id/files", action: "reading files from guests", role: auth.RoleAdmin, long: true, handler: s.pullFile, raw: true},

		{method: "GET", path: "/assignments", action: "listing assignments", role: auth.RoleViewer, handler: s.listAssignments, out: apitypes.AssignmentList{}},
		{method: "GET", path: "/assignments/:name", action: "reading an assignment", role: auth.RoleViewer, handler: s.getAssignment, out: apitypes.Assignment{}, headers: []string{"ETag"}},
		{method: "PUT", path: "/assignments/:name", action: "changing an assignment", role: auth.RoleAdmin, bodyMax: MaxSmallBody, handler: s.putAssignment,
			in: apitypes.Assignment{}, out: apitypes.Assignment{}, headers: []string{"ETag"}},
		{method: "DELETE", path: "/assignments/:name", action: "deleting an assignment", role: auth.RoleAdmin, handler: s.deleteAssignment, status: http.StatusNoContent},
		{method: "POST", path: "/fleet/rollouts/:persona", action: "rolling out a persona across the fleet", role: auth.RoleOperator, bodyMax: MaxSmallBody, handler: s.requestFleetRollout,
			in: apitypes.FleetRolloutRequest{}, out: apitypes.FleetRollout{}, status: http.StatusAccepted, headers: []string{"Location"}},
		{method: "GET", path: "/fleet/rollouts/:persona", action: "reading a fleet rollout", role: auth.RoleViewer, handler: s.fleetRollout, out: apitypes.FleetRolloutStatus{}},
		{method: "GET", path: "/fleet/hosts", action: "listing fleet hosts", role: auth.RoleViewer, handler: s.fleetHosts, out: apitypes.FleetHostList{}},

		{method: "GET", path: "/audit", action: "reading the audit log", role: auth.RoleAdmin, handler: s.queryAudit, out: apitypes.AuditPage{}},
	}
}

// New builds the API handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.MaxFileBytes <= 0 {
		cfg.MaxFileBytes = DefaultMaxFileBytes
	}
	if cfg.DefaultScriptTimeout <= 0 {
		cfg.DefaultScriptTimeout = 5 * time.Minute
	}
	if cfg.Reconciler == nil {
		cfg.Reconciler = reconcile.New(reconcile.Config{Store: cfg.Store, Metrics: cfg.Metrics, Logger: cfg.Logger})
		cfg.Reconciler.Bind(cfg.Agents)
	}
	if cfg.Agents != nil {
		// One series per instance, read at scrape time (a second API on
		// the same registry finds it registered already).
		mgr := cfg.Agents
		_ = cfg.Metrics.WatchInstances(func() []metrics.InstanceAgent {
			var out []metrics.InstanceAgent
			for _, st := range mgr.List() {
				out = append(out, metrics.InstanceAgent{Instance: st.Name, Connected: st.State == agents.StateConnected})
			}
			return out
		})
	}
	s := &Server{cfg: cfg, router: httprouter.New()}
	s.routes = s.routeTable()
	for _, rt := range s.routes {
		s.router.Handle(rt.method, rt.path, s.serve(rt))
		if rt.method == http.MethodGet {
			// HEAD answers what GET would, without the body (net/http
			// drops it).
			s.router.Handle(http.MethodHead, rt.path, s.serve(rt))
		}
	}
	s.router.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, problem(http.StatusNotFound, "no-route", "Not found", "no endpoint "+r.URL.Path+"; see /openapi.json"))
	})
	s.router.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, problem(http.StatusMethodNotAllowed, "method-not-allowed", "Method not allowed",
			r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+w.Header().Get("Allow")))
	})
	s.router.PanicHandler = func(w http.ResponseWriter, r *http.Request, v any) {
		if v == http.ErrAbortHandler {
			panic(v) // an answer cut on purpose: net/http closes the connection
		}
		cfg.Logger.Error("handler panic", "path", r.URL.Path, "panic", v)
		writeProblem(w, problem(http.StatusInternalServerError, "internal", "Internal error", "the request failed; see the daemon's log"))
	}
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type identityKey struct{}

// identityOf returns the caller recognised for this request.
func identityOf(r *http.Request) auth.Identity {
	id, _ := r.Context().Value(identityKey{}).(auth.Identity)
	return id
}

// serve wraps a route's handler with authentication, authorisation, body
// limits, metrics and error mapping.
func (s *Server) serve(rt route) httprouter.Handle {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.status
			if code == 0 {
				code = http.StatusOK
			}
			s.cfg.Metrics.HTTPDuration.WithLabelValues(rt.path, r.Method, strconv.Itoa(code)).Observe(time.Since(start).Seconds())
		}()
		if rt.role != auth.RoleNone {
			id, p := s.authenticate(r)
			if p == nil && id.Role < rt.role {
				p = problem(http.StatusForbidden, "forbidden", "Forbidden",
					"user "+id.User+" has role "+id.Role.String()+"; "+rt.doing()+" needs the "+rt.role.String()+" role")
			}
			if p != nil {
				if p.Status == http.StatusUnauthorized {
					// RFC 6750 §3: the scheme to use, and why a token failed.
					c := `Bearer realm="vmpersona"`
					if r.Header.Get("Authorization") != "" {
						c += `, error="invalid_token"`
					}
					sw.Header().Set("WWW-Authenticate", c)
				}
				s.auditAuthFailure(r, rt, id, p)
				writeProblem(sw, p)
				return
			}
			r = r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
			s.setFleetHeaders(sw)
		}
		switch {
		case rt.stdin && apitypes.IsExecStdin(r.Header.Get("Content-Type")):
			f := newInputFeed(r.Body)
			r.Body = f
			defer f.drain(sw)
		case rt.bodyMax > 0:
			r.Body = http.MaxBytesReader(sw, r.Body, rt.bodyMax)
		default:
			r.Body = http.MaxBytesReader(sw, r.Body, MaxSmallBody)
		}
		if rt.long {
			// Activations and execs last as long as the guest needs, within
			// their own deadlines; lift the server's write timeout for them.
			http.NewResponseController(sw).SetWriteDeadline(time.Time{})
		}
		if err := rt.handler(sw, r, ps); err != nil {
			p := toProblem(err)
			if p.Status >= 500 {
				s.cfg.Logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", p.Status, "err", err)
			}
			if sw.status == 0 {
				writeProblem(sw, p)
			}
		}
	}
}

// inputDrain is how long the rest of a streamed input nobody read is taken
// and dropped after the answer.
const inputDrain = 2 * time.Second

// inputFeed hands a streamed-input request's body to its handler through a
// pipe filled by one goroutine, so that a command that ends before its
// input does stops taking it at once (Close) without touching the
// connection's read deadline: a deadline in the past while the server's
// own read waits at the body's end would cancel the context of every later
// request on the connection.
type inputFeed struct {
	pr   *io.PipeReader
	done chan struct{}
}

var errInputStopped = errors.New("the command takes no more input")

func newInputFeed(body io.Reader) *inputFeed {
	pr, pw := io.Pipe()
	f := &inputFeed{pr: pr, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		_, err := io.Copy(pw, body)
		pw.CloseWithError(err)
		if err != nil {
			// Stopped (or the body failed): drop what still comes, within
			// the deadline drain sets.
			io.Copy(io.Discard, body)
		}
	}()
	return f
}

func (f *inputFeed) Read(p []byte) (int, error) { return f.pr.Read(p) }

// Close stops the input: a Read that waits returns at once.
func (f *inputFeed) Close() error { return f.pr.CloseWithError(errInputStopped) }

// drain, after the answer, reads and drops the input the command did not
// take, for up to inputDrain: an HTTP/1.1 client still sending it when the
// connection closes fails its write, and may report that instead of the
// answer it was sent.
func (f *inputFeed) drain(w http.ResponseWriter) {
	f.Close()
	rc := http.NewResponseController(w)
	rc.Flush()
	rc.SetReadDeadline(time.Now().Add(inputDrain))
	<-f.done
}

// authenticate recognises the caller: a bearer token wins; without one, the
// unix socket's peer credentials.
func (s *Server) authenticate(r *http.Request) (auth.Identity, *apitypes.Problem) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return auth.Identity{}, problem(http.StatusUnauthorized, "unauthorized", "Unauthorized", "the Authorization header must be \"Bearer TOKEN\"")
		}
		id, ok := s.cfg.Tokens.Lookup(strings.TrimSpace(tok))
		if !ok {
			return auth.Identity{}, problem(http.StatusUnauthorized, "unauthorized", "Unauthorized", "unknown token")
		}
		return id, nil
	}
	if peer, ok := r.Context().Value(peerKey{}).(auth.Peer); ok {
		id := auth.PeerIdentity(peer)
		if id.Role != auth.RoleNone {
			return id, nil
		}
		return id, problem(http.StatusUnauthorized, "unauthorized", "Unauthorized",
			"socket peer "+id.User+" is neither root nor in group "+auth.AdminGroup+"; send a bearer token")
	}
	return auth.Identity{}, problem(http.StatusUnauthorized, "unauthorized", "Unauthorized", "send a bearer token (Authorization: Bearer TOKEN)")
}

func auditHost(typ, instance, actor, detail string) store.AuditEvent {
	return store.AuditEvent{Type: typ, Instance: instance, Actor: actor, Detail: detail}
}

// appendAudit records a host-side event and counts it.
func (s *Server) appendAudit(ev store.AuditEvent) error {
	ev.Source = store.SourceHost
	if _, err := s.cfg.Store.AppendAudit(ev); err != nil {
		return err
	}
	s.cfg.Metrics.AuditEvents.WithLabelValues(ev.Type).Inc()
	return nil
}

type peerKey struct{}

// ConnContext records unix socket peer credentials on each connection's
// context; set it as http.Server.ConnContext.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if p, ok := auth.PeerOf(c); ok {
		return context.WithValue(ctx, peerKey{}, p)
	}
	return ctx
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	writeJSON(w, http.StatusOK, apitypes.Health{Status: "ok"})
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	if err := s.cfg.Store.Ready(); err != nil {
		return problem(http.StatusServiceUnavailable, "not-ready", "Not ready", "store: "+err.Error())
	}
	writeJSON(w, http.StatusOK, apitypes.Ready{Status: "ready", Agents: len(s.cfg.Agents.List())})
	return nil
}

func (s *Server) metricsHandler() handlerFunc {
	h := promhttp.HandlerFor(s.cfg.Metrics.Registry, promhttp.HandlerOpts{})
	return func(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
		h.ServeHTTP(w, r)
		return nil
	}
}

// NewHTTPServer returns an http.Server for h with the daemon's timeouts.
func NewHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       ConnContext,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}
