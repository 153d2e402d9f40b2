package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/api/internal/genclient"
)

// TestGeneratedClientWorks drives a real daemon and guest through the client
// oapi-codegen generates from openapi.json: personas with conditional
// requests, paging, activation, exec (plain and streamed NDJSON), audit.
func TestGeneratedClientWorks(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	ctx := context.Background()
	bearer := func(tok string) genclient.ClientOption {
		return genclient.WithRequestEditorFn(func(_ context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+tok)
			return nil
		})
	}
	c, err := genclient.NewClientWithResponses(e.srv.URL, bearer(tokAdmin))
	if err != nil {
		t.Fatal(err)
	}
	ptr := func(s string) *string { return &s }
	env := map[string]string{"APP_ENV": "staging"}
	p := genclient.Persona{Name: "hardened", EnvironmentVariables: &env, RestrictedCommands: &[]string{"rm"}}

	created, err := c.CreatePersonaWithResponse(ctx, p)
	if err != nil || created.StatusCode() != 201 || created.JSON201 == nil || created.JSON201.Revision == nil || *created.JSON201.Revision != 1 {
		t.Fatalf("CreatePersona: %v %+v", err, created)
	}
	got, err := c.GetPersonaWithResponse(ctx, "hardened", nil)
	if err != nil || got.JSON200 == nil || got.HTTPResponse.Header.Get("ETag") != `"1"` {
		t.Fatalf("GetPersona: %v %+v", err, got)
	}
	stale, err := c.PutPersonaWithResponse(ctx, "hardened", &genclient.PutPersonaParams{IfMatch: ptr(`"7"`)}, p)
	if err != nil || stale.StatusCode() != 412 || stale.ApplicationproblemJSON412 == nil {
		t.Fatalf("PutPersona with a stale If-Match: %v %d %s", err, stale.StatusCode(), stale.Body)
	}
	up, err := c.PutPersonaWithResponse(ctx, "hardened", &genclient.PutPersonaParams{IfMatch: ptr(`"1"`)}, p)
	if err != nil || up.JSON200 == nil || *up.JSON200.Revision != 2 {
		t.Fatalf("PutPersona: %v %d %s", err, up.StatusCode(), up.Body)
	}
	other := p
	other.Name = "other"
	made, err := c.PutPersonaWithResponse(ctx, "other", &genclient.PutPersonaParams{IfNoneMatch: ptr("*")}, other)
	if err != nil || made.JSON201 == nil || made.HTTPResponse.Header.Get("Location") != "/personas/other" {
		t.Fatalf("PutPersona creating: %v %d %s", err, made.StatusCode(), made.Body)
	}
	limit := 1
	page, err := c.ListPersonasWithResponse(ctx, &genclient.ListPersonasParams{Limit: &limit})
	if err != nil || page.JSON200 == nil || len(page.JSON200.Personas) != 1 || page.JSON200.Next == nil {
		t.Fatalf("ListPersonas page 1: %v %s", err, page.Body)
	}
	page, err = c.ListPersonasWithResponse(ctx, &genclient.ListPersonasParams{Limit: &limit, After: page.JSON200.Next})
	if err != nil || page.JSON200 == nil || len(page.JSON200.Personas) != 1 || page.JSON200.Next != nil {
		t.Fatalf("ListPersonas page 2: %v %s", err, page.Body)
	}

	insts, err := c.ListInstancesWithResponse(ctx, nil)
	if err != nil || insts.JSON200 == nil || len(insts.JSON200.Instances) != 1 {
		t.Fatalf("ListInstances: %v %s", err, insts.Body)
	}
	act, err := c.ActivatePersonaWithResponse(ctx, "vm1", "hardened", nil, genclient.ActivateRequest{})
	if err != nil || act.JSON200 == nil || act.JSON200.Result != "activated" {
		t.Fatalf("ActivatePersona: %v %d %s", err, act.StatusCode(), act.Body)
	}
	ex, err := c.ExecCommandWithResponse(ctx, "vm1", nil, genclient.ExecRequest{Command: "sh", Args: &[]string{"-c", "echo $APP_ENV"}})
	if err != nil || ex.JSON200 == nil || ex.JSON200.Stdout != "staging\n" {
		t.Fatalf("ExecCommand: %v %d %s", err, ex.StatusCode(), ex.Body)
	}
	denied, err := c.ExecCommandWithResponse(ctx, "vm1", nil, genclient.ExecRequest{Command: "rm"})
	if err != nil || denied.ApplicationproblemJSON403 == nil || denied.ApplicationproblemJSON403.Detail != "Error: Command not allowed in current persona" {
		t.Fatalf("ExecCommand of a restricted command: %v %d %s", err, denied.StatusCode(), denied.Body)
	}

	// A stream is read from the plain client's response, line by line,
	// into the generated line type.
	stream := true
	res, err := c.ExecCommand(ctx, "vm1", &genclient.ExecCommandParams{Stream: &stream},
		genclient.ExecRequest{Command: "sh", Args: &[]string{"-c", "echo out; echo err >&2; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); res.StatusCode != 200 || ct != "application/x-ndjson" {
		t.Fatalf("stream: %d %s", res.StatusCode, ct)
	}
	var out, errOut bytes.Buffer
	var last genclient.ExecStreamLine
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		var l genclient.ExecStreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("stream line %s: %v", sc.Bytes(), err)
		}
		switch l.Stream {
		case "stdout":
			out.WriteString(*l.Data)
		case "stderr":
			errOut.WriteString(*l.Data)
		}
		last = l
	}
	if out.String() != "out\n" || errOut.String() != "err\n" || last.Stream != "exit" || last.ExitCode == nil || *last.ExitCode != 3 {
		t.Fatalf("stream: stdout %q stderr %q last %+v", out.String(), errOut.String(), last)
	}

	deact, err := c.DeactivateInstanceWithResponse(ctx, "vm1", genclient.ActivateRequest{})
	if err != nil || deact.JSON200 == nil || deact.JSON200.Result != "deactivated" {
		t.Fatalf("DeactivateInstance: %v %s", err, deact.Body)
	}
	audit, err := c.ListAuditEventsWithResponse(ctx, &genclient.ListAuditEventsParams{})
	if err != nil || audit.JSON200 == nil || len(audit.JSON200.Events) == 0 || audit.JSON200.Next != nil {
		t.Fatalf("ListAuditEvents: %v %s", err, audit.Body)
	}
	del, err := c.DeletePersonaWithResponse(ctx, "other", &genclient.DeletePersonaParams{IfMatch: ptr(`"1"`)})
	if err != nil || del.StatusCode() != 204 {
		t.Fatalf("DeletePersona: %v %d %s", err, del.StatusCode(), del.Body)
	}

	anon, err := genclient.NewClientWithResponses(e.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	un, err := anon.ListPersonasWithResponse(ctx, nil)
	if err != nil || un.ApplicationproblemJSON401 == nil || un.HTTPResponse.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("no token: %v %d %s", err, un.StatusCode(), un.Body)
	}
}

// TestGeneratedClientIsCurrent: the committed client is what oapi-codegen
// makes of the current openapi.json (go generate ./hostd/api/internal/genclient
// refreshes it).
func TestGeneratedClientIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: running the code generator (go run, module download) is left out")
	}
	out := filepath.Join(t.TempDir(), "client.gen.go")
	cmd := exec.Command("go", "run", "github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2",
		"-generate", "types,client", "-package", "genclient", "-o", out, "openapi.json")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("oapi-codegen: %v\n%s", err, b)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile("internal/genclient/client.gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, want) {
		t.Fatal("internal/genclient/client.gen.go is not what oapi-codegen makes of openapi.json: run go generate ./hostd/api/internal/genclient")
	}
}
