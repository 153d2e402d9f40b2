package apiclient

import (
	"bytes"
	"errors"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"strings"
	"testing"
)

// The stream parser reads whatever a server (or something posing as one)
// sends: it must never panic, and it either returns the exit line's result
// or an error the caller can classify.
func FuzzReadExecStream(f *testing.F) {
	for _, s := range []string{
		`{"stream":"stdout","data":"a"}` + "\n" + `{"stream":"exit","exit_code":0,"signal":"","route":"default","persona":null,"duration_ms":1}` + "\n",
		`{"stream":"stderr","data":"\u00e9"}` + "\n" + `{"stream":"exit","exit_code":-1,"signal":"SIGKILL","timed_out":true}`,
		`{"stream":"error","status":503,"title":"Agent not connected","detail":"x"}` + "\n",
		`{"stream":"stdout","data":"partial"}`,
		"\n\n   \n",
		`{"stream":"exit","exit_code":"nope"}`,
		`[1,2,3]`,
		`{"stream":"stdout","data":` + strings.Repeat("x", 100),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var out, errb bytes.Buffer
		res, err := readExecStream(bytes.NewReader(body), &out, &errb)
		if err == nil {
			if res.Stdout != "" || res.Stderr != "" {
				t.Fatalf("a streamed result carries output: %+v", res)
			}
			return
		}
		var p *apitypes.Problem
		if !errors.Is(err, ErrProtocol) && !errors.As(err, &p) {
			t.Fatalf("unclassified error %T: %v", err, err)
		}
	})
}

func FuzzDecodeProblem(f *testing.F) {
	f.Add(403, "application/problem+json", []byte(`{"type":"urn:vmpersona:problem:command-denied","title":"Command not allowed","status":403,"detail":"Error: Command not allowed in current persona"}`))
	f.Add(409, "application/problem+json; charset=utf-8", []byte(`{"status":409,"result":"aborted","exit_code":3,"stdout":"x"}`))
	f.Add(422, "application/json", []byte(`{"status":"not a number"}`))
	f.Add(502, "text/html", []byte("<html>bad gateway</html>"))
	f.Add(0, "", []byte(nil))
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		p := decodeProblem(status, ctype, body)
		if p == nil {
			t.Fatal("nil problem")
		}
		_ = p.Error()
		_ = p.Unwrap()
		if len(p.Detail) > len(body)+len("…") && !isJSON(ctype) {
			t.Fatalf("detail longer than the body: %q", p.Detail)
		}
	})
}
