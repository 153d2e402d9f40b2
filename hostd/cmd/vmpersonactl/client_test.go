package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// The typed client against the real daemons: every error the contract
// names reaches callers as the sentinel they test for.
func TestClientAgainstRealDaemons(t *testing.T) {
	d := startDaemons(t, true)
	ctx := context.Background()
	c, err := apiclient.New(apiclient.Config{URL: "unix:" + d.sock, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Healthz(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Readyz(ctx); err != nil {
		t.Fatal(err)
	}

	p, err := c.CreatePersona(ctx, protocol.Persona{
		Name: "web", EnvironmentVariables: map[string]string{"ROLE": "web"},
		RestrictedCommands: []string{"rm"}, CommandOverrides: map[string]string{"deploy": "#!/bin/sh\necho deploying \"$@\""},
		PostActivationScript: "#!/bin/sh\nexit 0",
	})
	if err != nil || p.Revision != 1 {
		t.Fatalf("CreatePersona = %+v, %v", p, err)
	}
	if _, err := c.CreatePersona(ctx, protocol.Persona{Name: "web"}); !errors.Is(err, apiclient.ErrConflict) {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := c.CreatePersona(ctx, protocol.Persona{Name: "Not Valid"}); !errors.Is(err, apiclient.ErrUnprocessable) {
		t.Errorf("invalid name: %v", err)
	}
	got, err := c.GetPersona(ctx, "web")
	if err != nil || got.Revision != 1 || got.EnvironmentVariables["ROLE"] != "web" {
		t.Fatalf("GetPersona = %+v, %v", got, err)
	}
	got.RestrictedCommands = append(got.RestrictedCommands, "shutdown")
	upd, err := c.UpdatePersona(ctx, got, 1)
	if err != nil || upd.Revision != 2 {
		t.Fatalf("UpdatePersona = %+v, %v", upd, err)
	}
	if _, err := c.UpdatePersona(ctx, got, 1); !errors.Is(err, apiclient.ErrPreconditionFailed) {
		t.Errorf("stale update: %v", err)
	}
	if _, err := c.GetPersona(ctx, "nope"); !errors.Is(err, apiclient.ErrNotFound) {
		t.Errorf("missing persona: %v", err)
	}

	act, err := c.Activate(ctx, "vm1", "web", apiclient.ActivateOptions{ScriptTimeout: 10 * time.Second})
	if err != nil || act.Result != protocol.ResultActivated || act.Revision != 2 || act.ActivationID == "" {
		t.Fatalf("Activate = %+v, %v", act, err)
	}
	if _, err := c.Activate(ctx, "vm9", "web", apiclient.ActivateOptions{}); !errors.Is(err, apiclient.ErrNotFound) {
		t.Errorf("unknown instance: %v", err)
	}

	res, err := c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "deploy", Args: []string{"v3"}})
	if err != nil || res.Stdout != "deploying v3\n" || res.Route != protocol.RouteOverride {
		t.Fatalf("Exec override = %+v, %v", res, err)
	}
	var out, errb bytes.Buffer
	res, err = c.ExecStream(ctx, "vm1", apitypes.ExecRequest{Command: "sh", Args: []string{"-c", "echo $ROLE; echo e >&2; exit 4"}}, &out, &errb)
	if err != nil || res.ExitCode != 4 || out.String() != "web\n" || errb.String() != "e\n" || res.Route != protocol.RouteDefault {
		t.Fatalf("ExecStream = %+v, %v, %q, %q", res, err, out.String(), errb.String())
	}
	_, err = c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "/usr/bin/rm", Args: []string{"-f", "/nonexistent"}})
	var prob *apitypes.Problem
	if !errors.Is(err, apiclient.ErrCommandDenied) || !errors.As(err, &prob) || prob.Detail != protocol.DeniedMessage {
		t.Errorf("denied exec: %v", err)
	}
	_, err = c.ExecStream(ctx, "vm1", apitypes.ExecRequest{Command: "rm"}, &out, &errb)
	if !errors.Is(err, apiclient.ErrCommandDenied) {
		t.Errorf("denied streamed exec: %v", err)
	}
	if _, err := c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "no-such-thing"}); !errors.Is(err, apiclient.ErrCommandNotFound) {
		t.Errorf("missing command: %v", err)
	}
	if _, err := c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "/etc/hostname"}); !errors.Is(err, apiclient.ErrCommandNotExecutable) {
		t.Errorf("not executable: %v", err)
	}
	res, err = c.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "sleep", Args: []string{"30"}, TimeoutSeconds: 0.5})
	if err != nil || !res.TimedOut {
		t.Errorf("timed out exec = %+v, %v", res, err)
	}

	ap, err := c.ActivePersona(ctx, "vm1")
	if err != nil || ap.Persona == nil || ap.Persona.Name != "web" || ap.ActivationID != act.ActivationID {
		t.Fatalf("ActivePersona = %+v, %v", ap, err)
	}
	if err := c.DeletePersona(ctx, "web", apiclient.DeleteOptions{}); !errors.Is(err, apiclient.ErrConflict) {
		t.Errorf("delete active persona: %v", err)
	}

	// A failing post-activation script rolls back: 409 with the script's outcome.
	bad := upd
	bad.PostActivationScript = "#!/bin/sh\necho nope >&2\nexit 5"
	if _, err := c.UpdatePersona(ctx, bad, 2); err != nil {
		t.Fatal(err)
	}
	_, err = c.Activate(ctx, "vm1", "web", apiclient.ActivateOptions{})
	if !errors.Is(err, apiclient.ErrActivationRefused) || !errors.As(err, &prob) ||
		prob.Result != protocol.ResultRolledBack || prob.Phase != "post" || prob.ExitCode == nil || *prob.ExitCode != 5 || !strings.Contains(prob.Stderr, "nope") {
		t.Errorf("rolled back activation: %v %+v", err, prob)
	}

	dr, err := c.Deactivate(ctx, "vm1")
	if err != nil || dr.Result != protocol.ResultDeactivated {
		t.Fatalf("Deactivate = %+v, %v", dr, err)
	}
	if err := c.DeletePersona(ctx, "web", apiclient.DeleteOptions{IfMatch: 1}); !errors.Is(err, apiclient.ErrPreconditionFailed) {
		t.Errorf("delete with a stale If-Match: %v", err)
	}
	if err := c.DeletePersona(ctx, "web", apiclient.DeleteOptions{IfMatch: 3}); err != nil {
		t.Errorf("delete: %v", err)
	}

	list, err := c.ListInstances(ctx)
	if err != nil || len(list) != 1 || list[0].Agent.State != apitypes.AgentConnected || list[0].Agent.ConnectedAt.IsZero() {
		t.Errorf("ListInstances = %+v, %v", list, err)
	}
	page, err := c.Audit(ctx, apiclient.AuditQuery{Instance: "vm1", Type: protocol.AuditDenial})
	if err != nil || len(page.Events) != 2 || page.Events[0].Source != "guest" {
		t.Errorf("Audit denials = %+v, %v", page, err)
	}

	// Over TCP, tokens decide.
	for _, tc := range []struct {
		token string
		want  error
	}{{"", apiclient.ErrUnauthorized}, {"wrong", apiclient.ErrUnauthorized}, {tokViewer, apiclient.ErrForbidden}} {
		tc2, err := apiclient.New(apiclient.Config{URL: d.url, Token: tc.token})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tc2.Exec(ctx, "vm1", apitypes.ExecRequest{Command: "true"}); !errors.Is(err, tc.want) || errors.Is(err, apiclient.ErrCommandDenied) {
			t.Errorf("token %q: %v, want %v", tc.token, err, tc.want)
		}
		tc2.Close()
	}
}
