package protocol_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	host, guest := socketPair(t)
	p := newPeer(t, guest)
	ack := defaultAck
	ack.Active = &protocol.ActiveState{Persona: protocol.Persona{Name: "p"}, Revision: 2, ActivationID: "a"}
	ack.PendingAudit = 3
	helloc := make(chan protocol.Hello, 1)
	go func() { helloc <- p.accept(ack) }()
	c, err := protocol.Handshake(testCtx(t), host, protocol.ClientConfig{Epoch: 4242, HostVersion: "host-1", Heartbeat: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(nil)
	hello := <-helloc
	want := protocol.Hello{Epoch: 4242, MinVersion: protocol.MinVersion, MaxVersion: protocol.Version, HostVersion: "host-1", HeartbeatMillis: 1500}
	if hello != want {
		t.Errorf("Hello %+v, want %+v", hello, want)
	}
	if c.Epoch() != 4242 {
		t.Errorf("Epoch() = %d", c.Epoch())
	}
	got := c.Hello()
	if got.AgentVersion != "test" || got.SpoolID != "spool" || got.PendingAudit != 3 || got.Active == nil || got.Active.Persona.Name != "p" {
		t.Errorf("Hello() = %+v", got)
	}
	if c.Err() != nil {
		t.Errorf("Err() = %v on a running session", c.Err())
	}
}

func TestHandshakePicksEpoch(t *testing.T) {
	c1, _ := session(t, protocol.ClientConfig{})
	c2, _ := session(t, protocol.ClientConfig{})
	if c1.Epoch() == 0 || c2.Epoch() == 0 || c1.Epoch() == c2.Epoch() {
		t.Errorf("epochs %d and %d: want two different non-zero ones", c1.Epoch(), c2.Epoch())
	}
}

func TestHandshakeRefused(t *testing.T) {
	tests := []struct {
		name   string
		answer func(p *peer, f protocol.Frame)
		check  func(t *testing.T, err error)
	}{
		{"unsupported version error", func(p *peer, f protocol.Frame) {
			p.reply(f, protocol.TypeError, protocol.Error{Code: protocol.CodeUnsupportedVersion, Message: "guest speaks 7..9"})
		}, func(t *testing.T, err error) {
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != protocol.CodeUnsupportedVersion {
				t.Errorf("got %v, want an unsupported_version *Error", err)
			}
		}},
		{"version outside the host's range", func(p *peer, f protocol.Frame) {
			ack := defaultAck
			ack.ProtocolVersion = protocol.Version + 1
			p.reply(f, protocol.TypeHelloAck, ack)
		}, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "protocol version") {
				t.Errorf("got %v", err)
			}
		}},
		{"bad payload", func(p *peer, f protocol.Frame) {
			p.reply(f, protocol.TypeHelloAck, []byte("{not json"))
		}, func(t *testing.T, err error) {
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != protocol.CodeBadRequest {
				t.Errorf("got %v, want a bad_request *Error", err)
			}
		}},
		{"peer closes", func(p *peer, f protocol.Frame) { p.conn.Close() }, func(t *testing.T, err error) {
			if !errors.Is(err, protocol.ErrClosed) {
				t.Errorf("got %v, want ErrClosed", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			host, guest := socketPair(t)
			p := newPeer(t, guest)
			go func() {
				f, err := p.nextErr()
				if err == nil {
					var h protocol.Hello
					protocol.Unmarshal(f.Payload, &h)
					p.epoch = h.Epoch
					tc.answer(p, f)
				}
			}()
			c, err := protocol.Handshake(testCtx(t), host, protocol.ClientConfig{Epoch: 1})
			if c != nil {
				t.Fatal("a client from a failed handshake")
			}
			tc.check(t, err)
			// The host closed its end: the peer sees the end of the stream.
			guest.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, guest); err != nil && !errors.Is(err, net.ErrClosed) {
				t.Errorf("the host's end is still open: %v", err)
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	host, guest := socketPair(t)
	go io.Copy(io.Discard, guest) // a guest that never answers
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := protocol.Handshake(ctx, host, protocol.ClientConfig{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
}

// TestHandshakeAfterStaleBytes: leftovers of an older session (garbage, a
// torn frame, a complete answer of another epoch) precede the HelloAck.
func TestHandshakeAfterStaleBytes(t *testing.T) {
	host, guest := socketPair(t)
	p := newPeer(t, guest)
	go func() {
		f := p.nextOf(protocol.TypeHello)
		var h protocol.Hello
		protocol.Unmarshal(f.Payload, &h)
		old := frame(protocol.Header{Type: protocol.TypeHelloAck, Flags: protocol.FlagResponse, Epoch: h.Epoch + 1, ID: f.ID}, `{"protocol_version":1,"agent_version":"stale"}`)
		torn := frame(protocol.Header{Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, Epoch: h.Epoch + 1, ID: 5}, strings.Repeat(" ", 3000))
		guest.Write(cat([]byte("garbage\x00VMPF"), old, torn[:100]))
		p.epoch = h.Epoch
		p.reply(f, protocol.TypeHelloAck, defaultAck)
	}()
	c, err := protocol.Handshake(testCtx(t), host, protocol.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(nil)
	if c.Hello().AgentVersion != "test" {
		t.Errorf("accepted %+v", c.Hello())
	}
	if c.Dropped() != 1 {
		t.Errorf("Dropped() = %d, want 1 (the other epoch's HelloAck)", c.Dropped())
	}
}

// TestOutOfOrderAnswers: answers are matched to calls by id, in whatever
// order they come.
func TestOutOfOrderAnswers(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	const n = 5
	errs := make(chan error, n)
	results := make([]protocol.ExecResult, n)
	for i := range n {
		go func() {
			errs <- c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: string(rune('a' + i))}, &results[i], nil)
		}()
	}
	reqs := make([]protocol.Frame, n)
	for i := range reqs {
		reqs[i] = p.nextOf(protocol.TypeExec)
	}
	for i := n - 1; i >= 0; i-- { // answer last first
		var e protocol.Exec
		protocol.Unmarshal(reqs[i].Payload, &e)
		p.reply(reqs[i], protocol.TypeExecResult, protocol.ExecResult{Stdout: "out of " + e.Command})
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range results {
		if want := "out of " + string(rune('a'+i)); r.Stdout != want {
			t.Errorf("call %d got %q, want %q", i, r.Stdout, want)
		}
	}
	if c.Dropped() != 0 {
		t.Errorf("Dropped() = %d", c.Dropped())
	}
}

// TestOtherEpochDropped: an answer carrying another session's epoch is
// dropped even when its id matches a call in flight.
func TestOtherEpochDropped(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	errc := make(chan error, 1)
	var res protocol.ExecResult
	go func() { errc <- c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "id"}, &res, nil) }()
	f := p.nextOf(protocol.TypeExec)
	p.send(protocol.Header{Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, ID: f.ID, Epoch: p.epoch ^ 0x100}, protocol.ExecResult{Stdout: "stale"})
	p.reply(f, protocol.TypeExecResult, protocol.ExecResult{Stdout: "fresh"})
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	wantAnswerAfterDrop(t, c, res, "fresh")
}

// TestLateAnswerDropped: an answer that comes after its call gave up is
// dropped, and the session goes on.
func TestLateAnswerDropped(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: "sleep"}, nil, nil) }()
	late := p.nextOf(protocol.TypeExec)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	p.reply(late, protocol.TypeExecResult, protocol.ExecResult{Stdout: "late"})
	// The client reads in order: once the next call's answer arrived, the
	// late one has been handled.
	go func() {
		f := p.nextOf(protocol.TypeExec)
		p.reply(f, protocol.TypeExecResult, protocol.ExecResult{Stdout: "next"})
	}()
	var res protocol.ExecResult
	if err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "true"}, &res, nil); err != nil {
		t.Fatal(err)
	}
	wantAnswerAfterDrop(t, c, res, "next")
}

