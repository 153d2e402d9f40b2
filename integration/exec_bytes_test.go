//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testpayload"
	"github.com/vmpersona/vmpersona/protocol"
)

// TestExecBytesExactOnVM: random files of 1 KiB, 1 MiB and 20 MiB and a
// multi-byte UTF-8 text keep their sha256 through a real VM's agent over
// virtio-serial, into the guest (standard input streamed by vmpersonactl
// and by the API) and out of it (streamed output through both, and the
// buffered answer within its bound).
func TestExecBytesExactOnVM(t *testing.T) {
	t.Parallel()
	vm := newVM(t, vmOptions{})
	vm.Start(t)
	h := startHostd(t, hostdOptions{Instances: map[string]string{vm.Name: vm.Endpoint()}})
	h.WaitConnected(vm.Name, bootTimeout)

	for _, p := range testpayload.Set(testpayload.LargeVM) {
		t.Run(p.Name, func(t *testing.T) {
			want := fmt.Sprintf("%x", sha256.Sum256(p.Data))
			file := "/tmp/" + p.Name

			// In through vmpersonactl's standard input.
			r := h.CtlIn(p.Data, "exec", "--stdin", "--timeout", "5m", vm.Name, "--", "sh", "-c", `cat > "$1"; sha256sum "$1"`, "sh", file)
			if r.Code != 0 || !strings.HasPrefix(r.Stdout, want+" ") {
				t.Fatalf("vmpersonactl exec --stdin: exit %d, guest sha256 %q, want %s (%s)", r.Code, r.Stdout, want, r.Stderr)
			}
			// Out through vmpersonactl (streamed), and in and out at once.
			r = h.Ctl("exec", "--timeout", "5m", vm.Name, "--", "cat", file)
			if got := fmt.Sprintf("%x", sha256.Sum256([]byte(r.Stdout))); r.Code != 0 || got != want {
				t.Errorf("vmpersonactl exec cat: exit %d, %d bytes of %d back, sha256 differs", r.Code, len(r.Stdout), len(p.Data))
			}
			r = h.CtlIn(p.Data, "exec", "-i", "--timeout", "5m", vm.Name, "--", "cat")
			if got := fmt.Sprintf("%x", sha256.Sum256([]byte(r.Stdout))); r.Code != 0 || got != want {
				t.Errorf("vmpersonactl exec -i cat: exit %d, %d bytes of %d back, sha256 differs (%s)", r.Code, len(r.Stdout), len(p.Data), r.Stderr)
			}

			// The API: streamed input to sha256sum, streamed output of cat.
			out := h.execStdinStream(t, vm.Name, apitypes.ExecRequest{Command: "sha256sum", TimeoutSeconds: 300}, p.Data)
			if !strings.HasPrefix(string(out), want+" ") {
				t.Errorf("API streamed stdin: the guest's sha256sum says %q, want %s", out, want)
			}
			out = h.execStdinStream(t, vm.Name, apitypes.ExecRequest{Command: "cat", Args: []string{file}, TimeoutSeconds: 300}, nil)
			if got := fmt.Sprintf("%x", sha256.Sum256(out)); got != want {
				t.Errorf("API streamed stdout: %d bytes of %d, sha256 differs", len(out), len(p.Data))
			}
			// The buffered answer, within the guest's 1 MiB bound.
			res, prob, st := h.Exec(vm.Name, apitypes.ExecRequest{Command: "cat", Args: []string{file}})
			b, err := res.StdoutBytes()
			switch {
			case st != http.StatusOK || err != nil:
				t.Errorf("API buffered cat: %d %+v %v", st, prob, err)
			case len(p.Data) <= 1<<20 && (fmt.Sprintf("%x", sha256.Sum256(b)) != want || res.StdoutTruncated):
				t.Errorf("API buffered cat: %d bytes of %d, truncated %v", len(b), len(p.Data), res.StdoutTruncated)
			case len(p.Data) > 1<<20 && (!res.StdoutTruncated || !bytes.Equal(b, p.Data[:1<<20])):
				t.Errorf("API buffered cat over the bound: %d bytes, truncated %v; want the first 1 MiB, flagged", len(b), res.StdoutTruncated)
			}
		})
	}
}

// execStdinStream runs a streamed exec through the API with stdin streamed
// after the request document (nil: none) and returns its standard output.
func (h *Hostd) execStdinStream(t *testing.T, id string, req apitypes.ExecRequest, stdin []byte) []byte {
	t.Helper()
	doc, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	body := io.MultiReader(bytes.NewReader(append(doc, '\n')), bytes.NewReader(stdin))
	hr, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://hostd/instances/"+id+"/exec?stream=true", body)
	hr.Header.Set("Content-Type", apitypes.ExecStdinMediaType)
	resp, err := h.http.Do(hr)
	if err != nil {
		t.Fatalf("exec %s: %v", req.Command, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("exec %s: %d %s", req.Command, resp.StatusCode, b)
	}
	var out []byte
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var l apitypes.ExecStreamLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("stream line: %v", err)
		}
		switch l.Stream {
		case apitypes.StreamStdout:
			b, err := protocol.DecodeOutput(l.Data, l.Encoding)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b...)
		case apitypes.StreamExit:
			if l.ExecResult.ExitCode != 0 {
				t.Errorf("exec %s: exit %d", req.Command, l.ExecResult.ExitCode)
			}
			return out
		case apitypes.StreamStderr:
		default:
			t.Fatalf("exec %s: stream line %s", req.Command, sc.Bytes())
		}
	}
	t.Fatalf("exec %s: the stream ended without its exit line: %v", req.Command, sc.Err())
	return nil
}
