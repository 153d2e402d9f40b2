package protocol_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// loopReader serves the same bytes over and over without allocating.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

var smallPayload = []byte(`{"exit_code":0,"signal":"","stdout":"hello\n","stderr":"","stdout_truncated":false,"stderr_truncated":false,"route":"default","persona":null,"duration_ms":1.2}`)

var frameSizes = []struct {
	name    string
	payload []byte
}{
	{"small", smallPayload},
	{"1MiB", bytes.Repeat([]byte("0123456789abcdef"), 1<<16)},
}

func BenchmarkEncode(b *testing.B) {
	for _, s := range frameSizes {
		b.Run(s.name, func(b *testing.B) {
			buf := make([]byte, 0, protocol.HeaderSize+len(s.payload))
			h := protocol.Header{Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, Epoch: 1}
			b.SetBytes(int64(protocol.HeaderSize + len(s.payload)))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				h.ID = uint64(i)
				buf = protocol.AppendFrame(buf[:0], h, s.payload)
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, s := range frameSizes {
		b.Run(s.name, func(b *testing.B) {
			enc := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, Epoch: 1, ID: 9}, s.payload)
			r := protocol.NewReader(&loopReader{data: enc}, 0)
			if _, err := r.Next(); err != nil { // warm the buffer
				b.Fatal(err)
			}
			b.SetBytes(int64(len(enc)))
			b.ReportAllocs()
			for b.Loop() {
				f, err := r.Next()
				if err != nil || len(f.Payload) != len(s.payload) {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkExecOutputPayload compares the two ways an output chunk could
// travel: the binary ExecOutput payload the protocol uses, and a JSON
// object with base64 data (what an all-JSON protocol, like qemu-ga's,
// needs). Encode plus decode of one 64 KiB chunk.
func BenchmarkExecOutputPayload(b *testing.B) {
	chunk := bytes.Repeat([]byte("output line with \x00 binary \xff bytes\n"), 64<<10/36)
	b.Run("binary", func(b *testing.B) {
		buf := make([]byte, 0, len(chunk)+1)
		b.SetBytes(int64(len(chunk)))
		b.ReportAllocs()
		for b.Loop() {
			buf = protocol.AppendExecOutput(buf[:0], protocol.StreamStdout, chunk)
			if _, data, err := protocol.ParseExecOutput(buf); err != nil || len(data) != len(chunk) {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(buf))/float64(len(chunk)), "wire/byte")
	})
	b.Run("json-base64", func(b *testing.B) {
		type jsonChunk struct {
			Stream string `json:"stream"`
			Data   []byte `json:"data"`
		}
		var wire int
		b.SetBytes(int64(len(chunk)))
		b.ReportAllocs()
		for b.Loop() {
			enc, err := json.Marshal(jsonChunk{Stream: "stdout", Data: chunk})
			if err != nil {
				b.Fatal(err)
			}
			var back jsonChunk
			if err := json.Unmarshal(enc, &back); err != nil || len(back.Data) != len(chunk) {
				b.Fatal(err)
			}
			wire = len(enc)
		}
		b.ReportMetric(float64(wire)/float64(len(chunk)), "wire/byte")
	})
	b.Run("base64-only", func(b *testing.B) {
		enc := make([]byte, base64.StdEncoding.EncodedLen(len(chunk)))
		dec := make([]byte, len(chunk))
		b.SetBytes(int64(len(chunk)))
		b.ReportAllocs()
		for b.Loop() {
			base64.StdEncoding.Encode(enc, chunk)
			if _, err := base64.StdEncoding.Decode(dec, enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkControlJSON: encoding/json cost of typical control messages
// (marshal and unmarshal).
func BenchmarkControlJSON(b *testing.B) {
	msgs := []struct {
		name string
		v    any
		mk   func() any
	}{
		{"exec", &protocol.Exec{Command: "ls", Args: []string{"-l", "/tmp"}, TimeoutMillis: 30000}, func() any { return new(protocol.Exec) }},
		{"exec_result", &protocol.ExecResult{Stdout: "hello\n", Route: protocol.RouteDefault}, func() any { return new(protocol.ExecResult) }},
		{"activate", &protocol.Activate{Persona: samplePersona, Revision: 3, ActivationID: "act-1"}, func() any { return new(protocol.Activate) }},
	}
	for _, m := range msgs {
		b.Run(m.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p, err := protocol.Marshal(m.v)
				if err != nil {
					b.Fatal(err)
				}
				if err := protocol.Unmarshal(p, m.mk()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// answerExecs is a guest for the benchmarks: each exec gets what output
// writes, then a small result; pings get their pong. It reads frames
// without copying them, until the stream ends.
func answerExecs(p *peer, output func(f protocol.Frame)) {
	for {
		f, err := p.r.Next()
		if err != nil {
			return
		}
		switch f.Type {
		case protocol.TypeExec:
			output(f)
			p.w.WriteFrame(protocol.Header{Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, Epoch: p.epoch, ID: f.ID}, smallPayload)
		case protocol.TypePing:
			p.w.WriteFrame(protocol.Header{Type: protocol.TypePong, Flags: protocol.FlagResponse, Epoch: p.epoch, ID: f.ID}, nil)
		}
	}
}

// BenchmarkClientRoundTrip: one Call answered by the test peer over a unix
// socket pair (both ends in this process): JSON, framing, the client's
// multiplexing and two socket hops.
func BenchmarkClientRoundTrip(b *testing.B) {
	c, p := session(b, protocol.ClientConfig{Heartbeat: time.Hour})
	go answerExecs(p, func(protocol.Frame) {})
	p.conn.SetDeadline(time.Time{}) // the peer's handshake deadlines would expire mid-benchmark
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b.Run("exec", func(b *testing.B) { execLoop(ctx, b, c) })
	b.Run("ping", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := c.Call(ctx, protocol.TypePing, nil, nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("exec-parallel", func(b *testing.B) {
		req := protocol.Exec{Command: "true"}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				var res protocol.ExecResult
				if err := c.Call(ctx, protocol.TypeExec, req, &res, nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	c.Close(nil)
	if err := c.Err(); !errors.Is(err, protocol.ErrClosed) {
		b.Fatal(err)
	}
}

// BenchmarkCallBesideBlockedStream: Ping round trips on a session on which
// another call's output consumer is blocked with 200 chunks waiting for it.
// A session whose reader waits for that consumer answers no ping at all
// (each fails at its 1 s deadline).
func BenchmarkCallBesideBlockedStream(b *testing.B) {
	c, p := session(b, protocol.ClientConfig{Heartbeat: time.Hour})
	p.conn.SetDeadline(time.Time{})
	go answerExecs(p, func(f protocol.Frame) {
		for range 200 {
			p.w.WriteFrame(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, Epoch: p.epoch, ID: f.ID},
				protocol.AppendExecOutput(nil, protocol.StreamStdout, []byte("line\n")))
		}
	})
	release := make(chan struct{})
	defer close(release)
	first := make(chan struct{})
	var once sync.Once
	go c.Call(context.Background(), protocol.TypeExec, protocol.Exec{Command: "stream", Stream: true}, nil, func(byte, []byte) {
		once.Do(func() { close(first) })
		<-release
	})
	<-first
	time.Sleep(100 * time.Millisecond) // let the rest of the output arrive (not an assertion)
	b.ResetTimer()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Call(ctx, protocol.TypePing, nil, nil, nil)
		cancel()
		if err != nil {
			b.Fatalf("ping beside a blocked stream: %v", err)
		}
	}
}

// BenchmarkSessionRoundTrip: one Exec Call from the host's Client to the
// guest's Session, both this package's, over a unix socket pair.
func BenchmarkSessionRoundTrip(b *testing.B) {
	host, guest := socketPair(b)
	c, _ := pair(b, host, guest, protocol.SessionConfig{Handlers: execHandler(func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error) {
		return protocol.ExecResult{Route: protocol.RouteDefault}, nil
	})}, protocol.ClientConfig{Heartbeat: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	execLoop(ctx, b, c)
}

// execLoop times exec calls on c, each answered on the default route.
func execLoop(ctx context.Context, b *testing.B, c *protocol.Client) {
	req := protocol.Exec{Command: "true"}
	b.ReportAllocs()
	for b.Loop() {
		var res protocol.ExecResult
		if err := c.Call(ctx, protocol.TypeExec, req, &res, nil); err != nil || res.Route != protocol.RouteDefault {
			b.Fatal(err)
		}
	}
}