// wantAnswerAfterDrop: the call got the answer meant for it (stdout want),
// and exactly one other answer was dropped.
func wantAnswerAfterDrop(t *testing.T, c *protocol.Client, res protocol.ExecResult, want string) {
	t.Helper()
	if res.Stdout != want {
		t.Errorf("got %q, want %q", res.Stdout, want)
	}
	if c.Dropped() != 1 {
		t.Errorf("Dropped() = %d, want 1", c.Dropped())
	}
}

func TestCallWithDoneContext(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: "never"}, nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	go c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "second"}, nil, nil)
	var e protocol.Exec
	protocol.Unmarshal(p.nextOf(protocol.TypeExec).Payload, &e)
	if e.Command != "second" {
		t.Errorf("the guest received %q: a call with a done context was sent", e.Command)
	}
}

func TestErrorAnswer(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	go func() {
		f := p.nextOf(protocol.TypeExec)
		p.reply(f, protocol.TypeError, protocol.Error{Code: protocol.CodeDenied, Message: protocol.DeniedMessage, Command: "rm", Persona: "hardened"})
	}()
	var res protocol.ExecResult
	err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "rm"}, &res, nil)
	var pe *protocol.Error
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a *protocol.Error", err)
	}
	want := protocol.Error{Code: protocol.CodeDenied, Message: protocol.DeniedMessage, Command: "rm", Persona: "hardened"}
	if *pe != want {
		t.Errorf("got %+v, want %+v", *pe, want)
	}
}

