package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/internal/testpayload"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// These tests copy files into and out of the real guest daemon on a unix
// socket, through the real host daemon's API and through vmpersonactl. The
// guest runs on this machine, so the test reads and writes its files
// directly to check them.

// apiDo sends one request to the host daemon's unix socket (as root: admin).
// length < 0 sends the body chunked.
func (d *daemons) apiDo(t *testing.T, method, path string, body io.Reader, length int64) *http.Response {
	t.Helper()
	c := testproc.UnixHTTP(d.sock, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, method, "http://hostd"+path, body)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
		req.ContentLength = length
		if length < 0 {
			req.ContentLength = -1
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func filesURL(p string, extra ...string) string {
	q := url.Values{"path": {p}}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	return "/instances/vm1/files?" + q.Encode()
}

func problemOf(t *testing.T, resp *http.Response) apitypes.Problem {
	t.Helper()
	var p apitypes.Problem
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("status %d, not a problem document: %q", resp.StatusCode, b)
	}
	return p
}

// leftovers lists the names in dir other than keep (a temporary file left
// behind shows here).
func leftovers(t *testing.T, dir string, keep ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !strings.Contains(strings.Join(keep, "\x00")+"\x00", e.Name()+"\x00") {
			out = append(out, e.Name())
		}
	}
	return out
}

// fileLarge is the largest file of TestFilePushPullBytesExact: 17 MiB,
// above protocol.DefaultMaxPayload (16 MiB, the largest frame), so a file
// that is not cut into chunks of protocol.FileChunk fails. It was 20 MiB.
const fileLarge = 17 << 20

func TestFilePushPullBytesExact(t *testing.T) {
	d := startDaemons(t, true)
	local := t.TempDir()
	guest := t.TempDir()
	for name, content := range payloads(t, local, fileLarge) {
		if name == "utf8-text" {
			continue
		}
		src := filepath.Join(local, name)
		t.Run(name, func(t *testing.T) {
			// CLI push, then the guest's file, CLI pull to a file and to stdout.
			dst := filepath.Join(guest, name+"-cli")
			want(t, d.ctl(t, "file", "push", "vm1", src, dst, "--mode", "0600"), 0, "file push")
			got, err := os.ReadFile(dst)
			if err != nil || sum(got) != sum(content) {
				t.Fatalf("pushed %s: %d bytes, sha256 %s; want %d, %s (%v)", name, len(got), sum(got), len(content), sum(content), err)
			}
			if st, _ := os.Stat(dst); st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
			back := filepath.Join(local, name+"-back")
			want(t, d.ctl(t, "file", "pull", "vm1", dst, back), 0, "file pull")
			if got, _ := os.ReadFile(back); sum(got) != sum(content) {
				t.Errorf("pulled to a file: %d bytes, sha256 differs", len(got))
			}
			r := d.ctl(t, "file", "pull", "vm1", dst, "-")
			want(t, r, 0, "file pull -")
			if sum([]byte(r.stdout)) != sum(content) {
				t.Errorf("pulled to stdout: %d bytes, sha256 differs", len(r.stdout))
			}

			// The API: PUT the bytes, GET them back.
			adst := filepath.Join(guest, name+"-api")
			f, _ := os.Open(src)
			defer f.Close()
			resp := d.apiDo(t, http.MethodPut, filesURL(adst), f, int64(len(content)))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("PUT: %d %+v", resp.StatusCode, problemOf(t, resp))
			}
			var res apitypes.FileResult
			if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || res.Size != int64(len(content)) || res.Path != adst {
				t.Errorf("PUT answered %+v (%v)", res, err)
			}
			resp = d.apiDo(t, http.MethodGet, filesURL(adst), nil, 0)
			b, err := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || err != nil || sum(b) != sum(content) {
				t.Errorf("GET: %d, %d bytes, sha256 equal %v (%v)", resp.StatusCode, len(b), sum(b) == sum(content), err)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/octet-stream" {
				t.Errorf("GET Content-Type %q", ct)
			}
		})
	}
	large := testpayload.LargeName(fileLarge)
	// stdin, of unknown length (sent chunked).
	content := []byte(strings.Repeat("from stdin\x00\xff\n", 70000))
	dst := filepath.Join(guest, "stdin")
	r := runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, string(content), "file", "push", "vm1", "-", dst)
	want(t, r, 0, "file push -")
	if got, _ := os.ReadFile(dst); sum(got) != sum(content) {
		t.Errorf("pushed from stdin: %d bytes of %d", len(got), len(content))
	}
	if left := leftovers(t, guest, "binary-1KiB-cli", "binary-1KiB-api", "binary-1MiB-cli", "binary-1MiB-api", large+"-cli", large+"-api", "stdin"); len(left) != 0 {
		t.Errorf("the guest's directory holds %v", left)
	}

	// Each transfer is audited with its path and size.
	resp := d.apiDo(t, http.MethodGet, "/audit?type=file_pushed&limit=1000", nil, 0)
	var page apitypes.AuditPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	wantDetail := fmt.Sprintf("path %q; %d bytes", filepath.Join(guest, large+"-api"), fileLarge)
	found := false
	for _, ev := range page.Events {
		if ev.Detail == wantDetail && ev.Result == "ok" && ev.Instance == "vm1" && ev.Actor != "" {
			found = true
		}
	}
	if !found {
		t.Errorf("no file_pushed event %q among %+v", wantDetail, page.Events)
	}
	resp = d.apiDo(t, http.MethodGet, "/audit?type=file_pulled&limit=1000", nil, 0)
	page = apitypes.AuditPage{}
	json.NewDecoder(resp.Body).Decode(&page)
	if len(page.Events) < 9 {
		t.Errorf("%d file_pulled events, want 9", len(page.Events))
	}
}

