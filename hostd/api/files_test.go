package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// startOldGuest runs a guest end of the real protocol session that
// announces what a guest agent from before file transfer did.
func startOldGuest(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "old.sock")
	testproc.ServeUnix(t, sock, func(c net.Conn) {
		s := protocol.NewSession(c, protocol.SessionConfig{Side: "guest", OnHello: func(protocol.Hello) protocol.HelloAck {
			return protocol.HelloAck{AgentVersion: "old", BootID: "old", SpoolID: "old",
				Capabilities: []string{protocol.CapExecStream, protocol.CapAuditSpool}}
		}})
		<-s.Done()
	})
	return "unix:" + sock
}

func TestFilesThroughTheAPI(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t), "old": startOldGuest(t)})
	e.waitConnected("vm1")
	e.waitConnected("old")
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	q := "?path=" + url.QueryEscape(p)
	content := bytes.Repeat([]byte{0, 1, 2, 0xff, '\n'}, 100000)
	octet := []string{"Content-Type", "application/octet-stream"}

	for _, tok := range []string{tokViewer, tokOperator} {
		e.must(e.do("PUT", "/instances/vm1/files"+q, tok, content, octet...), 403)
		e.must(e.do("GET", "/instances/vm1/files"+q, tok, nil), 403)
	}
	if _, err := os.Stat(p); err == nil {
		t.Fatal("a refused push wrote the file")
	}
	r := e.must(e.do("PUT", "/instances/vm1/files"+q+"&mode=640", tokAdmin, content, octet...), 200)
	var res apitypes.FileResult
	if err := json.Unmarshal(r.body, &res); err != nil || res.Size != int64(len(content)) || res.Path != p || res.Instance != "vm1" {
		t.Errorf("PUT answered %s (%v)", r.body, err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("the guest's file: %v %v", st, err)
	}
	r = e.must(e.do("GET", "/instances/vm1/files"+q, tokAdmin, nil), 200)
	if !bytes.Equal(r.body, content) {
		t.Errorf("GET answered %d bytes, not the %d pushed", len(r.body), len(content))
	}
	// A guest agent from before file transfer: 501, without asking it.
	for _, m := range []string{"GET", "PUT"} {
		r := e.must(e.do(m, "/instances/old/files"+q, tokAdmin, []byte("x"), octet...), 501)
		var pr apitypes.Problem
		json.Unmarshal(r.body, &pr)
		if pr.Type != apitypes.ProblemTypePrefix+"files-unsupported" || pr.Instance != "old" {
			t.Errorf("%s on an old guest: %s", m, r.body)
		}
	}
	// Audited: pushed and pulled, with path and size.
	r = e.must(e.do("GET", "/audit?instance=vm1", tokAdmin, nil), 200)
	var page apitypes.AuditPage
	json.Unmarshal(r.body, &page)
	seen := map[string]string{}
	for _, ev := range page.Events {
		seen[ev.Type] = ev.Detail + " " + ev.Result
	}
	for _, typ := range []string{protocol.AuditFilePushed, protocol.AuditFilePulled} {
		want := "path " + `"` + p + `"` + "; 500000 bytes"
		if got := seen[typ]; got != want+" ok" && got != want+"; mode 0640 ok" {
			t.Errorf("%s event: %q", typ, got)
		}
	}
}

// An agent from before streamed input gets the input whole, within
// agents.MaxStdinWhole; more is 413 naming the update, not a cut input.
func TestExecStdinToOldGuest(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "old.sock")
	testproc.ServeUnix(t, sock, func(c net.Conn) {
		s := protocol.NewSession(c, protocol.SessionConfig{Side: "guest", OnHello: func(protocol.Hello) protocol.HelloAck {
			return protocol.HelloAck{AgentVersion: "old", BootID: "old", SpoolID: "old",
				Capabilities: []string{protocol.CapExecStream, protocol.CapExecWindow, protocol.CapAuditSpool}}
		}, Handlers: map[protocol.Type]protocol.Handler{protocol.TypeExec: {Answer: protocol.TypeExecResult, Serve: func(_ context.Context, r *protocol.Request) (any, error) {
			var req protocol.Exec
			if err := r.Decode(&req); err != nil {
				return nil, err
			}
			if req.InputWindow != 0 {
				return nil, &protocol.Error{Code: protocol.CodeBadRequest, Message: "input_window sent to a guest without exec-stdin"}
			}
			return protocol.ExecResult{Stdout: strconv.Itoa(len(req.Stdin)), Route: protocol.RouteDefault}, nil
		}}}})
		<-s.Done()
	})
	e := newEnv(t, map[string]string{"old": "unix:" + sock})
	e.waitConnected("old")
	ct := []string{"Content-Type", apitypes.ExecStdinMediaType}
	body := "{\"command\":\"wc\"}\n" + strings.Repeat("z", agents.MaxStdinWhole)
	r := e.must(e.do("POST", "/instances/old/exec", tokOperator, body, ct...), 200).json(t)
	if r["stdout"] != strconv.Itoa(agents.MaxStdinWhole) {
		t.Errorf("the old guest got %v bytes of input, want %d", r["stdout"], agents.MaxStdinWhole)
	}
	var pr apitypes.Problem
	json.Unmarshal(e.must(e.do("POST", "/instances/old/exec", tokOperator, body+"z", ct...), 413).body, &pr)
	if pr.Type != apitypes.ProblemTypePrefix+"stdin-too-large" {
		t.Errorf("input over the bound to an old guest: %+v", pr)
	}
}