// TestStreamedExec: ExecOutput chunks reach onOutput in order, then the
// final ExecResult ends the call.
func TestStreamedExec(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	chunks := []struct {
		stream byte
		data   string
	}{{protocol.StreamStdout, "line 1\n"}, {protocol.StreamStderr, "warn\x00\xff"}, {protocol.StreamStdout, "line 2\n"}}
	go func() {
		f := p.nextOf(protocol.TypeExec)
		for _, ch := range chunks {
			p.send(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, ID: f.ID},
				protocol.AppendExecOutput(nil, ch.stream, []byte(ch.data)))
		}
		// A malformed chunk is skipped, not delivered.
		p.send(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, ID: f.ID}, []byte{9, 'x'})
		p.reply(f, protocol.TypeExecResult, protocol.ExecResult{ExitCode: 3, Route: protocol.RouteDefault})
	}()
	var got []string
	var res protocol.ExecResult
	err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "x", Stream: true}, &res, func(stream byte, data []byte) {
		got = append(got, string(rune('0'+stream))+string(data))
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"1line 1\n", "2warn\x00\xff", "1line 2\n"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("chunks %q, want %q", got, want)
	}
	if res.ExitCode != 3 {
		t.Errorf("result %+v", res)
	}
}

func TestCallPing(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	go func() {
		f := p.nextOf(protocol.TypePing)
		if len(f.Payload) != 0 {
			t.Errorf("ping payload %q, want empty", f.Payload)
		}
		p.reply(f, protocol.TypePong, nil)
	}()
	if err := c.Call(testCtx(t), protocol.TypePing, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestRefusedAnswers: an answer the client's reader refuses (too large,
// unknown version) fails its call at once with the matching code.
func TestRefusedAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint8
		size    int
		code    string
	}{
		{"too large", 0, 4096, protocol.CodeTooLarge},
		{"unsupported version", protocol.Version + 1, 10, protocol.CodeUnsupportedVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, p := session(t, protocol.ClientConfig{MaxPayload: 1024})
			go func() {
				f := p.nextOf(protocol.TypeExec)
				p.send(protocol.Header{Version: tc.version, Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, ID: f.ID},
					[]byte(`"`+strings.Repeat("x", tc.size)+`"`))
			}()
			err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "x"}, nil, nil)
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != tc.code {
				t.Fatalf("got %v, want a %s *Error", err, tc.code)
			}
			if c.Err() != nil {
				t.Errorf("the session ended: %v", c.Err())
			}
		})
	}
}

