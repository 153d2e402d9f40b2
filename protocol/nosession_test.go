package protocol_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// TestNoSessionEndsSession: a guest that answers no_session (its daemon
// restarted behind an open stream) ends the host's session at once, so the
// host handshakes again instead of failing every call.
func TestNoSessionEndsSession(t *testing.T) {
	hostSide, guestSide := net.Pipe()
	defer guestSide.Close()
	go func() {
		r := protocol.NewReader(guestSide, 0)
		w := protocol.NewWriter(guestSide)
		f, err := r.Next()
		if err != nil {
			return
		}
		var h protocol.Hello
		protocol.Unmarshal(f.Payload, &h)
		ack, _ := protocol.Marshal(protocol.HelloAck{ProtocolVersion: protocol.Version})
		w.WriteFrame(protocol.Header{Type: protocol.TypeHelloAck, Flags: protocol.FlagResponse, Epoch: h.Epoch, ID: f.ID}, ack)
		for {
			f, err := r.Next()
			if err != nil {
				return
			}
			e, _ := protocol.Marshal(protocol.Error{Code: protocol.CodeNoSession, Message: "no session"})
			w.WriteFrame(protocol.Header{Type: protocol.TypeError, Flags: protocol.FlagResponse, Epoch: f.Epoch, ID: f.ID}, e)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := protocol.Handshake(ctx, hostSide, protocol.ClientConfig{Heartbeat: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: "true"}, nil, nil)
	if !errors.Is(err, protocol.ErrClosed) {
		t.Fatalf("call answered no_session: %v, want protocol.ErrClosed", err)
	}
	<-c.Done()
	if !errors.Is(c.Err(), protocol.ErrNoSession) {
		t.Fatalf("session ended with %v, want protocol.ErrNoSession", c.Err())
	}
}