func TestFileAdminOnly(t *testing.T) {
	d := startDaemons(t, true)
	dir := t.TempDir()
	src := writeFile(t, dir, "src", "secret\n")
	dst := filepath.Join(dir, "dst")
	for _, tok := range []string{tokViewer, tokOperator} {
		r := d.ctlTCP(t, tok, "file", "push", "vm1", src, dst)
		want(t, r, exitAuth, "push as "+tok)
		if !strings.Contains(r.stderr, "writing files in guests needs the admin role") {
			t.Errorf("stderr %q", r.stderr)
		}
		want(t, d.ctlTCP(t, tok, "file", "pull", "vm1", src, "-"), exitAuth, "pull as "+tok)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Fatal("a refused push wrote the file")
	}
	want(t, d.ctlTCP(t, tokAdmin, "file", "push", "vm1", src, dst), 0, "push as admin")
	r := d.ctlTCP(t, tokAdmin, "file", "pull", "vm1", dst, "-")
	want(t, r, 0, "pull as admin")
	if r.stdout != "secret\n" {
		t.Errorf("pulled %q", r.stdout)
	}
	// A name as long as the file system allows still gets a temporary file.
	long := filepath.Join(dir, strings.Repeat("n", 255))
	want(t, d.ctl(t, "file", "push", "vm1", src, long), 0, "push to a 255-byte name")
	if b, _ := os.ReadFile(long); string(b) != "secret\n" {
		t.Errorf("the long name holds %q", b)
	}
}

