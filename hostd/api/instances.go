package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

type agentView struct {
	State        string     `json:"state"`
	Version      string     `json:"version,omitempty"`
	BootID       string     `json:"boot_id,omitempty"`
	Capabilities []string   `json:"capabilities"`
	ConnectedAt  *time.Time `json:"connected_at,omitempty"`
	LastError    string     `json:"last_error,omitempty"`
}

type instanceView struct {
	ID            string    `json:"id"`
	Source        string    `json:"source"`
	Endpoint      string    `json:"endpoint"`
	State         string    `json:"state"`
	Agent         agentView `json:"agent"`
	ActivePersona *string   `json:"active_persona"`
	Reason        string    `json:"reason,omitempty"`
	UUID          string    `json:"uuid,omitempty"`
	PortOpen      *bool     `json:"port_open,omitempty"`
}

func (s *Server) view(is instanceState) instanceView {
	st := is.agent
	v := instanceView{
		ID: is.name, Source: st.Source, Endpoint: st.Endpoint, State: "unknown",
		Agent: agentView{State: st.State, Version: st.AgentVersion, BootID: st.BootID, Capabilities: st.Capabilities, LastError: st.LastError},
	}
	if !is.managed {
		v.Agent.State = agents.StateDisconnected
	}
	if v.Agent.Capabilities == nil {
		v.Agent.Capabilities = []string{}
	}
	if st.State == agents.StateConnected {
		t := st.ConnectedAt
		v.Agent.ConnectedAt = &t
		v.State = "running"
	}
	if d := is.disc; d != nil {
		v.Source, v.State, v.UUID, v.PortOpen = d.Source, d.State, d.UUID, d.PortOpen
		if v.Endpoint == "" {
			v.Endpoint = d.Endpoint
		}
		v.Reason = d.Reason
	}
	if st.Active != nil {
		name := st.Active.Persona.Name
		v.ActivePersona = &name
	} else if st.State != agents.StateConnected {
		if rec, err := s.cfg.Store.GetInstance(is.name); err == nil && rec.Persona != nil {
			name := rec.Persona.Name
			v.ActivePersona = &name
		}
	}
	if v.Reason == "" && st.State != agents.StateConnected && st.LastError != "" {
		v.Reason = "agent unreachable: " + st.LastError
	}
	return v
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	all := s.allInstances()
	out := make([]instanceView, 0, len(all))
	for _, is := range all {
		out = append(out, s.view(is))
	}
	writeJSON(w, http.StatusOK, map[string]any{"instances": out})
	return nil
}

func (s *Server) getInstance(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	is, err := s.resolve(ps.ByName("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.view(is))
	return nil
}

type activeView struct {
	Instance     string            `json:"instance"`
	Persona      *protocol.Persona `json:"persona"`
	Revision     uint64            `json:"revision"`
	ActivationID string            `json:"activation_id,omitempty"`
	ActivatedAt  *time.Time        `json:"activated_at"`
	Stale        bool              `json:"stale"`
}

func (s *Server) activePersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	is, err := s.resolve(ps.ByName("id"))
	if err != nil {
		return err
	}
	st := is.agent
	v := activeView{Instance: is.name}
	rec, err := s.cfg.Store.GetInstance(is.name)
	switch {
	case err == nil:
		if rec.Persona != nil {
			p := *rec.Persona
			validate.Normalize(&p)
			v.Persona = &p
			v.Revision = rec.Revision
			v.ActivationID = rec.ActivationID
			t := rec.ActivatedAt
			v.ActivatedAt = &t
		}
	case errors.Is(err, store.ErrNotFound):
	default:
		return err
	}
	// The record is what the guest last confirmed; it is stale while no
	// session confirms it now.
	v.Stale = st.State != agents.StateConnected
	if !v.Stale {
		switch {
		case st.Active == nil:
			v.Stale = v.Persona != nil
		default:
			v.Stale = v.ActivationID != st.Active.ActivationID
		}
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// readOptionalJSON decodes a body that may be empty.
func readOptionalJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return jsonProblem(err)
	}
	if len(body) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytesReader(body))
	return decodeJSON(r, v)
}

type activateRequest struct {
	ScriptTimeoutSeconds float64 `json:"script_timeout_seconds"`
}

