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

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

func (s *Server) view(is instanceState) (apitypes.Instance, error) {
	st := is.agent
	v := apitypes.Instance{
		ID: is.name, Source: st.Source, Endpoint: st.Endpoint, State: apitypes.StateUnknown,
		Agent: apitypes.Agent{State: st.State, Version: st.AgentVersion, BootID: st.BootID, Capabilities: st.Capabilities, LastError: st.LastError, LandlockABI: st.LandlockABI},
	}
	if !is.managed {
		v.Agent.State = agents.StateDisconnected
	}
	if v.Agent.Capabilities == nil {
		v.Agent.Capabilities = []string{}
	}
	if st.State == agents.StateConnected {
		v.Agent.ConnectedAt = st.ConnectedAt
		v.State = apitypes.StateRunning
	}
	if d := is.disc; d != nil {
		v.Source, v.State, v.UUID, v.PortOpen = d.Source, d.State, d.UUID, d.PortOpen
		if v.Endpoint == "" {
			v.Endpoint = d.Endpoint
		}
		v.Reason = d.Reason
	}
	if s.cfg.InstanceLabels != nil {
		v.Labels = s.cfg.InstanceLabels(is.name)
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
	sync, err := s.cfg.Reconciler.Status(is.name, st, is.managed)
	if err != nil {
		return v, err
	}
	v.InstanceSync = sync
	return v, nil
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	switch scope := r.URL.Query().Get("scope"); scope {
	case "", "host":
	case "fleet":
		return s.listFleetInstances(w, r)
	default:
		return problem(http.StatusBadRequest, "bad-query", "Bad query parameter", fmt.Sprintf("scope=%q: want host or fleet", scope), "field", "scope")
	}
	limit, after, err := pageQuery(r)
	if err != nil {
		return err
	}
	all := s.allInstances()
	from, to, next := pageOf(len(all), func(i int) string { return all[i].name }, limit, after)
	all = all[from:to]
	out := apitypes.InstanceList{Instances: make([]apitypes.Instance, 0, len(all)), Next: next}
	for _, is := range all {
		v, err := s.view(is)
		if err != nil {
			return err
		}
		out.Instances = append(out.Instances, v)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) getInstance(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	is, err := s.resolve(ps.ByName("id"))
	if err != nil {
		return err
	}
	v, err := s.view(is)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (s *Server) activePersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	is, err := s.resolve(ps.ByName("id"))
	if err != nil {
		return err
	}
	st := is.agent
	v := apitypes.ActivePersona{Instance: is.name}
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
	case errors.Is(err, errdefs.ErrNotFound):
	default:
		return err
	}
	// The record is what the guest last confirmed; it is stale whenever the
	// instance is not in sync with its desired state (unreachable, pending,
	// failed, or drifted: the persona changed since).
	sync, err := s.cfg.Reconciler.Status(is.name, st, is.managed)
	if err != nil {
		return err
	}
	v.Stale = sync.Sync != apitypes.SyncInSync
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

func (s *Server) scriptTimeout(sec float64, field string) (time.Duration, error) {
	if sec < 0 || sec > 86400 {
		return 0, errdefs.InvalidField(field, fmt.Sprintf("%s must be between 0 and 86400 seconds", field))
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
	var req apitypes.ActivateRequest
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
	dryRun, err := boolQuery(r, "dry_run")
	if err != nil {
		return err
	}
	force, err := boolQuery(r, "force")
	if err != nil {
		return err
	}
	if !dryRun {
		if err := s.fleetActivation(); err != nil {
			return err
		}
	}
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
	if dryRun {
		return s.dryRun(w, r, inst, p)
	}
	actor := identityOf(r).User
	if !force {
		if out, ok, err := s.unchanged(inst, p); err != nil || ok {
			if err != nil {
				return err
			}
			s.appendAudit(store.AuditEvent{Type: protocol.AuditActivationRequested, Instance: inst, Actor: actor, Persona: name,
				Result: apitypes.ResultUnchanged, Detail: "revision " + strconv.FormatUint(p.Revision, 10)})
			writeJSON(w, http.StatusOK, out)
			return nil
		}
	}
	// The request is audited in the commit that records the guest's new
	// persona, or on its own when there is none (failure, refusal, timeout).
	requested := store.AuditEvent{Type: protocol.AuditActivationRequested, Instance: inst, Actor: actor, Persona: name,
		Detail: "revision " + strconv.FormatUint(p.Revision, 10)}
	ctx, cancel := context.WithTimeout(r.Context(), 2*timeout+30*time.Second)
	defer cancel()
	res, err := s.cfg.Reconciler.Activate(ctx, inst, p, actor, reconcile.ReasonAPI, timeout, requested)
	if err != nil {
		return err
	}
	return writeActivation(w, inst, res)
}

// unchanged reports whether activating p on the instance would change
// nothing: the guest holds p at its current revision and the instance is in
// sync with its desired state (which is then p too).
func (s *Server) unchanged(inst string, p protocol.Persona) (apitypes.ActivationResult, bool, error) {
	is, err := s.resolve(inst)
	if err != nil {
		return apitypes.ActivationResult{}, false, err
	}
	a := is.agent.Active
	if a == nil || a.Persona.Name != p.Name || a.Revision != p.Revision {
		return apitypes.ActivationResult{}, false, nil
	}
	sync, err := s.cfg.Reconciler.Status(is.name, is.agent, is.managed)
	if err != nil || sync.Sync != apitypes.SyncInSync {
		return apitypes.ActivationResult{}, false, err
	}
	return apitypes.ActivationResult{Instance: inst, Result: apitypes.ResultUnchanged, Persona: p.Name,
		Revision: a.Revision, ActivationID: a.ActivationID, ActivatedAt: a.ActivatedAt}, true, nil
}

func (s *Server) deactivate(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	inst, timeout, err := s.activation(r, ps)
	if err != nil {
		return err
	}
	actor := identityOf(r).User
	requested := store.AuditEvent{Type: protocol.AuditDeactivationRequested, Instance: inst, Actor: actor}
	ctx, cancel := context.WithTimeout(r.Context(), 2*timeout+30*time.Second)
	defer cancel()
	res, err := s.cfg.Reconciler.Deactivate(ctx, inst, actor, timeout, requested)
	if err != nil {
		return err
	}
	return writeActivation(w, inst, res)
}

// writeActivation answers an activation or deactivation by its result.
func writeActivation(w http.ResponseWriter, instance string, res protocol.ActivateResult) error {
	switch res.Result {
	case protocol.ResultActivated, protocol.ResultDeactivated:
		out := apitypes.ActivationResult{Instance: instance, Result: res.Result, DurationMillis: res.DurationMillis}
		if a := res.Active; a != nil {
			out.Persona, out.Revision, out.ActivationID, out.ActivatedAt = a.Persona.Name, a.Revision, a.ActivationID, a.ActivatedAt
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	case protocol.ResultAborted, protocol.ResultRolledBack:
		what := "pre-activation script failed; nothing changed"
		if res.Result == protocol.ResultRolledBack {
			what = "post-activation script failed; the previous persona is back"
		}
		p := problem(http.StatusConflict, "activation-"+res.Result, "Activation "+res.Result, what)
		p.Result, p.Phase, p.Instance = res.Result, res.Phase, instance
		if sc := res.Script; sc != nil {
			code := sc.ExitCode
			p.ExitCode, p.Signal, p.TimedOut, p.Stdout, p.Stderr = &code, sc.Signal, sc.TimedOut, sc.Stdout, sc.Stderr
			if sc.TimedOut {
				p.Detail += " (the script timed out)"
			} else {
				p.Detail += fmt.Sprintf(" (exit code %d)", sc.ExitCode)
			}
		}
		return p
	}
	p := problem(http.StatusBadGateway, "activation-failed", "The guest could not apply the persona", res.Error)
	p.Result, p.Instance = res.Result, instance
	return p
}

// invalid refuses a request field (422, naming it).
func invalid(field, format string, a ...any) error {
	return errdefs.InvalidField(field, field+": "+fmt.Sprintf(format, a...))
}

// checkExec refuses an exec request the guest must not see, naming the
// field at fault.
func checkExec(q *apitypes.ExecRequest) error {
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
	case rules.UserName(q.User) != nil:
		return invalid("user", "%v", rules.UserName(q.User))
	case rules.UserName(q.Group) != nil:
		return invalid("group", "%v", rules.UserName(q.Group))
	case q.MaxOutputBytes < 0:
		return invalid("max_output_bytes", "must not be negative")
	case q.StdinEncoding != "" && q.StdinEncoding != apitypes.EncodingBase64:
		return invalid("stdin_encoding", "must be %q or absent (UTF-8 text)", apitypes.EncodingBase64)
	}
	for i, a := range q.Args {
		if hasNUL(a) {
			return invalid(fmt.Sprintf("args[%d]", i), "must not contain NUL")
		}
	}
	for k, v := range q.Env {
		if err := rules.EnvName(k); err != nil {
			return invalid("env."+k, "%v", err)
		}
		if err := rules.ExecEnvValue(v); err != nil {
			return invalid("env."+k, "%v", err)
		}
	}
	return nil
}

// decodeExecStdin reads the request document of an exec whose standard
// input follows it (apitypes.ExecStdinMediaType): the document, at most
// MaxExecBody bytes, then one newline; it returns the rest of the body.
func decodeExecStdin(w http.ResponseWriter, r *http.Request, req *apitypes.ExecRequest) (io.Reader, error) {
	// The bound is on the document only: the input after it is read from
	// the body itself.
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxExecBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(req); err != nil {
		return nil, jsonProblem(err)
	}
	if req.Stdin != "" || req.StdinEncoding != "" {
		return nil, invalid("stdin", "must be absent when the input follows the request (%s)", apitypes.ExecStdinMediaType)
	}
	rest := io.MultiReader(dec.Buffered(), r.Body)
	var nl [1]byte
	switch n, err := io.ReadFull(rest, nl[:]); {
	case n == 0 && errors.Is(err, io.EOF):
		return rest, nil // the document alone: no input
	case err != nil:
		return nil, problem(http.StatusBadRequest, "malformed-body", "Malformed body", "reading the body: "+err.Error())
	case nl[0] != '\n':
		return nil, problem(http.StatusBadRequest, "malformed-body", "Malformed body",
			"the request document must be followed by one newline, then the standard input")
	}
	return rest, nil
}

func hasNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	stream, err := boolQuery(r, "stream")
	if err != nil {
		return err
	}
	var req apitypes.ExecRequest
	var stdin io.Reader // the input that follows the request document
	if apitypes.IsExecStdin(r.Header.Get("Content-Type")) {
		if stdin, err = decodeExecStdin(w, r, &req); err != nil {
			return err
		}
	} else if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := checkExec(&req); err != nil {
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
		User: req.User, Group: req.Group,
		MaxOutput: req.MaxOutputBytes,
	}
	if req.Stdin != "" {
		if preq.Stdin, err = protocol.DecodeOutput(req.Stdin, req.StdinEncoding); err != nil {
			return invalid("stdin", "%v", err)
		}
	}
	// The guest kills the command at its timeout; the host waits a little
	// longer for that answer before giving up on the agent.
	ctx, cancel := context.WithTimeout(r.Context(), timeout+10*time.Second)
	defer cancel()
	rc := http.NewResponseController(w)
	var in *agents.Stdin
	if stdin != nil {
		// The input is read while the output is written, for as long as
		// the command may run.
		rc.EnableFullDuplex()
		deadline, _ := ctx.Deadline()
		rc.SetReadDeadline(deadline)
		in = &agents.Stdin{R: stdin, Stop: func() { r.Body.Close() }}
	}

	if !stream {
		res, err := s.cfg.Agents.ExecWithInput(ctx, inst, preq, in, nil)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}

	out := newNDJSON(w)
	// Each stream's chunks go out as text that never ends inside a
	// character, or as base64 where the bytes are not UTF-8.
	var split [3]protocol.TextSplitter
	emit := func(sb byte, data string, encoding string) {
		if data == "" {
			return
		}
		name := apitypes.StreamStdout
		if sb == protocol.StreamStderr {
			name = apitypes.StreamStderr
		}
		out.line(apitypes.ExecStreamLine{Stream: name, Data: data, Encoding: encoding})
	}
	res, err := s.cfg.Agents.ExecWithInput(ctx, inst, preq, in, func(sb byte, data []byte) {
		if sb != protocol.StreamStdout && sb != protocol.StreamStderr {
			return
		}
		d, e := split[sb].Next(data)
		emit(sb, d, e)
		out.flush()
	})
	for _, sb := range []byte{protocol.StreamStdout, protocol.StreamStderr} {
		d, e := split[sb].Flush()
		emit(sb, d, e)
	}
	if err != nil {
		if !out.started {
			return err
		}
		// Output went out already: end the stream with the problem.
		p := toProblem(err)
		out.line(apitypes.ExecStreamLine{Stream: apitypes.StreamFailed,
			StreamError: &apitypes.StreamError{Type: p.Type, Title: p.Title, Status: p.Status, Detail: p.Detail}})
		return nil
	}
	out.line(apitypes.ExecStreamLine{Stream: apitypes.StreamExit, ExecResult: &res})
	out.flush()
	return nil
}
