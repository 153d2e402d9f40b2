package api

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// TestBackendErrorsBecomeTheirProblems pins the answer to each backend
// error: status, problem type, title and extra members, as users know them.
func TestBackendErrorsBecomeTheirProblems(t *testing.T) {
	tests := []struct {
		err     error
		status  int
		kind    string
		title   string
		detail  string
		members map[string]any
	}{
		{fmt.Errorf("persona %q: %w", "x", store.ErrNotFound), 404, "not-found", "Not found", `persona "x": not found`, nil},
		{personaErr("x", fmt.Errorf("persona %q: %w", "x", store.ErrNotFound)), 404, "not-found", "Not found", `no persona named "x"`, map[string]any{"persona": "x"}},
		{fmt.Errorf("instance %q: %w", "vm", agents.ErrUnknownInstance), 404, "unknown-instance", "Unknown instance", `instance "vm": unknown instance`, nil},
		{store.ErrExists, 409, "exists", "Already exists", "already exists", nil},
		{&store.DefaultConflictError{Current: "base"}, 409, "default-conflict", "Another persona is the default",
			`persona "base" is already the default persona; clear its default_persona first`, map[string]any{"current_default": "base"}},
		{&store.InUseError{Persona: "p", Instances: []string{"a", "b"}}, 409, "persona-in-use", "Persona is active",
			`persona "p" is active on a, b; deactivate it there or delete with ?force=true`, map[string]any{"instances": []string{"a", "b"}}},
		{fmt.Errorf("update: %w", store.ErrPreconditionFailed), 412, "precondition-failed", "Revision mismatch", "update: revision does not match", nil},
		{store.ErrInvalidArgument, 400, "bad-request", "Bad request", "invalid argument", nil},
		{validate.Name("Bad Name"), 422, "invalid-field", "Invalid field", validate.Name("Bad Name").Error(), map[string]any{"field": "name"}},
		{&protocol.Error{Code: protocol.CodeDenied, Message: "restricted", Command: "rm", Persona: "hardened"}, 403, "command-denied", "Command not allowed",
			protocol.DeniedMessage, map[string]any{"command": "rm", "persona": "hardened"}},
		{&protocol.Error{Code: protocol.CodeNotFound, Message: "no such file", Command: "nope"}, 422, "command-not-startable", "Command cannot be started",
			"nope: no such file", map[string]any{"command": "nope", "reason": protocol.CodeNotFound}},
		{&protocol.Error{Code: protocol.CodeNotExecutable, Message: "permission denied", Command: "/etc/passwd"}, 422, "command-not-startable", "Command cannot be started",
			"/etc/passwd: permission denied", map[string]any{"command": "/etc/passwd", "reason": protocol.CodeNotExecutable}},
		{&protocol.Error{Code: protocol.CodeBadRequest, Message: "bad payload"}, 400, "guest-refused", "The guest refused the request", "bad payload", nil},
		{&protocol.Error{Code: protocol.CodeBusy, Message: "too many"}, 503, "agent-busy", "Agent busy", "too many", nil},
		{&protocol.Error{Code: protocol.CodeInternal, Message: "boom"}, 502, "agent-error", "The guest agent failed", "internal: boom", nil},
		{agents.ErrNotConnected, 503, "agent-unavailable", "Agent not connected", "agent not connected", nil},
		{fmt.Errorf("exec: %w", protocol.ErrClosed), 503, "agent-unavailable", "Agent not connected", "exec: protocol: session closed", nil},
		{fmt.Errorf("exec: %w", context.DeadlineExceeded), 504, "agent-timeout", "Agent did not answer in time", "exec: context deadline exceeded", nil},
		{context.Canceled, 499, "canceled", "Request canceled", "context canceled", nil},
		{errors.New("disk on fire"), 500, "internal", "Internal error", "disk on fire", nil},
		{errdefs.New(errdefs.ErrNotFound, "unknown-domain", "no such libvirt domain"), 404, "unknown-domain", "Unknown libvirt domain", "no such libvirt domain", nil},
		{checkExec(&apitypes.ExecRequest{Command: ""}), 422, "invalid-field", "Invalid field", "command: must not be empty", map[string]any{"field": "command"}},
		{checkExec(&apitypes.ExecRequest{Command: "env", Env: map[string]string{"A-B": "x"}}), 422, "invalid-field", "Invalid field",
			"env.A-B: variable name must match [A-Za-z_][A-Za-z0-9_]* (bad character '-' at 1)", map[string]any{"field": "env.A-B"}},
	}
	for _, tt := range tests {
		p := toProblem(tt.err)
		if p.Status != tt.status || p.Type != "urn:vmpersona:problem:"+tt.kind || p.Title != tt.title || p.Detail != tt.detail {
			t.Errorf("%v: got %d %s %q %q, want %d %s %q %q", tt.err, p.Status, p.Type, p.Title, p.Detail, tt.status, tt.kind, tt.title, tt.detail)
		}
		got := map[string]any{}
		for k, v := range map[string]any{"persona": p.Persona, "command": p.Command, "reason": p.Reason, "field": p.Field, "current_default": p.CurrentDefault} {
			if v != "" {
				got[k] = v
			}
		}
		if p.Instances != nil {
			got["instances"] = p.Instances
		}
		want := tt.members
		if want == nil {
			want = map[string]any{}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%v: members %v, want %v", tt.err, got, want)
		}
	}
}
