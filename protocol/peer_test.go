package protocol_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// socketPair returns the two ends of a connected unix stream socket pair,
// closed when the test ends.
func socketPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// peer is the guest's end of a session, written with the package's own
// Reader and Writer: it lets a test play the guest frame by frame. (The real
// guest daemon is tested in guestd/ against this package's Client.)
type peer struct {
	tb    testing.TB
	conn  net.Conn
	r     *protocol.Reader
	w     *protocol.Writer
	epoch uint32
}

func newPeer(tb testing.TB, conn net.Conn) *peer {
	return &peer{tb: tb, conn: conn, r: protocol.NewReader(conn, 0), w: protocol.NewWriter(conn)}
}

// next returns the next frame from the host (cloned), failing the test on a
// read error or after 10 s.
func (p *peer) next() protocol.Frame {
	p.tb.Helper()
	f, err := p.nextErr()
	if err != nil {
		p.tb.Fatalf("peer: %v", err)
	}
	return f
}

func (p *peer) nextErr() (protocol.Frame, error) {
	p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := p.r.Next()
	return f.Clone(), err
}

// serve hands each frame from the host to handle, in a goroutine of its
// own, until the stream ends or handle answers false.
func (p *peer) serve(handle func(f protocol.Frame) bool) {
	go func() {
		for {
			f, err := p.nextErr()
			if err != nil || !handle(f) {
				return
			}
		}
	}()
}

// pong answers a ping, stamped with epoch. Not p.reply: the write may fail
// once the test closes the stream, and that is no failure.
func (p *peer) pong(f protocol.Frame, epoch uint32) {
	p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	p.w.WriteFrame(protocol.Header{Type: protocol.TypePong, Flags: protocol.FlagResponse, ID: f.ID, Epoch: epoch}, nil)
}

// nextOf skips heartbeat pings (answering them) until a frame of type t.
func (p *peer) nextOf(t protocol.Type) protocol.Frame {
	p.tb.Helper()
	for {
		f := p.next()
		if f.Type == protocol.TypePing && t != protocol.TypePing {
			p.send(protocol.Header{Type: protocol.TypePong, Flags: protocol.FlagResponse, ID: f.ID}, nil)
			continue
		}
		if f.Type != t {
			p.tb.Fatalf("peer: got %s frame, want %s", f.Type, t)
		}
		return f
	}
}

// send writes a frame stamped with the session's epoch unless h has one.
func (p *peer) send(h protocol.Header, v any) {
	p.tb.Helper()
	if h.Epoch == 0 {
		h.Epoch = p.epoch
	}
	var payload []byte
	switch v := v.(type) {
	case nil:
	case []byte:
		payload = v
	default:
		var err error
		if payload, err = protocol.Marshal(v); err != nil {
			p.tb.Fatal(err)
		}
	}
	p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := p.w.WriteFrame(h, payload); err != nil {
		p.tb.Errorf("peer: %v", err)
	}
}

// reply answers request f with a response of type t.
func (p *peer) reply(f protocol.Frame, t protocol.Type, v any) {
	p.tb.Helper()
	p.send(protocol.Header{Type: t, Flags: protocol.FlagResponse, ID: f.ID}, v)
}

// accept reads the Hello, checks it and answers with ack, starting the
// session at the Hello's epoch.
func (p *peer) accept(ack protocol.HelloAck) protocol.Hello {
	p.tb.Helper()
	f := p.nextOf(protocol.TypeHello)
	var h protocol.Hello
	if err := protocol.Unmarshal(f.Payload, &h); err != nil {
		p.tb.Fatal(err)
	}
	if f.Epoch != h.Epoch || h.Epoch == 0 {
		p.tb.Fatalf("Hello epoch %d in a frame of epoch %d", h.Epoch, f.Epoch)
	}
	p.epoch = h.Epoch
	p.reply(f, protocol.TypeHelloAck, ack)
	return h
}

// quiet drops the client's logs: the tests check behaviour, not log lines.
var quiet = slog.New(slog.DiscardHandler)

var defaultAck = protocol.HelloAck{ProtocolVersion: 1, AgentVersion: "test", Capabilities: []string{protocol.CapExecStream}, BootID: "boot", SpoolID: "spool"}

// session starts a Client against a test peer over a unix socket pair.
func session(tb testing.TB, cfg protocol.ClientConfig) (*protocol.Client, *peer) {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	host, guest := socketPair(tb)
	p := newPeer(tb, guest)
	done := make(chan struct{})
	go func() { defer close(done); p.accept(defaultAck) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := protocol.Handshake(ctx, host, cfg)
	<-done
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(nil) })
	return c, p
}
