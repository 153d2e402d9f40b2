package agents

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"
)

func TestParseEndpoint(t *testing.T) {
	good := []struct {
		in   string
		want Endpoint
		str  string
	}{
		{"unix:/run/vmpersona/vm1.sock", Endpoint{Kind: KindUnix, Path: "/run/vmpersona/vm1.sock"}, ""},
		{"unix:rel/with:colon.sock", Endpoint{Kind: KindUnix, Path: "rel/with:colon.sock"}, ""},
		{"vsock:3:7070", Endpoint{Kind: KindVsock, CID: 3, Port: 7070}, ""},
		{"vsock:4294967294:1", Endpoint{Kind: KindVsock, CID: 4294967294, Port: 1}, ""},
		{"vsock:42", Endpoint{Kind: KindVsock, CID: 42, Port: DefaultVsockPort}, "vsock:42:7070"},
	}
	for _, tc := range good {
		got, err := ParseEndpoint(tc.in)
		if err != nil {
			t.Errorf("ParseEndpoint(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseEndpoint(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		str := tc.str
		if str == "" {
			str = tc.in
		}
		if got.String() != str {
			t.Errorf("ParseEndpoint(%q).String() = %q, want %q", tc.in, got.String(), str)
		}
		again, err := ParseEndpoint(got.String())
		if err != nil || again != got {
			t.Errorf("round trip of %q: %+v, %v", tc.in, again, err)
		}
	}

	bad := []string{
		"", "unix", "unix:", "/run/x.sock", "tcp:127.0.0.1:7070", "UNIX:/x",
		"vsock:", "vsock::7070", "vsock:x:7070", "vsock:3:", "vsock:3:port",
		"vsock:-1:7070", "vsock:4294967296:7070", "vsock:3:4294967296",
		"vsock:4294967295:7070", "vsock:3:4294967295", "vsock:3:7070:1",
		"unix:/a\x00b",
	}
	for _, in := range bad {
		ep, err := ParseEndpoint(in)
		if err == nil {
			t.Errorf("ParseEndpoint(%q) = %+v, want an error", in, ep)
			continue
		}
		if !errors.Is(err, ErrBadEndpoint) {
			t.Errorf("ParseEndpoint(%q) error %v does not wrap ErrBadEndpoint", in, err)
		}
	}
}

func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"unix:/x", "vsock:3:7070", "vsock:3", "vsock:a:b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ep, err := ParseEndpoint(s)
		if err != nil {
			return
		}
		again, err := ParseEndpoint(ep.String())
		if err != nil || again != ep {
			t.Fatalf("%q parsed to %+v, whose String %q parses to %+v, %v", s, ep, ep.String(), again, err)
		}
	})
}

// TestDialVsock dials a vsock endpoint nobody listens on and expects the
// kernel's refusal. This machine's kernel has no working vsock transport (no
// vhost-vsock, no loopback: the dial hangs or fails with ENODEV), so the test
// skips here, saying so; everything above the socket is the code the unix
// endpoint tests run.
func TestDialVsock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// CID 1 is the local loopback.
	conn, err := Endpoint{Kind: KindVsock, CID: 1, Port: 0x7fff_fff0}.dial(ctx)
	if err == nil {
		conn.Close()
		t.Fatal("dial to a vsock port nobody listens on succeeded")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) {
		t.Skipf("no working vsock transport in this kernel (no vhost-vsock, no loopback), a vsock round trip cannot run here: %v", err)
	}
}
