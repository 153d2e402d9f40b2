package reliability

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// repeatReader yields n bytes of a JSON persona whose pre-activation script
// is one huge string, without holding it in memory.
type repeatReader struct {
	prefix, suffix string
	n, off         int64
}

func (r *repeatReader) Read(p []byte) (int, error) {
	total := int64(len(r.prefix)) + r.n + int64(len(r.suffix))
	if r.off >= total {
		return 0, io.EOF
	}
	i := 0
	for i < len(p) && r.off < total {
		switch {
		case r.off < int64(len(r.prefix)):
			p[i] = r.prefix[r.off]
		case r.off < int64(len(r.prefix))+r.n:
			p[i] = 'x'
		default:
			p[i] = r.suffix[r.off-int64(len(r.prefix))-r.n]
		}
		i++
		r.off++
	}
	return i, nil
}

// TestHostileInput sends malformed, mistyped, oversized and malicious
// requests to the real host daemon: each must be answered 4xx with a
// problem document, the daemon must stay up, and its memory bounded after a
// 100 MB body.
func TestHostileInput(t *testing.T) {
	parallel(t)
	dir := testproc.ShortDir(t)
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"))

	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	deepObj := `{"name":"deep","environment_variables":` + strings.Repeat(`{"a":`, 20000) + `1` + strings.Repeat("}", 20000) + "}"
	cases := []struct{ name, method, path, body string }{
		{"malformed", "POST", "/personas", `{"name":"a",,}`},
		{"truncated", "POST", "/personas", `{"name":"a","environment_variables":{"A":"b"`},
		{"empty body", "POST", "/personas", ``},
		{"two values", "POST", "/personas", `{"name":"a"}{"name":"b"}`},
		{"not an object", "POST", "/personas", `"hardened"`},
		{"null", "POST", "/personas", `null`},
		{"wrong type name", "POST", "/personas", `{"name":42}`},
		{"wrong type env", "POST", "/personas", `{"name":"a","environment_variables":["A=b"]}`},
		{"wrong type restricted", "POST", "/personas", `{"name":"a","restricted_commands":"rm"}`},
		{"wrong type default", "POST", "/personas", `{"name":"a","default_persona":"true"}`},
		{"unknown field", "POST", "/personas", `{"name":"a","is_admin":true}`},
		{"deep array", "POST", "/personas", deep},
		{"deep object", "POST", "/personas", deepObj},
		{"name ../x", "POST", "/personas", `{"name":"../x"}`},
		{"name slash", "POST", "/personas", `{"name":"a/b"}`},
		{"name look-alike", "POST", "/personas", `{"name":"аdmin"}`}, // Cyrillic а
		{"name fullwidth", "POST", "/personas", `{"name":"ｈardened"}`},
		{"name NUL", "POST", "/personas", `{"name":"a\u0000b"}`},
		{"name upper", "POST", "/personas", `{"name":"Hardened"}`},
		{"name 10KB", "POST", "/personas", `{"name":"` + strings.Repeat("a", 10240) + `"}`},
		{"name empty", "POST", "/personas", `{"name":""}`},
		{"env name with =", "POST", "/personas", `{"name":"a","environment_variables":{"A=B":"x"}}`},
		{"env name with ;", "POST", "/personas", `{"name":"a","environment_variables":{"A;rm -rf /":"x"}}`},
		{"env name $()", "POST", "/personas", `{"name":"a","environment_variables":{"$(reboot)":"x"}}`},
		{"env name space", "POST", "/personas", `{"name":"a","environment_variables":{"A B":"x"}}`},
		{"env name empty", "POST", "/personas", `{"name":"a","environment_variables":{"":"x"}}`},
		{"env name digit", "POST", "/personas", `{"name":"a","environment_variables":{"1A":"x"}}`},
		{"env value NUL", "POST", "/personas", `{"name":"a","environment_variables":{"A":"x\u0000y"}}`},
		{"override empty name", "POST", "/personas", `{"name":"a","command_overrides":{"":"/bin/true"}}`},
		{"override relative", "POST", "/personas", `{"name":"a","command_overrides":{"ls":"bin/ls"}}`},
		{"restricted empty", "POST", "/personas", `{"name":"a","restricted_commands":[""]}`},
		{"PUT bad name path", "PUT", "/personas/..%2fx", `{"name":"x"}`},
		{"PUT name mismatch", "PUT", "/personas/zzz", `{"name":"other"}`},
		{"GET 10KB name", "GET", "/personas/" + strings.Repeat("b", 10240), ``},
		{"DELETE look-alike", "DELETE", "/personas/%D0%B0dmin", ``},
		{"bad If-Match", "PUT", "/personas/zzz", `{"name":"zzz"}`},
		{"audit bad limit", "GET", "/audit?limit=abc", ``},
		{"audit huge limit", "GET", "/audit?limit=99999999999999999999", ``},
		{"audit bad since", "GET", "/audit?since=yesterday", ``},
		{"exec unknown instance", "POST", "/instances/nope/exec", `{"command":"ls"}`},
		{"exec path traversal instance", "POST", "/instances/..%2f..%2fetc/exec", `{"command":"ls"}`},
		{"activate unknown", "POST", "/instances/nope/personas/a/activate", ``},
		{"no route", "GET", "/../../etc/passwd", ``},
		{"bad method", "PATCH", "/personas/a", `{}`},
	}
	for _, c := range cases {
		hdr := []string{}
		if c.name == "bad If-Match" {
			hdr = []string{"If-Match", "not-an-etag"}
		}
		a, err := call(h.client, c.method, c.path, c.body, hdr...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, h.stderr)
		}
		if a.status < 400 || a.status >= 500 {
			t.Errorf("%s: %s %s answered %d, want 4xx: %.300s", c.name, c.method, c.path, a.status, a.body)
			continue
		}
		checkProblem(t, c.name, a)
	}
	// None of them created anything.
	if a := h.must(t, "GET", "/personas", nil, 200); strings.Contains(string(a.body), `"name"`) {
		t.Errorf("hostile requests created personas: %.500s", a.body)
	}
	if h.Exited() {
		t.Fatalf("hostd died: %s", h.stderr)
	}

	// A 100 MB script: refused 413 without the daemon holding it.
	rssBefore, _ := h.rssKB(t)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ { // three at once
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := &repeatReader{prefix: fmt.Sprintf(`{"name":"big%d","pre_activation_script":"#!/bin/sh\n`, i), suffix: `"}`, n: 100 << 20}
			a, err := call(h.client, "POST", "/personas", body)
			if err != nil {
				// The server may close the connection once it has answered 413
				// and stopped reading: the answer is then lost to the client,
				// which is still sending. Not a failure of the server.
				t.Logf("100 MB body %d: %v (server closed the connection after refusing)", i, err)
				return
			}
			if a.status != 413 {
				t.Errorf("100 MB body: %d, want 413: %.300s", a.status, a.body)
				return
			}
			checkProblem(t, "100 MB body", a)
		}(i)
	}
	wg.Wait()
	rssAfter, hwm := h.rssKB(t)
	t.Logf("hostd RSS %d KB before three 100 MB bodies, %d KB after, peak %d KB", rssBefore, rssAfter, hwm)
	// The bound: each request may buffer up to the persona body limit (8 MB)
	// in the JSON decoder, which grows its buffer by doubling (measured:
	// 66-75 MB for the three); the 100 MB bodies themselves (300 MB) must
	// never be held. Without the body limit the daemon grows by 1 GB.
	if bound := 150 << 10; rssAfter-rssBefore > bound {
		t.Errorf("hostd RSS grew by %d KB after three 100 MB bodies (bound %d KB)", rssAfter-rssBefore, bound)
	}
	if h.Exited() {
		t.Fatalf("hostd died: %s", h.stderr)
	}
	h.must(t, "GET", "/healthz", nil, 200)
}