// TestRefusedRequests: a request the client cannot take is answered with an
// Error carrying its id.
func TestRefusedRequests(t *testing.T) {
	tests := []struct {
		name    string
		h       protocol.Header
		payload []byte
		code    string
	}{
		{"unknown type", protocol.Header{Type: 0x55, ID: 10}, []byte(`{}`), protocol.CodeUnsupportedType},
		{"host-bound request type", protocol.Header{Type: protocol.TypeActivate, ID: 11}, []byte(`{}`), protocol.CodeUnsupportedType},
		{"too large", protocol.Header{Type: protocol.TypeAuditBatch, ID: 12}, make([]byte, 2000), protocol.CodeTooLarge},
		{"unsupported version", protocol.Header{Version: 9, Type: protocol.TypeAuditBatch, ID: 13}, []byte(`{}`), protocol.CodeUnsupportedVersion},
		{"bad audit batch", protocol.Header{Type: protocol.TypeAuditBatch, ID: 14}, []byte(`{"events":7}`), protocol.CodeBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, p := session(t, protocol.ClientConfig{MaxPayload: 1024, OnAudit: func(protocol.AuditBatch) (uint64, error) { return 0, nil }})
			p.send(tc.h, tc.payload)
			f := p.nextOf(protocol.TypeError)
			var e protocol.Error
			if err := protocol.Unmarshal(f.Payload, &e); err != nil {
				t.Fatal(err)
			}
			if f.ID != tc.h.ID || f.Flags != protocol.FlagResponse || f.Epoch != p.epoch || e.Code != tc.code {
				t.Errorf("answer %+v %+v, want a %s error for id %d", f.Header, e, tc.code, tc.h.ID)
			}
		})
	}
}

// TestPeerPing: the guest's pings are answered with a Pong of the same id.
func TestPeerPing(t *testing.T) {
	_, p := session(t, protocol.ClientConfig{})
	p.send(protocol.Header{Type: protocol.TypePing, ID: 1 << 60}, nil)
	f := p.nextOf(protocol.TypePong)
	if f.ID != 1<<60 || f.Flags != protocol.FlagResponse || f.Epoch != p.epoch || len(f.Payload) != 0 {
		t.Errorf("pong %+v %q", f.Header, f.Payload)
	}
}

// TestAudit: batches go to OnAudit one at a time, in order; what it returns
// is acknowledged; its error is answered with Error internal (no ack, so
// the guest resends).
func TestAudit(t *testing.T) {
	var mu sync.Mutex
	var got []protocol.AuditBatch
	fail := errors.New("disk full")
	c, p := session(t, protocol.ClientConfig{OnAudit: func(b protocol.AuditBatch) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, b)
		if b.SpoolID == "broken" {
			return 0, fail
		}
		return b.Events[len(b.Events)-1].Seq, nil
	}})
	batches := []protocol.AuditBatch{
		{SpoolID: "s", Events: []protocol.AuditEvent{{Seq: 1, Time: when, Type: protocol.AuditActivation}, {Seq: 2, Time: when, Type: protocol.AuditExec}}},
		{SpoolID: "s", Events: []protocol.AuditEvent{{Seq: 3, Time: when, Type: protocol.AuditDenial, Command: "rm"}}},
	}
	for i, b := range batches {
		p.send(protocol.Header{Type: protocol.TypeAuditBatch, ID: uint64(100 + i)}, b)
	}
	for i, want := range []uint64{2, 3} {
		f := p.nextOf(protocol.TypeAuditAck)
		var ack protocol.AuditAck
		if err := protocol.Unmarshal(f.Payload, &ack); err != nil {
			t.Fatal(err)
		}
		if f.ID != uint64(100+i) || f.Flags != protocol.FlagResponse || f.Epoch != c.Epoch() || ack.UpToSeq != want {
			t.Errorf("ack %d: %+v up_to_seq %d, want id %d up_to_seq %d", i, f.Header, ack.UpToSeq, 100+i, want)
		}
	}
	p.send(protocol.Header{Type: protocol.TypeAuditBatch, ID: 200}, protocol.AuditBatch{SpoolID: "broken", Events: batches[1].Events})
	f := p.nextOf(protocol.TypeError)
	var e protocol.Error
	protocol.Unmarshal(f.Payload, &e)
	if f.ID != 200 || e.Code != protocol.CodeInternal || !strings.Contains(e.Message, "disk full") {
		t.Errorf("failed ingestion answered %+v %+v", f.Header, e)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[0].Events[1].Seq != 2 || got[1].Events[0].Command != "rm" || !got[0].Events[0].Time.Equal(when) {
		t.Errorf("OnAudit saw %+v", got)
	}
}

