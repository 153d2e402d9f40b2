package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testpayload"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// These tests prove that exec carries any bytes exactly, through the REST
// API and through vmpersonactl, with the real host daemon and the real guest
// daemon on a unix socket (the guest runs on this machine, so it reads the
// files the test writes).

// payloads writes the files a byte-exactness test sends through into dir:
// testpayload.Set(large).
func payloads(t *testing.T, dir string, large int) map[string][]byte {
	t.Helper()
	p := map[string][]byte{}
	for _, c := range testpayload.Set(large) {
		if err := os.WriteFile(filepath.Join(dir, c.Name), c.Data, 0o644); err != nil {
			t.Fatal(err)
		}
		p[c.Name] = c.Data
	}
	return p
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// apiPost sends one request to the host daemon's unix socket.
func (d *daemons) apiPost(t *testing.T, path string, body any) *http.Response {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return d.apiPostRaw(t, path, "application/json", bytes.NewReader(b))
}

// stdinBody is the body of an exec whose standard input follows the
// request document.
func stdinBody(t *testing.T, req apitypes.ExecRequest, stdin io.Reader) io.Reader {
	t.Helper()
	doc, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return io.MultiReader(bytes.NewReader(append(doc, '\n')), stdin)
}

// apiPostRaw sends one request with a body of the given type.
func (d *daemons) apiPostRaw(t *testing.T, path, contentType string, body io.Reader) *http.Response {
	t.Helper()
	c := testproc.UnixHTTP(d.sock, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://hostd"+path, body)
	req.Header.Set("Content-Type", contentType)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// execStreamAPI runs a streamed exec over the REST API and returns stdout
// and stderr as decoded from the NDJSON lines, failing on any text line
// that is not whole UTF-8 characters.
func (d *daemons) execStreamAPI(t *testing.T, req apitypes.ExecRequest) (stdout, stderr []byte, res apitypes.ExecResult) {
	t.Helper()
	return readExecStream(t, d.apiPost(t, "/instances/vm1/exec?stream=true", req))
}

// execStreamStdinAPI is execStreamAPI with the command's standard input
// streamed after the request document.
func (d *daemons) execStreamStdinAPI(t *testing.T, req apitypes.ExecRequest, stdin io.Reader) (stdout, stderr []byte, res apitypes.ExecResult) {
	t.Helper()
	return readExecStream(t, d.apiPostRaw(t, "/instances/vm1/exec?stream=true", apitypes.ExecStdinMediaType, stdinBody(t, req, stdin)))
}

func readExecStream(t *testing.T, resp *http.Response) (stdout, stderr []byte, res apitypes.ExecResult) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("streamed exec: %d %s", resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var l apitypes.ExecStreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("stream line %q: %v", sc.Bytes(), err)
		}
		switch l.Stream {
		case apitypes.StreamStdout, apitypes.StreamStderr:
			var data []byte
			switch l.Encoding {
			case "":
				// A JSON string decodes to valid UTF-8 only; a
				// character split across lines would have become U+FFFD.
				if strings.ContainsRune(l.Data, utf8.RuneError) {
					t.Fatalf("a text chunk holds U+FFFD: a character was split or altered")
				}
				data = []byte(l.Data)
			case apitypes.EncodingBase64:
				var err error
				if data, err = base64.StdEncoding.DecodeString(l.Data); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("unknown encoding %q", l.Encoding)
			}
			if l.Stream == apitypes.StreamStdout {
				stdout = append(stdout, data...)
			} else {
				stderr = append(stderr, data...)
			}
		case apitypes.StreamExit:
			return stdout, stderr, *l.ExecResult
		default:
			t.Fatalf("stream line %s", sc.Bytes())
		}
	}
	t.Fatalf("the stream ended without its exit line: %v", sc.Err())
	return
}

// execAPI runs a buffered exec over the REST API.
func (d *daemons) execAPI(t *testing.T, req apitypes.ExecRequest) apitypes.ExecResult {
	t.Helper()
	resp := d.apiPost(t, "/instances/vm1/exec", req)
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("exec: %d %s", resp.StatusCode, b)
	}
	var res apitypes.ExecResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

// TestExecBytesExact: the largest payload is testpayload.LargeUnit, 9 MiB,
// above every bound it crosses here: the 8 MiB exec request document
// (streamed standard input is not held to it), the 8 MiB of output a call
// holds for its consumer, the 1 MiB buffered answer. It was 20 MiB, as the
// VM tier (integration/exec_bytes_test.go) still sends; under the race
// detector each MiB costs this test about a second of CPU.
func TestExecBytesExact(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	files := payloads(t, dir, testpayload.LargeUnit)

	for name, content := range files {
		path := filepath.Join(dir, name)
		t.Run(name, func(t *testing.T) {
			want := sum(content)

			// The CLI streams: nothing is cut and every byte is kept.
			r := d.ctl(t, "exec", "vm1", "--", "cat", path)
			if r.code != 0 || sum([]byte(r.stdout)) != want {
				t.Errorf("vmpersonactl exec cat: exit %d, %d bytes back of %d, sha256 differs: %v", r.code, len(r.stdout), len(content), sum([]byte(r.stdout)) != want)
			}
			// The API's stream, stdout and stderr.
			out, errb, res := d.execStreamAPI(t, apitypes.ExecRequest{Command: "sh", Args: []string{"-c", `cat "$1"; cat "$1" >&2`, "sh", path}})
			if sum(out) != want || sum(errb) != want || res.ExitCode != 0 || res.StdoutTruncated {
				t.Errorf("API stream: stdout %d bytes, stderr %d bytes of %d; result %+v", len(out), len(errb), len(content), res)
			}

			// A buffered answer holds up to the guest's bound (1 MiB by
			// default), flagged when cut.
			res = d.execAPI(t, apitypes.ExecRequest{Command: "cat", Args: []string{path}})
			got, err := res.StdoutBytes()
			if err != nil {
				t.Fatal(err)
			}
			if len(content) <= 1<<20 {
				if sum(got) != want || res.StdoutTruncated {
					t.Errorf("API buffered: %d bytes back of %d, truncated %v", len(got), len(content), res.StdoutTruncated)
				}
			} else if !res.StdoutTruncated || !bytes.Equal(got, content[:1<<20]) {
				t.Errorf("API buffered, over the bound: %d bytes back, truncated %v; want the first 1 MiB, flagged", len(got), res.StdoutTruncated)
			}

			// Standard input, through the CLI (streamed as the command
			// reads it, any size) and the API.
			r = runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, string(content), "exec", "vm1", "--stdin", "--", "cat")
			if r.code != 0 || sum([]byte(r.stdout)) != want {
				t.Errorf("vmpersonactl exec --stdin cat: exit %d (%s), %d bytes back of %d", r.code, r.stderr, len(r.stdout), len(content))
			}
			r = runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, string(content), "-o", "json", "exec", "vm1", "--stdin", "--", "sha256sum")
			if r.code != 0 || !strings.Contains(r.stdout, want+"  -") {
				t.Errorf("vmpersonactl -o json exec --stdin sha256sum: exit %d (%s): %s", r.code, r.stderr, r.stdout)
			}
			// The API with streamed input: output streams back at the
			// same time (a cat of any size), or is answered whole.
			out, _, res = d.execStreamStdinAPI(t, apitypes.ExecRequest{Command: "cat"}, bytes.NewReader(content))
			if sum(out) != want || res.ExitCode != 0 {
				t.Errorf("API streamed stdin and stdout: %d bytes back of %d; result %+v", len(out), len(content), res)
			}
			resp := d.apiPostRaw(t, "/instances/vm1/exec", apitypes.ExecStdinMediaType, stdinBody(t, apitypes.ExecRequest{Command: "sha256sum"}, bytes.NewReader(content)))
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want+"  -") {
				t.Errorf("API streamed stdin, whole answer: %d %s", resp.StatusCode, b)
			}

			if len(content) > 6<<20 {
				return // over the request bound for stdin in the document (documented)
			}
			in := apitypes.ExecRequest{Command: "sha256sum"}
			in.Stdin, in.StdinEncoding = string(content), ""
			if !utf8.Valid(content) {
				in.Stdin, in.StdinEncoding = base64.StdEncoding.EncodeToString(content), apitypes.EncodingBase64
			}
			res = d.execAPI(t, in)
			if !strings.HasPrefix(res.Stdout, want+" ") {
				t.Errorf("API stdin: the guest's sha256sum says %q, want %s", res.Stdout, want)
			}
		})
	}
}

