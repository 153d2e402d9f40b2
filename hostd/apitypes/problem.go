package apitypes

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/protocol"
)

// ProblemTypePrefix starts every problem type the server answers; the rest
// is a slug ("command-denied").
const ProblemTypePrefix = "urn:vmpersona:problem:"

// Problem types clients act on.
const (
	ProblemCommandDenied       = ProblemTypePrefix + "command-denied"
	ProblemCommandNotStartable = ProblemTypePrefix + "command-not-startable"
	ProblemExists              = ProblemTypePrefix + "exists"
)

// Problem is an RFC 9457 problem document (application/problem+json), the
// answer to every failed request, with the members vmpersona adds to some
// of them. Members the server adds that this version does not know are kept
// in Extra.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`

	// Field names the request field at fault (400, 422).
	Field string `json:"field,omitempty"`

	// Instance names the instance a refusal is about; State is its state
	// when its agent cannot be reached (503).
	Instance string `json:"instance_id,omitempty"`
	State    string `json:"state,omitempty"`

	// CurrentDefault names the persona that is the default now (409,
	// default-conflict).
	CurrentDefault string `json:"current_default,omitempty"`
	// Instances name those holding a persona that cannot be deleted (409,
	// persona-in-use).
	Instances []string `json:"instances,omitempty"`

	// Exec refusals: the command, and for 422 the reason
	// (protocol.CodeNotFound or protocol.CodeNotExecutable); for 403 the
	// active persona.
	Command string `json:"command,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Persona string `json:"persona,omitempty"`

	// Activation refusals (409): ResultAborted or ResultRolledBack, the
	// failing script's phase ("pre" or "post"), its exit code and output.
	Result   string `json:"result,omitempty"`
	Phase    string `json:"phase,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`

	// Extra holds members beyond the above.
	Extra map[string]any `json:"-"`
}

type problemFields Problem

// MarshalJSON writes the members, Extra beside them.
func (p *Problem) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal((*problemFields)(p))
	if err != nil || len(p.Extra) == 0 {
		return b, err
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	for k, v := range p.Extra {
		if _, known := m[k]; !known {
			m[k] = v
		}
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads the members; unknown ones go to Extra.
func (p *Problem) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, (*problemFields)(p)); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for k, raw := range all {
		if problemMembers[k] {
			continue
		}
		var v any
		if json.Unmarshal(raw, &v) == nil {
			if p.Extra == nil {
				p.Extra = map[string]any{}
			}
			p.Extra[k] = v
		}
	}
	return nil
}

// problemMembers are the JSON names of Problem's fields.
var problemMembers = func() map[string]bool {
	m := map[string]bool{}
	for _, f := range JSONFields(Problem{}) {
		m[f.Name] = true
	}
	return m
}()

func (p *Problem) Error() string {
	title := p.Title
	if title == "" {
		title = http.StatusText(p.Status)
	}
	if p.Detail == "" || p.Detail == title {
		return fmt.Sprintf("%s (HTTP %d)", title, p.Status)
	}
	return fmt.Sprintf("%s: %s (HTTP %d)", title, p.Detail, p.Status)
}

// Errors a Problem wraps beyond its class (see Unwrap).
var (
	// ErrServer: a 5xx answer of no more precise class.
	ErrServer = errors.New("server error")
	// ErrCommandDenied: the active persona restricts the command (403).
	ErrCommandDenied = errors.New("command denied by the active persona")
	// ErrCommandNotFound: the command does not exist in the guest (422).
	ErrCommandNotFound = errors.New("command not found in the guest")
	// ErrCommandNotExecutable: the command exists but cannot be run (422).
	ErrCommandNotExecutable = errors.New("command not executable in the guest")
	// ErrActivationRefused: a failing activation script refused the
	// activation (409 with result "aborted" or "rolled_back").
	ErrActivationRefused = errors.New("activation refused by a script")
)

// Unwrap returns the error class of the problem's status (errdefs) and,
// for the problems clients act on, a more precise sentinel, so that callers
// test answers with errors.Is.
func (p *Problem) Unwrap() []error {
	var errs []error
	class := ClassOf(p.Status)
	if class != nil {
		errs = append(errs, class)
	}
	switch p.Status {
	case http.StatusForbidden:
		if p.Type == ProblemCommandDenied || strings.Contains(p.Detail, protocol.DeniedMessage) {
			errs = append(errs, ErrCommandDenied)
		}
	case http.StatusConflict:
		if p.Type == ProblemExists {
			errs = append(errs, errdefs.ErrAlreadyExists)
		}
		if p.Result == ResultAborted || p.Result == ResultRolledBack {
			errs = append(errs, ErrActivationRefused)
		}
	case http.StatusUnprocessableEntity:
		switch {
		case p.Reason == protocol.CodeNotFound:
			errs = append(errs, ErrCommandNotFound)
		case p.Reason == protocol.CodeNotExecutable:
			errs = append(errs, ErrCommandNotExecutable)
		case p.Type == ProblemCommandNotStartable:
			errs = append(errs, ErrCommandNotFound)
		}
	}
	if p.Status >= 500 && class != errdefs.ErrUnavailable && class != errdefs.ErrTimeout {
		errs = append(errs, ErrServer)
	}
	return errs
}

// StatusCanceled answers a request its client gave up on (nginx's
// convention; the client never sees it).
const StatusCanceled = 499

// ClassStatus is the one table from error class to HTTP status. The server
// answers each class with its status; the client turns each status back
// into its class. An error of no class is a 500.
var ClassStatus = []struct {
	Class  error
	Status int
}{
	{errdefs.ErrInvalidArgument, http.StatusBadRequest},
	{errdefs.ErrUnauthorized, http.StatusUnauthorized},
	{errdefs.ErrForbidden, http.StatusForbidden},
	{errdefs.ErrNotFound, http.StatusNotFound},
	{errdefs.ErrConflict, http.StatusConflict},
	{errdefs.ErrAlreadyExists, http.StatusConflict},
	{errdefs.ErrPreconditionFailed, http.StatusPreconditionFailed},
	{errdefs.ErrTooLarge, http.StatusRequestEntityTooLarge},
	{errdefs.ErrInvalid, http.StatusUnprocessableEntity},
	{errdefs.ErrCanceled, StatusCanceled},
	{errdefs.ErrNotImplemented, http.StatusNotImplemented},
	{errdefs.ErrUpstream, http.StatusBadGateway},
	{errdefs.ErrUnavailable, http.StatusServiceUnavailable},
	{errdefs.ErrTimeout, http.StatusGatewayTimeout},
	{errdefs.ErrInsufficientStorage, http.StatusInsufficientStorage},
}

// StatusOf returns the HTTP status of an error class, 500 for none.
func StatusOf(class error) int {
	for _, cs := range ClassStatus {
		if cs.Class == class {
			return cs.Status
		}
	}
	return http.StatusInternalServerError
}

// ClassOf returns the error class of an HTTP status (the first in
// ClassStatus), nil for statuses of no class.
func ClassOf(status int) error {
	for _, cs := range ClassStatus {
		if cs.Status == status {
			return cs.Class
		}
	}
	return nil
}