func (s *Server) scriptTimeout(sec float64, field string) (time.Duration, error) {
	if sec < 0 || sec > 86400 {
		return 0, problem(http.StatusUnprocessableEntity, "invalid-field", "Invalid field",
			fmt.Sprintf("%s must be between 0 and 86400 seconds", field)).with("field", field)
	}
	if sec == 0 {
		return s.cfg.DefaultScriptTimeout, nil
	}
	return time.Duration(sec * float64(time.Second)), nil
}

// target resolves the instance a request names and checks that its agent
// can be reached.
func (s *Server) target(id string) (string, error) {
	is, err := s.resolve(id)
	if err != nil {
		return "", err
	}
	return is.reachable()
}

// activation reads what activations and deactivations share: the optional
// body with the script timeout, and the instance.
func (s *Server) activation(r *http.Request, ps httprouter.Params) (inst string, timeout time.Duration, err error) {
	var req activateRequest
	if err := readOptionalJSON(r, &req); err != nil {
		return "", 0, err
	}
	if timeout, err = s.scriptTimeout(req.ScriptTimeoutSeconds, "script_timeout_seconds"); err != nil {
		return "", 0, err
	}
	inst, err = s.target(ps.ByName("id"))
	return inst, timeout, err
}

func (s *Server) activate(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	inst, timeout, err := s.activation(r, ps)
	if err != nil {
		return err
	}
	name := ps.ByName("persona")
	if err := validate.Name(name); err != nil {
		return err
	}
	p, err := s.cfg.Store.GetPersona(name)
	if err != nil {
		return personaErr(name, err)
	}
	actor := identityOf(r).User
	// The request is audited in the commit that records the guest's new
	// persona, or on its own when there is none (failure, refusal, timeout).
	pending, err := s.cfg.Store.DeferAudit(store.AuditEvent{Type: "activation_requested", Instance: inst, Actor: actor, Persona: name,
		Detail: "revision " + strconv.FormatUint(p.Revision, 10)})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*timeout+30*time.Second)
	defer cancel()
	res, err := s.cfg.Agents.Activate(ctx, inst, p, actor, "api", timeout)
	s.flushAudit(pending)
	if err != nil {
		return err
	}
	return writeActivation(w, inst, res)
}

// flushAudit makes a deferred host audit event durable and counts it. The
// guest has acted by then, so a failure to write (the store is failing) is
// logged and the caller still gets the guest's answer; the guest's own audit
// of the activation arrives separately.
func (s *Server) flushAudit(p *store.PendingAudit) {
	ev, err := p.Flush()
	if err != nil {
		s.cfg.Logger.Error("audit write failed", "type", ev.Type, "instance", ev.Instance, "err", err)
		return
	}
	s.cfg.Metrics.AuditEvents.WithLabelValues(ev.Type).Inc()
}

func (s *Server) deactivate(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	inst, timeout, err := s.activation(r, ps)
	if err != nil {
		return err
	}
	actor := identityOf(r).User
	pending, err := s.cfg.Store.DeferAudit(store.AuditEvent{Type: "deactivation_requested", Instance: inst, Actor: actor})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*timeout+30*time.Second)
	defer cancel()
	res, err := s.cfg.Agents.Deactivate(ctx, inst, actor, timeout)
	s.flushAudit(pending)
	if err != nil {
		return err
	}
	return writeActivation(w, inst, res)
}