func TestAuditNotConfigured(t *testing.T) {
	_, p := session(t, protocol.ClientConfig{})
	p.send(protocol.Header{Type: protocol.TypeAuditBatch, ID: 5}, protocol.AuditBatch{SpoolID: "s"})
	f := p.nextOf(protocol.TypeError)
	var e protocol.Error
	protocol.Unmarshal(f.Payload, &e)
	if f.ID != 5 || e.Code != protocol.CodeUnsupportedType {
		t.Errorf("got %+v %+v", f.Header, e)
	}
}

// TestCloseUnblocksCalls: Close ends calls in flight and later ones with
// ErrClosed and closes the stream.
func TestCloseUnblocksCalls(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	const n = 3
	errs := make(chan error, n)
	for range n {
		go func() {
			errs <- c.Call(context.Background(), protocol.TypeExec, protocol.Exec{Command: "hang"}, nil, nil)
		}()
	}
	for range n {
		p.nextOf(protocol.TypeExec)
	}
	c.Close(nil)
	for range n {
		if err := <-errs; !errors.Is(err, protocol.ErrClosed) {
			t.Errorf("call in flight: %v, want ErrClosed", err)
		}
	}
	if err := c.Call(context.Background(), protocol.TypeExec, protocol.Exec{}, nil, nil); !errors.Is(err, protocol.ErrClosed) {
		t.Errorf("call after Close: %v", err)
	}
	if !errors.Is(c.Err(), protocol.ErrClosed) {
		t.Errorf("Err() = %v", c.Err())
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done not closed")
	}
	if _, err := p.nextErr(); err != io.EOF {
		t.Errorf("peer read %v, want io.EOF", err)
	}
	c.Close(errors.New("again")) // idempotent
	if !errors.Is(c.Err(), protocol.ErrClosed) {
		t.Errorf("second Close changed the cause: %v", c.Err())
	}
}

func TestPeerHangsUp(t *testing.T) {
	c, p := session(t, protocol.ClientConfig{})
	errc := make(chan error, 1)
	go func() { errc <- c.Call(context.Background(), protocol.TypeExec, protocol.Exec{Command: "x"}, nil, nil) }()
	p.nextOf(protocol.TypeExec)
	p.conn.Close()
	if err := <-errc; !errors.Is(err, protocol.ErrClosed) {
		t.Errorf("got %v", err)
	}
	<-c.Done()
	if !errors.Is(c.Err(), io.EOF) {
		t.Errorf("Err() = %v, want it to wrap io.EOF", c.Err())
	}
}

// syncSession is session for a synctest bubble: net.Pipe, whose blocking
// the bubble understands.
func syncSession(t *testing.T, cfg protocol.ClientConfig) (*protocol.Client, *peer) {
	cfg.Logger = quiet
	host, guest := net.Pipe()
	p := newPeer(t, guest)
	go p.accept(defaultAck)
	c, err := protocol.Handshake(context.Background(), host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, p
}

// TestHeartbeatLoss: a guest that reads but never answers is probed after
// three silent intervals and given up three intervals later; meanwhile the
// host pings once an interval (the probe is one of the pings).
func TestHeartbeatLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const hb = time.Second
		start := time.Now()
		c, p := syncSession(t, protocol.ClientConfig{Heartbeat: hb})
		pings := 0
		p.serve(func(f protocol.Frame) bool {
			if f.Type == protocol.TypePing {
				pings++
			}
			return true
		})
		<-c.Done()
		elapsed := time.Since(start)
		if !errors.Is(c.Err(), protocol.ErrHeartbeat) {
			t.Errorf("Err() = %v, want ErrHeartbeat", c.Err())
		}
		want := (protocol.SilenceIntervals + protocol.ProbeIntervals) * hb
		if elapsed < want || elapsed >= want+hb {
			t.Errorf("session ended after %v of silence, want [%v, %v)", elapsed, want, want+hb)
		}
		if sent, answered := c.Probes(); sent != 1 || answered != 0 {
			t.Errorf("Probes() = %d sent, %d answered; want 1, 0", sent, answered)
		}
		if err := c.Call(context.Background(), protocol.TypePing, nil, nil, nil); !errors.Is(err, protocol.ErrClosed) {
			t.Errorf("call after heartbeat loss: %v", err)
		}
		p.conn.Close()
		synctest.Wait()
		if want := protocol.SilenceIntervals + protocol.ProbeIntervals - 1; pings != want {
			t.Errorf("%d pings sent, want %d", pings, want)
		}
	})
}