func TestFileBoundAndRefusals(t *testing.T) {
	d := startDaemons(t, true, "--max-file-size", "1048576")
	local := t.TempDir()
	guest := t.TempDir()
	big := make([]byte, 1<<20+1)
	src := filepath.Join(local, "big")
	os.WriteFile(src, big, 0o644)
	dst := filepath.Join(guest, "big")

	// Announced over the bound: refused before the guest is asked.
	r := d.ctl(t, "file", "push", "vm1", src, dst)
	if r.code == 0 || !strings.Contains(r.stderr, "exceeds 1048576 bytes") {
		t.Errorf("push over the bound: %s", r)
	}
	// Not announced (chunked): refused when the bound is passed, after
	// chunks reached the guest; nothing is left there.
	resp := d.apiDo(t, http.MethodPut, filesURL(dst), io.MultiReader(strings.NewReader(strings.Repeat("x", 600<<10)), strings.NewReader(strings.Repeat("y", 600<<10))), -1)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked over the bound: %d, want 413", resp.StatusCode)
	}
	if left := leftovers(t, guest); len(left) != 0 {
		t.Errorf("after a refused push the guest's directory holds %v", left)
	}
	// A file over the bound cannot be pulled.
	os.WriteFile(dst, big, 0o644)
	resp = d.apiDo(t, http.MethodGet, filesURL(dst), nil, 0)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("pull over the bound: %d, want 413", resp.StatusCode)
	}
	os.Remove(dst)

	tests := []struct {
		name, method, path string
		status             int
		field              string
	}{
		{"relative push", "PUT", "etc/motd", 422, "path"},
		{"relative pull", "GET", "etc/motd", 422, "path"},
		{"no path", "GET", "", 422, "path"},
		{"push onto a directory", "PUT", guest, 422, "path"},
		{"pull a directory", "GET", guest, 422, "path"},
		{"pull a device", "GET", "/dev/null", 422, "path"},
		{"pull a missing file", "GET", filepath.Join(guest, "missing"), 404, "path"},
		{"push into a missing directory", "PUT", filepath.Join(guest, "missing", "f"), 404, "path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.method == "PUT" {
				body = strings.NewReader("data")
			}
			resp := d.apiDo(t, tt.method, filesURL(tt.path), body, 4)
			p := problemOf(t, resp)
			if resp.StatusCode != tt.status || p.Status != tt.status {
				t.Fatalf("%d %+v, want %d", resp.StatusCode, p, tt.status)
			}
			if p.Field != tt.field {
				t.Errorf("problem %+v does not name field %q", p, tt.field)
			}
		})
	}
	resp = d.apiDo(t, http.MethodPut, filesURL(filepath.Join(guest, "m"), "mode", "0999"), strings.NewReader("x"), 1)
	if p := problemOf(t, resp); resp.StatusCode != 422 || p.Field != "mode" {
		t.Errorf("mode 0999: %d %+v", resp.StatusCode, p)
	}
	resp = d.apiDo(t, http.MethodPut, filesURL(filepath.Join(guest, "o"), "owner", "no-such-user-here"), strings.NewReader("x"), 1)
	if resp.StatusCode != 422 {
		t.Errorf("unknown owner: %d, want 422", resp.StatusCode)
	}
	if left := leftovers(t, guest); len(left) != 0 {
		t.Errorf("after refusals the guest's directory holds %v", left)
	}
}

// A push whose client goes away mid-body leaves the target as it was and
// no temporary file.
func TestFilePartialPushLeavesTarget(t *testing.T) {
	d := startDaemons(t, true)
	guest := t.TempDir()
	dst := filepath.Join(guest, "target")
	os.WriteFile(dst, []byte("original\n"), 0o644)

	c, err := net.Dial("unix", d.sock)
	if err != nil {
		t.Fatal(err)
	}
	const length = 2 << 20
	fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: hostd\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", filesURL(dst), length)
	c.Write([]byte(strings.Repeat("z", 700<<10)))
	// Wait until the guest has started the temporary file, then go away.
	testproc.WaitFor(t, "the guest's temporary file", func() bool { return len(leftovers(t, guest, "target")) == 1 })
	c.Close()
	testproc.WaitFor(t, "the temporary file to be removed", func() bool { return len(leftovers(t, guest, "target")) == 0 })
	if b, _ := os.ReadFile(dst); string(b) != "original\n" {
		t.Errorf("target now holds %d bytes", len(b))
	}
	// The session goes on: a push after it works.
	want(t, runCtl(t, []string{"VMPERSONA_SOCKET=" + d.sock}, "new\n", "file", "push", "vm1", "-", dst), 0, "push after")
	if b, _ := os.ReadFile(dst); string(b) != "new\n" {
		t.Errorf("target holds %q", b)
	}
}