// A text stream read by the CLI in small, odd pieces still comes back whole:
// chunk boundaries never fall inside a character.
func TestExecTextChunksKeepCharacters(t *testing.T) {
	d := startDaemons(t, true)
	script := `i=0; while [ $i -lt 300 ]; do printf 'é€😀'; printf 'ж'; i=$((i+1)); done`
	out, _, res := d.execStreamAPI(t, apitypes.ExecRequest{Command: "sh", Args: []string{"-c", script}})
	want := strings.Repeat("é€😀ж", 300)
	if string(out) != want || res.ExitCode != 0 {
		t.Errorf("got %d bytes, want %d", len(out), len(want))
	}
	// Bytes that are not UTF-8, and a character cut at the very end.
	out, _, _ = d.execStreamAPI(t, apitypes.ExecRequest{Command: "printf", Args: []string{`\377\376\000AB\342\202`}})
	if !bytes.Equal(out, []byte{0xff, 0xfe, 0, 'A', 'B', 0xe2, 0x82}) {
		t.Errorf("binary output came back as % x", out)
	}
}

// A cut output is visible: flagged in the answer, a warning and exit 125
// from the CLI, unless --allow-truncated.
func TestExecTruncationShows(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	big := writeFile(t, dir, "big", strings.Repeat("0123456789abcdef", 1<<17)) // 2 MiB

	res := d.execAPI(t, apitypes.ExecRequest{Command: "cat", Args: []string{big}, MaxOutputBytes: 1000})
	if len(res.Stdout) != 1000 || !res.StdoutTruncated {
		t.Errorf("max_output_bytes 1000: %d bytes, truncated %v", len(res.Stdout), res.StdoutTruncated)
	}
	// The guest's bound wins over a larger request.
	res = d.execAPI(t, apitypes.ExecRequest{Command: "cat", Args: []string{big}, MaxOutputBytes: 64 << 20})
	if len(res.Stdout) != 1<<20 || !res.StdoutTruncated {
		t.Errorf("max_output_bytes over the guest's bound: %d bytes, truncated %v", len(res.Stdout), res.StdoutTruncated)
	}

	r := d.ctl(t, "exec", "vm1", "--max-output", "100", "--", "cat", big)
	want(t, r, exitTruncated, "a cut stream")
	if len(r.stdout) != 100 || !strings.Contains(r.stderr, "warning: the command's output was cut (stdout)") {
		t.Errorf("cut stream: %s", r)
	}
	want(t, d.ctl(t, "exec", "vm1", "--max-output", "100", "--allow-truncated", "--", "cat", big), 0, "--allow-truncated")
	r = d.ctl(t, "-o", "json", "exec", "vm1", "--", "cat", big)
	want(t, r, exitTruncated, "-o json over the guest's bound")
	// A failing command keeps its own code.
	want(t, d.ctl(t, "exec", "vm1", "--max-output", "10", "--", "sh", "-c", `cat "$1"; exit 3`, "sh", big), 3, "cut and failed")
}