// TestHeartbeatKept: a guest that answers pings keeps the session for as
// long as it likes; any frame of the session counts as a sign of life.
func TestHeartbeatKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, p := syncSession(t, protocol.ClientConfig{Heartbeat: time.Second})
		p.serve(func(f protocol.Frame) bool {
			if f.Type == protocol.TypePing {
				p.pong(f, p.epoch)
			}
			return true
		})
		time.Sleep(time.Minute)
		if c.Err() != nil {
			t.Fatalf("session ended: %v", c.Err())
		}
		c.Close(nil)
		p.conn.Close()
	})
}

// TestHeartbeatSlowPeer: a guest that answers nothing for longer than the
// allowed silence but answers the probe is slow, not gone: the session
// stays.
func TestHeartbeatSlowPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const hb = time.Second
		c, p := syncSession(t, protocol.ClientConfig{Heartbeat: hb})
		start := time.Now()
		p.serve(func(f protocol.Frame) bool {
			// Silent until well past the allowed silence, then
			// answering again, late (as a starved guest does).
			if f.Type == protocol.TypePing && time.Since(start) > protocol.SilenceIntervals*hb+hb/2 {
				time.Sleep(hb)
				p.pong(f, p.epoch)
			}
			return true
		})
		time.Sleep(time.Minute)
		if c.Err() != nil {
			t.Fatalf("a slow guest's session ended: %v", c.Err())
		}
		if sent, answered := c.Probes(); sent != 1 || answered != 1 {
			t.Errorf("Probes() = %d sent, %d answered; want 1, 1", sent, answered)
		}
		c.Close(nil)
		p.conn.Close()
		// The peer may be in its late answer's sleep: let it wake and
		// see the stream closed before the bubble ends.
		time.Sleep(2 * hb)
	})
}

// TestHeartbeatBytesCount: the bytes of a frame still arriving are signs of
// life, however long the frame takes (a large answer on a slow stream).
func TestHeartbeatBytesCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const hb = time.Second
		c, p := syncSession(t, protocol.ClientConfig{Heartbeat: hb})
		p.serve(func(protocol.Frame) bool { return true })
		// One answer of 40 bytes (to no call), a byte every 700 ms: 28 s
		// for one frame, no Pong meanwhile.
		frame := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, Epoch: p.epoch, ID: 999},
			protocol.AppendExecOutput(nil, protocol.StreamStdout, make([]byte, 39)))
		p.conn.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := p.conn.Write(frame[:32]); err != nil {
			t.Fatal(err)
		}
		for i := 32; i < len(frame); i++ {
			time.Sleep(700 * time.Millisecond)
			p.conn.SetWriteDeadline(time.Now().Add(time.Minute))
			if _, err := p.conn.Write(frame[i : i+1]); err != nil {
				t.Fatalf("byte %d: %v (session: %v)", i, err, c.Err())
			}
		}
		synctest.Wait() // the read loop has taken the last byte's frame
		if c.Err() != nil {
			t.Fatalf("session ended while a frame was arriving: %v", c.Err())
		}
		if c.Dropped() != 1 {
			t.Errorf("Dropped() = %d, want the one answer to no call", c.Dropped())
		}
		c.Close(nil)
		p.conn.Close()
	})
}

// TestHeartbeatIgnoresOtherEpochs: frames of another session do not keep
// this one alive.
func TestHeartbeatIgnoresOtherEpochs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, p := syncSession(t, protocol.ClientConfig{Heartbeat: time.Second})
		p.serve(func(f protocol.Frame) bool {
			if f.Type == protocol.TypePing {
				p.pong(f, p.epoch+1)
			}
			return true
		})
		<-c.Done()
		if !errors.Is(c.Err(), protocol.ErrHeartbeat) {
			t.Errorf("Err() = %v, want ErrHeartbeat", c.Err())
		}
		if c.Dropped() == 0 {
			t.Error("the other epoch's pongs were not counted as dropped")
		}
		p.conn.Close()
	})
}