// TestSlowloris opens a few connections that send a request header one byte
// at a time and never finish it: the daemon must keep serving others and drop
// each slow connection at its ReadHeaderTimeout (10 s). Set
// RELIABILITY_SLOWLORIS=0 to skip (it takes about 11 s).
func TestSlowloris(t *testing.T) {
	parallel(t)
	if os.Getenv("RELIABILITY_SLOWLORIS") == "0" {
		t.Skip("RELIABILITY_SLOWLORIS=0: the slowloris test waits for the 10 s ReadHeaderTimeout")
	}
	dir := testproc.ShortDir(t)
	sock := filepath.Join(dir, "hostd.sock")
	h := startHostd(t, filepath.Join(dir, "data"), sock)
	const conns = 4
	type result struct {
		dropped time.Duration
		err     error
	}
	results := make(chan result, conns)
	start := time.Now()
	for i := 0; i < conns; i++ {
		go func() {
			c, err := net.Dial("unix", sock)
			if err != nil {
				results <- result{err: err}
				return
			}
			defer c.Close()
			hdr := "GET /personas HTTP/1.1\r\nHost: hostd\r\nX-Slow: " + strings.Repeat("a", 100)
			// One byte every 200 ms, never the final CRLF CRLF; give up (as a
			// failure) after 20 s.
			for j := 0; time.Since(start) < 20*time.Second; j++ {
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte{hdr[j%len(hdr)]}); err != nil {
					results <- result{dropped: time.Since(start)}
					return
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := bufio.NewReader(c).ReadByte(); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						continue
					}
					results <- result{dropped: time.Since(start)} // EOF or reset: dropped
					return
				}
				// An answer (408 or 400) also ends it.
				results <- result{dropped: time.Since(start)}
				return
			}
			results <- result{err: fmt.Errorf("connection still open after %v", time.Since(start))}
		}()
	}
	// Meanwhile ordinary clients are served.
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < 20; i++ {
		h.must(t, "GET", "/healthz", nil, 200)
	}
	var worst time.Duration
	for i := 0; i < conns; i++ {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		worst = max(worst, r.dropped)
	}
	t.Logf("%d slowloris connections dropped by the server after at most %v (ReadHeaderTimeout 10 s)", conns, worst.Round(10*time.Millisecond))
}
