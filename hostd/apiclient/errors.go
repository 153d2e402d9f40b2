package apiclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/vmpersona/vmpersona/protocol"
)

// Sentinel errors. Every error the server answers is a *Problem; it wraps
// the sentinel of its status (and, for exec refusals, of its cause) so that
// callers test with errors.Is.
var (
	ErrBadRequest         = errors.New("bad request")         // 400
	ErrUnauthorized       = errors.New("unauthorized")        // 401: no or unknown token
	ErrForbidden          = errors.New("forbidden")           // 403: the token lacks the role, or the command is denied
	ErrNotFound           = errors.New("not found")           // 404
	ErrConflict           = errors.New("conflict")            // 409: exists, in use, default clash, activation refused
	ErrPreconditionFailed = errors.New("precondition failed") // 412: If-Match revision mismatch
	ErrUnprocessable      = errors.New("unprocessable")       // 422: invalid field, command cannot be started
	ErrUnavailable        = errors.New("agent unavailable")   // 503: the guest agent is not connected or busy
	ErrTimeout            = errors.New("agent timeout")       // 504: the guest agent did not answer in time
	ErrServer             = errors.New("server error")        // any other 5xx

	// ErrCommandDenied: the active persona restricts the command (403).
	ErrCommandDenied = errors.New("command denied by the active persona")
	// ErrCommandNotFound: the command does not exist in the guest (422).
	ErrCommandNotFound = errors.New("command not found in the guest")
	// ErrCommandNotExecutable: the command exists but cannot be run (422).
	ErrCommandNotExecutable = errors.New("command not executable in the guest")
	// ErrActivationRefused: a failing activation script refused the
	// activation (409 with result "aborted" or "rolled_back").
	ErrActivationRefused = errors.New("activation refused by a script")

	// ErrProtocol: the server's answer could not be understood (wrong
	// content type, malformed JSON, an exec stream that ends without its
	// exit line).
	ErrProtocol = errors.New("unexpected answer from the server")
)

// Problem types the server uses (the "type" member), beyond the statuses.
const (
	ProblemCommandDenied       = "urn:vmpersona:problem:command-denied"
	ProblemCommandNotStartable = "urn:vmpersona:problem:command-not-startable"
)

// Problem is an RFC 9457 problem document answered by the server, with the
// members vmpersona adds to some of them. Extra holds every member, known or
// not, as raw JSON.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`

	// Exec refusals: the command and, for 422, the reason
	// ("not_found" or "not_executable"); for 403, the active persona.
	Command string `json:"command,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Persona string `json:"persona,omitempty"`

	// Activation refusals (409): "aborted" or "rolled_back", the failing
	// script's phase ("pre" or "post"), its exit code and output.
	Result   string `json:"result,omitempty"`
	Phase    string `json:"phase,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	Stderr   string `json:"stderr,omitempty"`

	// Instance names the instance an activation or lookup is about.
	Instance string `json:"instance,omitempty"`

	// Field names the offending field of a 400 or 422.
	Field string `json:"field,omitempty"`

	Extra map[string]json.RawMessage `json:"-"`
}

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

// Unwrap returns the sentinels the problem stands for.
func (p *Problem) Unwrap() []error {
	var errs []error
	switch p.Status {
	case http.StatusBadRequest:
		errs = append(errs, ErrBadRequest)
	case http.StatusUnauthorized:
		errs = append(errs, ErrUnauthorized)
	case http.StatusForbidden:
		errs = append(errs, ErrForbidden)
		if p.Type == ProblemCommandDenied || strings.Contains(p.Detail, protocol.DeniedMessage) {
			errs = append(errs, ErrCommandDenied)
		}
	case http.StatusNotFound:
		errs = append(errs, ErrNotFound)
	case http.StatusConflict:
		errs = append(errs, ErrConflict)
		if p.Result == protocol.ResultAborted || p.Result == protocol.ResultRolledBack {
			errs = append(errs, ErrActivationRefused)
		}
	case http.StatusPreconditionFailed:
		errs = append(errs, ErrPreconditionFailed)
	case http.StatusUnprocessableEntity:
		errs = append(errs, ErrUnprocessable)
		switch {
		case p.Reason == protocol.CodeNotFound:
			errs = append(errs, ErrCommandNotFound)
		case p.Reason == protocol.CodeNotExecutable:
			errs = append(errs, ErrCommandNotExecutable)
		case p.Type == ProblemCommandNotStartable:
			errs = append(errs, ErrCommandNotFound)
		}
	case http.StatusServiceUnavailable:
		errs = append(errs, ErrUnavailable)
	case http.StatusGatewayTimeout:
		errs = append(errs, ErrTimeout)
	default:
		if p.Status >= 500 {
			errs = append(errs, ErrServer)
		}
	}
	return errs
}

// decodeProblem builds the Problem of a non-2xx answer. A body that is not a
// problem document still yields one, from the status and a bounded excerpt.
func decodeProblem(status int, contentType string, body []byte) *Problem {
	p := &Problem{Status: status}
	if isJSON(contentType) && json.Unmarshal(body, p) == nil {
		_ = json.Unmarshal(body, &p.Extra)
		if p.Status == 0 {
			p.Status = status
		}
		return p
	}
	p.Status = status
	p.Title = http.StatusText(status)
	text := strings.TrimSpace(string(body))
	if len(text) > 512 {
		text = text[:512] + "…"
	}
	p.Detail = text
	return p
}

func isJSON(contentType string) bool {
	ct, _, _ := strings.Cut(contentType, ";")
	ct = strings.TrimSpace(strings.ToLower(ct))
	return ct == "application/json" || ct == "application/problem+json" || strings.HasSuffix(ct, "+json")
}
