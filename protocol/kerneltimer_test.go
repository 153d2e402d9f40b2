package protocol_test

import (
	"errors"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// TestSessionKernelTimerWatch: with KernelTimer (the guest daemon's
// setting) the guest's watch still probes a silent host once and then ends
// the session (after Pings moved its timer on), and a Hello that shortens
// the heartbeat wakes a watch armed for the old one. Real time: testing/synctest's clock does not move a
// kernel timer.
func TestSessionKernelTimerWatch(t *testing.T) {
	host, guest := socketPair(t)
	g := protocol.NewSession(guest, protocol.SessionConfig{Logger: quiet, KernelTimer: true,
		OnHello: func(protocol.Hello) protocol.HelloAck { return protocol.HelloAck{} }})
	defer g.Wait()
	defer g.Close(nil)
	p := newPeer(t, host)
	// An hour's heartbeat arms the watch for three hours of silence.
	p.send(protocol.Header{Type: protocol.TypeHello, Epoch: 9, ID: 1}, protocol.Hello{Epoch: 9, MinVersion: 1, MaxVersion: 1, HeartbeatMillis: 3_600_000})
	p.nextOf(protocol.TypeHelloAck)
	p.send(protocol.Header{Type: protocol.TypeHello, Epoch: 10, ID: 2}, protocol.Hello{Epoch: 10, MinVersion: 1, MaxVersion: 1, HeartbeatMillis: 20})
	p.nextOf(protocol.TypeHelloAck)
	// Pings are answered by the read loop, and each moves the watch's
	// timer on; then the host falls silent.
	for id := uint64(3); id < 8; id++ {
		p.send(protocol.Header{Type: protocol.TypePing, Epoch: 10, ID: id}, nil)
		if f := p.nextOf(protocol.TypePong); f.ID != id {
			t.Fatalf("pong %d for ping %d", f.ID, id)
		}
	}
	probes := make(chan int, 1)
	go func() {
		n := 0
		for {
			f, err := p.nextErr()
			if err != nil {
				probes <- n
				return
			}
			if f.Type == protocol.TypePing {
				n++
			}
		}
	}()
	select {
	case <-g.Done():
	case <-time.After(time.Minute):
		t.Fatal("the guest still counts a host silent for a minute as alive (20 ms heartbeat)")
	}
	if !errors.Is(g.Err(), protocol.ErrHeartbeat) {
		t.Errorf("Err() = %v, want ErrHeartbeat", g.Err())
	}
	if n := <-probes; n != 1 {
		t.Errorf("the guest sent %d pings to its silent host, want one probe", n)
	}
}
