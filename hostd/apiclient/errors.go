package apiclient

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// Sentinel errors. Every error the server answers is an *apitypes.Problem;
// it wraps the error class of its status (package errdefs) and, for exec
// and activation refusals, the sentinel of its cause, so that callers test
// with errors.Is. The names below are those classes and sentinels.
var (
	ErrBadRequest         = errdefs.ErrInvalidArgument    // 400
	ErrUnauthorized       = errdefs.ErrUnauthorized       // 401: no or unknown token
	ErrForbidden          = errdefs.ErrForbidden          // 403: the token lacks the role, or the command is denied
	ErrNotFound           = errdefs.ErrNotFound           // 404
	ErrConflict           = errdefs.ErrConflict           // 409: exists, in use, default clash, activation refused
	ErrPreconditionFailed = errdefs.ErrPreconditionFailed // 412: If-Match revision mismatch
	ErrUnprocessable      = errdefs.ErrInvalid            // 422: invalid field, command cannot be started
	ErrUnavailable        = errdefs.ErrUnavailable        // 503: the guest agent is not connected or busy
	ErrTimeout            = errdefs.ErrTimeout            // 504: the guest agent did not answer in time
	ErrServer             = apitypes.ErrServer            // any other 5xx

	ErrCommandDenied        = apitypes.ErrCommandDenied        // 403: the active persona restricts the command
	ErrCommandNotFound      = apitypes.ErrCommandNotFound      // 422: the command does not exist in the guest
	ErrCommandNotExecutable = apitypes.ErrCommandNotExecutable // 422: the command exists but cannot be run
	ErrActivationRefused    = apitypes.ErrActivationRefused    // 409: a failing activation script refused it

	// ErrProtocol: the server's answer could not be understood (wrong
	// content type, malformed JSON, an exec stream that ends without its
	// exit line).
	ErrProtocol = errors.New("unexpected answer from the server")
)

// decodeProblem builds the Problem of a non-2xx answer. A body that is not a
// problem document still yields one, from the status and a bounded excerpt.
func decodeProblem(status int, contentType string, body []byte) *apitypes.Problem {
	p := &apitypes.Problem{Status: status}
	if isJSON(contentType) && json.Unmarshal(body, p) == nil {
		if p.Status == 0 {
			p.Status = status
		}
		return p
	}
	*p = apitypes.Problem{Status: status, Title: http.StatusText(status)}
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