// A cwd that does not exist is a command that cannot be started: 422
// naming the reason (it was 400 "guest refused").
func TestExecMissingCwd(t *testing.T) {
	d := startDaemons(t, true)
	resp := d.apiPost(t, "/instances/vm1/exec", apitypes.ExecRequest{Command: "true", Cwd: "/no/such/dir"})
	b, _ := io.ReadAll(resp.Body)
	var p apitypes.Problem
	json.Unmarshal(b, &p)
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(p.Detail, "/no/such/dir") {
		t.Errorf("missing cwd: %d %s", resp.StatusCode, b)
	}
	if !strings.Contains(string(b), `"reason":"cannot_start"`) {
		t.Errorf("the problem does not name the reason: %s", b)
	}
}

// An override to an absolute path runs with argv[0] set to that path (a
// multi-call binary picks its program from argv[0]: with the typed name,
// "whoami": "/bin/echo" on busybox ran whoami). The target here is this
// test program, which prints its argv when the persona says so.
func TestOverrideArgv0(t *testing.T) {
	d := startDaemons(t, true)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	persona := fmt.Sprintf(`{"name": "argv", "environment_variables": {"VMP_TEST_PRINT_ARGV": "1"},
		"command_overrides": {"whoami": %q}}`, self)
	want(t, d.ctl(t, "persona", "create", "-f", writeFile(t, t.TempDir(), "p.json", persona)), 0, "create")
	want(t, d.ctl(t, "activate", "vm1", "argv"), 0, "activate")
	r := d.ctl(t, "exec", "vm1", "--", "whoami", "a b", "c")
	want(t, r, 0, "exec the override")
	if r.stdout != self+" a b c\n" {
		t.Errorf("the override ran with argv %q, want argv[0] %q", r.stdout, self)
	}
}
