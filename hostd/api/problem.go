package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/libvirt"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// problem builds a problem document; members are key/value pairs of its
// extra members ("field", "limit").
func problem(status int, slug, title, detail string, members ...any) *apitypes.Problem {
	p := &apitypes.Problem{Type: apitypes.ProblemTypePrefix + slug, Title: title, Status: status, Detail: detail}
	for i := 0; i+1 < len(members); i += 2 {
		k, _ := members[i].(string)
		setMember(p, k, members[i+1])
	}
	return p
}

// setMember sets the extra member k of p.
func setMember(p *apitypes.Problem, k string, v any) {
	str := func() string { s, _ := v.(string); return s }
	switch k {
	case "field":
		p.Field = str()
	case "instance":
		p.Instance = str()
	case "state":
		p.State = str()
	case "current_default":
		p.CurrentDefault = str()
	case "instances":
		p.Instances, _ = v.([]string)
	case "command":
		p.Command = str()
	case "reason":
		p.Reason = str()
	case "persona":
		p.Persona = str()
	case "result":
		p.Result = str()
	case "phase":
		p.Phase = str()
	default:
		if p.Extra == nil {
			p.Extra = map[string]any{}
		}
		p.Extra[k] = v
	}
}

// toProblem is the one place where errors from the store, the agent
// connections, the guest and request decoding become HTTP answers.
func toProblem(err error) *apitypes.Problem {
	var p *apitypes.Problem
	if errors.As(err, &p) {
		return p
	}
	var ve *validate.Error
	if errors.As(err, &ve) {
		return problem(http.StatusUnprocessableEntity, "invalid-field", "Invalid field", ve.Error(), "field", ve.Field)
	}
	var dc *store.DefaultConflictError
	if errors.As(err, &dc) {
		return problem(http.StatusConflict, "default-conflict", "Another persona is the default",
			fmt.Sprintf("persona %q is already the default persona; clear its default_persona first", dc.Current), "current_default", dc.Current)
	}
	var iu *store.InUseError
	if errors.As(err, &iu) {
		return problem(http.StatusConflict, "persona-in-use", "Persona is active",
			fmt.Sprintf("persona is active on %s; deactivate it there or delete with ?force=true", strings.Join(iu.Instances, ", ")), "instances", iu.Instances)
	}
	var pe *protocol.Error
	if errors.As(err, &pe) {
		switch pe.Code {
		case protocol.CodeDenied:
			return problem(http.StatusForbidden, "command-denied", "Command not allowed", protocol.DeniedMessage,
				"command", pe.Command, "persona", pe.Persona)
		case protocol.CodeNotFound, protocol.CodeNotExecutable:
			return problem(http.StatusUnprocessableEntity, "command-not-startable", "Command cannot be started",
				fmt.Sprintf("%s: %s", pe.Command, pe.Message), "command", pe.Command, "reason", pe.Code)
		case protocol.CodeBadRequest:
			return problem(http.StatusBadRequest, "guest-refused", "The guest refused the request", pe.Message)
		case protocol.CodeBusy:
			return problem(http.StatusServiceUnavailable, "agent-busy", "Agent busy", pe.Message)
		}
		return problem(http.StatusBadGateway, "agent-error", "The guest agent failed", pe.Error())
	}
	switch {
	case errors.Is(err, libvirt.ErrNoDomain):
		return problem(http.StatusNotFound, "unknown-domain", "Unknown libvirt domain", err.Error())
	case errors.Is(err, libvirt.ErrAlreadyEnabled):
		return problem(http.StatusConflict, "already-enabled", "Channel already present", err.Error())
	case errors.Is(err, libvirt.ErrNotConnected):
		return problem(http.StatusServiceUnavailable, "libvirt-unavailable", "libvirt not connected", err.Error())
	case errors.Is(err, store.ErrNotFound):
		return problem(http.StatusNotFound, "not-found", "Not found", err.Error())
	case errors.Is(err, agents.ErrUnknownInstance):
		return problem(http.StatusNotFound, "unknown-instance", "Unknown instance", err.Error())
	case errors.Is(err, store.ErrInvalidArgument):
		return problem(http.StatusBadRequest, "bad-request", "Bad request", err.Error())
	case errors.Is(err, store.ErrExists):
		return problem(http.StatusConflict, "exists", "Already exists", err.Error())
	case errors.Is(err, store.ErrPreconditionFailed):
		return problem(http.StatusPreconditionFailed, "precondition-failed", "Revision mismatch", err.Error())
	case errors.Is(err, agents.ErrNotConnected), errors.Is(err, protocol.ErrClosed):
		return problem(http.StatusServiceUnavailable, "agent-unavailable", "Agent not connected", err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return problem(http.StatusGatewayTimeout, "agent-timeout", "Agent did not answer in time", err.Error())
	case errors.Is(err, context.Canceled):
		return problem(499, "canceled", "Request canceled", err.Error())
	}
	return problem(http.StatusInternalServerError, "internal", "Internal error", err.Error())
}

// decodeJSON reads one JSON value from the body into v, refusing unknown
// fields, trailing data and bodies over the route's limit.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonProblem(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return problem(http.StatusBadRequest, "malformed-json", "Malformed JSON", "the body holds more than one JSON value")
	}
	return nil
}

func jsonProblem(err error) *apitypes.Problem {
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return problem(http.StatusRequestEntityTooLarge, "body-too-large", "Request body too large",
			fmt.Sprintf("the body exceeds %d bytes", mbe.Limit))
	case errors.As(err, &se):
		return problem(http.StatusBadRequest, "malformed-json", "Malformed JSON", fmt.Sprintf("%v (at byte %d)", se, se.Offset))
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "(body)"
		}
		return problem(http.StatusBadRequest, "wrong-type", "Wrong type",
			fmt.Sprintf("field %s: expected %s, got JSON %s", field, te.Type, te.Value), "field", field)
	case errors.Is(err, io.EOF):
		return problem(http.StatusBadRequest, "malformed-json", "Malformed JSON", "the body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return problem(http.StatusBadRequest, "malformed-json", "Malformed JSON", "the body ends in the middle of a JSON value")
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		f = strings.Trim(f, `"`)
		return problem(http.StatusBadRequest, "unknown-field", "Unknown field", fmt.Sprintf("unknown field %q", f), "field", f)
	}
	return problem(http.StatusBadRequest, "malformed-json", "Malformed JSON", msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

// encodeJSON is what writeJSON writes for v, as bytes.
func encodeJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return b.Bytes()
}

func writeProblem(w http.ResponseWriter, p *apitypes.Problem) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}