// writeActivation answers an activation or deactivation by its result.
func writeActivation(w http.ResponseWriter, instance string, res protocol.ActivateResult) error {
	switch res.Result {
	case protocol.ResultActivated, protocol.ResultDeactivated:
		out := map[string]any{"instance": instance, "result": res.Result, "duration_ms": res.DurationMillis}
		if a := res.Active; a != nil {
			out["persona"] = a.Persona.Name
			out["revision"] = a.Revision
			out["activation_id"] = a.ActivationID
			out["activated_at"] = a.ActivatedAt
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	case protocol.ResultAborted, protocol.ResultRolledBack:
		what := "pre-activation script failed; nothing changed"
		if res.Result == protocol.ResultRolledBack {
			what = "post-activation script failed; the previous persona is back"
		}
		p := problem(http.StatusConflict, "activation-"+res.Result, "Activation "+res.Result, what).
			with("result", res.Result).with("phase", res.Phase).with("instance", instance)
		if sc := res.Script; sc != nil {
			p.with("exit_code", sc.ExitCode).with("signal", sc.Signal).with("timed_out", sc.TimedOut).
				with("stdout", sc.Stdout).with("stderr", sc.Stderr)
			if sc.TimedOut {
				p.Detail += " (the script timed out)"
			} else {
				p.Detail += fmt.Sprintf(" (exit code %d)", sc.ExitCode)
			}
		}
		return p
	}
	return problem(http.StatusBadGateway, "activation-failed", "The guest could not apply the persona", res.Error).
		with("result", res.Result).with("instance", instance)
}

type execRequest struct {
	Command        string            `json:"command"`
	Args           []string          `json:"args"`
	Env            map[string]string `json:"env"`
	Stdin          string            `json:"stdin"`
	Cwd            string            `json:"cwd"`
	TimeoutSeconds float64           `json:"timeout_seconds"`
}

func invalid(field, format string, a ...any) *Problem {
	return problem(http.StatusUnprocessableEntity, "invalid-field", "Invalid field", field+": "+fmt.Sprintf(format, a...)).with("field", field)
}

func (q *execRequest) check() error {
	switch {
	case q.Command == "":
		return invalid("command", "must not be empty")
	case len(q.Command) > 4096 || hasNUL(q.Command):
		return invalid("command", "must be at most 4096 bytes without NUL")
	case q.Cwd != "" && (!path.IsAbs(q.Cwd) || hasNUL(q.Cwd)):
		return invalid("cwd", "must be an absolute path")
	case q.TimeoutSeconds < 0 || q.TimeoutSeconds > 86400:
		return invalid("timeout_seconds", "must be between 0 and 86400")
	case len(q.Args) > 65536:
		return invalid("args", "at most 65536 arguments")
	}
	for i, a := range q.Args {
		if hasNUL(a) {
			return invalid(fmt.Sprintf("args[%d]", i), "must not contain NUL")
		}
	}
	for k, v := range q.Env {
		if err := validate.EnvName(k); err != nil {
			return invalid("env."+k, "%v", err)
		}
		if hasNUL(v) {
			return invalid("env."+k, "value must not contain NUL")
		}
	}
	return nil
}

func hasNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

// execLine is one NDJSON line of a streamed exec.
type execLine struct {
	Stream string `json:"stream"`
	Data   string `json:"data"`
}

type execExit struct {
	Stream string `json:"stream"` // "exit"
	protocol.ExecResult
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	stream, err := boolQuery(r, "stream")
	if err != nil {
		return err
	}
	var req execRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := req.check(); err != nil {
		return err
	}
	inst, err := s.target(ps.ByName("id"))
	if err != nil {
		return err
	}
	timeout := 30 * time.Second
	if req.TimeoutSeconds > 0 {
		timeout = time.Duration(req.TimeoutSeconds * float64(time.Second))
	}
	preq := protocol.Exec{
		Command: req.Command, Args: req.Args, Env: req.Env, Cwd: req.Cwd,
		TimeoutMillis: timeout.Milliseconds(), Stream: stream, Actor: identityOf(r).User,
	}
	if req.Stdin != "" {
		preq.Stdin = []byte(req.Stdin)
	}
	// The guest kills the command at its timeout; the host waits a little
	// longer for that answer before giving up on the agent.
	ctx, cancel := context.WithTimeout(r.Context(), timeout+10*time.Second)
	defer cancel()

	if !stream {
		res, err := s.cfg.Agents.Exec(ctx, inst, preq, nil)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}

	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	rc := http.NewResponseController(w)
	started := false
	start := func() {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
		}
	}
	res, err := s.cfg.Agents.Exec(ctx, inst, preq, func(sb byte, data []byte) {
		start()
		name := "stdout"
		if sb == protocol.StreamStderr {
			name = "stderr"
		}
		enc.Encode(execLine{Stream: name, Data: string(data)})
		rc.Flush()
	})
	if err != nil {
		if !started {
			return err
		}
		// Output went out already: end the stream with the problem.
		p := toProblem(err)
		enc.Encode(map[string]any{"stream": "error", "status": p.Status, "title": p.Title, "detail": p.Detail})
		return nil
	}
	start()
	enc.Encode(execExit{Stream: "exit", ExecResult: res})
	rc.Flush()
	return nil
}
