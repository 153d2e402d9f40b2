package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
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
	case "instance_id":
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

// classProblems gives each error class (package errdefs) the type and
// title of its problem document; its status is apitypes.ClassStatus's.
var classProblems = map[error]struct{ kind, title string }{
	errdefs.ErrInvalidArgument:     {"bad-request", "Bad request"},
	errdefs.ErrInvalid:             {"invalid-field", "Invalid field"},
	errdefs.ErrUnauthorized:        {"unauthorized", "Unauthorized"},
	errdefs.ErrForbidden:           {"forbidden", "Forbidden"},
	errdefs.ErrNotFound:            {"not-found", "Not found"},
	errdefs.ErrAlreadyExists:       {"exists", "Already exists"},
	errdefs.ErrConflict:            {"conflict", "Conflict"},
	errdefs.ErrPreconditionFailed:  {"precondition-failed", "Revision mismatch"},
	errdefs.ErrTooLarge:            {"too-large", "Too large"},
	errdefs.ErrUnavailable:         {"unavailable", "Unavailable"},
	errdefs.ErrTimeout:             {"agent-timeout", "Agent did not answer in time"},
	errdefs.ErrCanceled:            {"canceled", "Request canceled"},
	errdefs.ErrNotImplemented:      {"not-implemented", "Not implemented"},
	errdefs.ErrUpstream:            {"agent-error", "The guest agent failed"},
	errdefs.ErrInsufficientStorage: {"insufficient-storage", "Insufficient storage"},
}

// kindTitles titles the problems of errors that name their kind
// (errdefs.Kind); the kind is the problem type's slug.
var kindTitles = map[string]string{
	"unknown-domain":        "Unknown libvirt domain",
	"already-enabled":       "Channel already present",
	"libvirt-unavailable":   "libvirt not connected",
	"unknown-instance":      "Unknown instance",
	"agent-unavailable":     "Agent not connected",
	"default-conflict":      "Another persona is the default",
	"persona-in-use":        "Persona is active",
	"command-denied":        "Command not allowed",
	"command-not-startable": "Command cannot be started",
	"guest-refused":         "The guest refused the request",
	"agent-busy":            "Agent busy",
}

// toProblem is the one place where errors become HTTP answers: the error's
// class gives the status (apitypes.ClassStatus), its kind the problem type,
// its details the extra members. Handlers return errors as they get them.
func toProblem(err error) *apitypes.Problem {
	var p *apitypes.Problem
	if errors.As(err, &p) {
		return p
	}
	class := errdefs.Class(err)
	if class == nil {
		return problem(http.StatusInternalServerError, "internal", "Internal error", err.Error())
	}
	cp := classProblems[class]
	kind, title := cp.kind, cp.title
	if k := errdefs.Kind(err); k != "" && k != kind {
		kind = k
		if t, ok := kindTitles[k]; ok {
			title = t
		}
	}
	p = problem(apitypes.StatusOf(class), kind, title, errdefs.Message(err))
	for k, v := range errdefs.Details(err) {
		setMember(p, k, v)
	}
	return p
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
