package protocol_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// pair starts a guest Session on one end of conns and a host Client on the
// other, handshake done: both ends are this package's Session.
func pair(tb testing.TB, host, guest net.Conn, gcfg protocol.SessionConfig, hcfg protocol.ClientConfig) (*protocol.Client, *protocol.Session) {
	tb.Helper()
	if gcfg.Logger == nil {
		gcfg.Logger = quiet
	}
	if hcfg.Logger == nil {
		hcfg.Logger = quiet
	}
	if gcfg.OnHello == nil {
		gcfg.OnHello = func(protocol.Hello) protocol.HelloAck { return protocol.HelloAck{AgentVersion: "test"} }
	}
	g := protocol.NewSession(guest, gcfg)
	tb.Cleanup(func() { g.Close(nil); g.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := protocol.Handshake(ctx, host, hcfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(nil); c.Wait() })
	return c, g
}

// execHandler serves Exec by running fn.
func execHandler(fn func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error)) map[protocol.Type]protocol.Handler {
	return map[protocol.Type]protocol.Handler{protocol.TypeExec: {Answer: protocol.TypeExecResult, Serve: func(ctx context.Context, r *protocol.Request) (any, error) {
		var req protocol.Exec
		if err := r.Decode(&req); err != nil {
			return nil, err
		}
		return fn(ctx, r, req)
	}}}
}

// TestSessionOutOfOrderAnswers: two calls in flight on the same session are
// answered in the reverse order; each caller gets its own answer.
func TestSessionOutOfOrderAnswers(t *testing.T) {
	release := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{})}
	started := make(chan string, 2)
	host, guest := socketPair(t)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: execHandler(func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error) {
		started <- req.Command
		<-release[req.Command]
		return protocol.ExecResult{Stdout: "answer to " + req.Command}, nil
	})}, protocol.ClientConfig{})

	results := map[string]chan string{"a": make(chan string, 1), "b": make(chan string, 1)}
	for _, name := range []string{"a", "b"} {
		go func() {
			var res protocol.ExecResult
			err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: name}, &res, nil)
			if err != nil {
				results[name] <- err.Error()
				return
			}
			results[name] <- res.Stdout
		}()
	}
	<-started
	<-started
	close(release["b"])
	if got := <-results["b"]; got != "answer to b" {
		t.Errorf("b got %q", got)
	}
	close(release["a"])
	if got := <-results["a"]; got != "answer to a" {
		t.Errorf("a got %q", got)
	}
}

// TestSessionCallCancelledInWrite: a peer that stopped reading blocks the
// writer. A call queued behind the stuck frame and the call whose frame is
// stuck both return as soon as their contexts end; neither leaves part of a
// frame behind: once the peer reads again it finds only whole frames, and
// the session goes on.
func TestSessionCallCancelledInWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		host, guest := net.Pipe()
		s := protocol.NewSession(host, protocol.SessionConfig{Epoch: 7, WriteTimeout: time.Hour, Logger: quiet})
		defer s.Close(nil)
		p := newPeer(t, guest)
		p.epoch = 7

		big := protocol.Exec{Command: "stuck", Args: []string{string(bytes.Repeat([]byte("x"), 4096))}}
		ctxA, cancelA := context.WithCancel(context.Background())
		ctxB, cancelB := context.WithCancel(context.Background())
		errA, errB := make(chan error, 1), make(chan error, 1)
		go func() { errA <- s.Call(ctxA, protocol.TypeExec, big, nil, nil) }()
		synctest.Wait() // A's frame is in the writer, blocked on the pipe
		go func() { errB <- s.Call(ctxB, protocol.TypeExec, protocol.Exec{Command: "queued"}, nil, nil) }()
		synctest.Wait() // B waits for the writer

		// Each returns as soon as its context ends.
		for _, c := range []struct {
			cancel context.CancelFunc
			err    chan error
			what   string
		}{{cancelB, errB, "a call waiting to write"}, {cancelA, errA, "a call whose frame is being written"}} {
			c.cancel()
			synctest.Wait()
			select {
			case err := <-c.err:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s: %v, want context.Canceled", c.what, err)
				}
			default:
				t.Fatalf("%s did not return when its context ended", c.what)
			}
		}

		// The peer reads again: A's frame arrives whole, B's never does.
		f := p.next()
		var req protocol.Exec
		if err := protocol.Unmarshal(f.Payload, &req); err != nil || req.Command != "stuck" {
			t.Fatalf("first frame: %s %q %v", f.Type, req.Command, err)
		}
		go func() {
			f := p.next()
			if err := protocol.Unmarshal(f.Payload, &req); err != nil || req.Command != "after" {
				t.Errorf("second frame: %s %q %v, want the next call's", f.Type, req.Command, err)
			}
			p.reply(f, protocol.TypeExecResult, protocol.ExecResult{Stdout: "ok"})
		}()
		var res protocol.ExecResult
		if err := s.Call(context.Background(), protocol.TypeExec, protocol.Exec{Command: "after"}, &res, nil); err != nil || res.Stdout != "ok" {
			t.Fatalf("call after the cancelled ones: %+v %v", res, err)
		}
		if p.r.Skipped() != 0 || s.Err() != nil {
			t.Errorf("stream out of step: peer skipped %d bytes, session %v", p.r.Skipped(), s.Err())
		}
		s.Close(nil)
		guest.Close()
	})
}

// slowStream serves an Exec that streams n numbered chunks and then waits
// for done before answering. streamed is closed when every chunk was
// written.
func slowStream(n int, streamed, done chan struct{}) map[protocol.Type]protocol.Handler {
	return execHandler(func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error) {
		if req.Command != "stream" {
			return protocol.ExecResult{Stdout: req.Command}, nil
		}
		for i := range n {
			if err := r.Output(protocol.StreamStdout, fmt.Appendf(nil, "%d\n", i)); err != nil {
				return nil, err
			}
		}
		close(streamed)
		<-done
		return protocol.ExecResult{ExitCode: 0}, nil
	})
}

// TestSessionSlowConsumer: a call whose output consumer is blocked does not
// stall the session. Over net.Pipe (no buffering in the stream) the guest
// can write every chunk only if the host's reader takes them without waiting
// for the consumer; meanwhile another call completes; once the consumer
// resumes it gets every chunk, in order. With one buffer shared by the
// session's calls (or a reader that waits for the consumer), the stream
// stalls and the calls below fail at their deadlines.
func TestSessionSlowConsumer(t *testing.T) {
	const chunks = 1000
	streamed, done := make(chan struct{}), make(chan struct{})
	host, guest := net.Pipe()
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: slowStream(chunks, streamed, done)}, protocol.ClientConfig{})

	release := make(chan struct{})
	// On failure, unblock the consumer and the handler before the cleanup
	// closes the session.
	unblock := sync.OnceFunc(func() { close(release); close(done) })
	defer unblock()
	var got bytes.Buffer
	streamErr := make(chan error, 1)
	go func() {
		streamErr <- c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "stream", Stream: true}, nil, func(stream byte, data []byte) {
			<-release
			got.Write(data)
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-streamed:
	case <-ctx.Done():
		t.Fatal("the guest could not write its output while the host's consumer was blocked: the session's reader stalled")
	}
	var res protocol.ExecResult
	if err := c.Call(ctx, protocol.TypeExec, protocol.Exec{Command: "beside"}, &res, nil); err != nil || res.Stdout != "beside" {
		t.Fatalf("a call beside a blocked stream: %+v %v", res, err)
	}
	unblock()
	if err := <-streamErr; err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for i := range chunks {
		fmt.Fprintf(&want, "%d\n", i)
	}
	if got.String() != want.String() {
		t.Errorf("output out of order or incomplete: %d bytes, want %d", got.Len(), want.Len())
	}
}

// TestSessionOutputOverflow: when a blocked consumer's buffer fills, that
// call fails with ErrOutputOverflow; the session and its other calls go on.
func TestSessionOutputOverflow(t *testing.T) {
	streamed, done := make(chan struct{}), make(chan struct{})
	host, guest := socketPair(t)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: slowStream(1000, streamed, done)}, protocol.ClientConfig{OutputBuffer: 1024})
	defer close(done)

	release := make(chan struct{})
	streamErr := make(chan error, 1)
	delivered := 0
	go func() {
		streamErr <- c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "stream", Stream: true}, nil, func(byte, []byte) {
			<-release
			delivered++
		})
	}()
	<-streamed
	// The overflow is noticed by the session before this call's answer.
	var res protocol.ExecResult
	if err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "beside"}, &res, nil); err != nil || res.Stdout != "beside" {
		t.Fatalf("a call beside an overflowing stream: %+v %v", res, err)
	}
	close(release)
	if err := <-streamErr; !errors.Is(err, protocol.ErrOutputOverflow) {
		t.Fatalf("overflowing call: %v, want ErrOutputOverflow", err)
	}
	if delivered > 1024 {
		t.Errorf("%d chunks delivered past a 1 KiB buffer", delivered)
	}
	if err := c.Call(testCtx(t), protocol.TypePing, nil, nil, nil); err != nil || c.Err() != nil {
		t.Errorf("session after an overflow: %v %v", err, c.Err())
	}
}

// TestSessionGuestHeartbeatLoss: the guest's end probes the host after three
// silent intervals of the heartbeat the host's Hello announced, and ends the
// session when the probe too goes unanswered; before that it sends nothing
// (no periodic pings of its own).
func TestSessionGuestHeartbeatLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		host, guest := net.Pipe()
		g := protocol.NewSession(guest, protocol.SessionConfig{Logger: quiet, OnHello: func(protocol.Hello) protocol.HelloAck { return protocol.HelloAck{} }})
		p := newPeer(t, host)
		var pings []time.Duration
		var start time.Time
		p.serve(func(f protocol.Frame) bool {
			if f.Type == protocol.TypePing {
				pings = append(pings, time.Since(start))
			}
			return true
		})
		start = time.Now()
		p.send(protocol.Header{Type: protocol.TypeHello, Epoch: 9, ID: 1}, protocol.Hello{Epoch: 9, MinVersion: 1, MaxVersion: 1, HeartbeatMillis: 1000})
		<-g.Done()
		if !errors.Is(g.Err(), protocol.ErrHeartbeat) {
			t.Errorf("Err() = %v, want ErrHeartbeat", g.Err())
		}
		want := (protocol.SilenceIntervals + protocol.ProbeIntervals) * time.Second
		if d := time.Since(start); d < want || d >= want+time.Second {
			t.Errorf("guest gave up after %v, want [%v, %v)", d, want, want+time.Second)
		}
		synctest.Wait()
		if len(pings) != 1 || pings[0] != protocol.SilenceIntervals*time.Second {
			t.Errorf("guest pinged at %v, want one probe at %v", pings, protocol.SilenceIntervals*time.Second)
		}
		host.Close()
		g.Wait()
	})
}

// TestSessionGuestHeartbeatKept: pings keep the guest's session alive.
func TestSessionGuestHeartbeatKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		host, guest := net.Pipe()
		c, g := pair(t, host, guest, protocol.SessionConfig{}, protocol.ClientConfig{Heartbeat: time.Second})
		time.Sleep(time.Minute)
		if g.Err() != nil || c.Err() != nil {
			t.Fatalf("session ended: guest %v, host %v", g.Err(), c.Err())
		}
		c.Close(nil)
		c.Wait()
		g.Close(nil)
		g.Wait()
	})
}

// TestSessionGuestRules: before a Hello the guest answers no_session in the
// request's epoch; refused frames are answered with their id and the stream
// stays in step; requests of another epoch are ignored; an unknown type is
// answered unsupported_type; a busy guest says busy.
func TestSessionGuestRules(t *testing.T) {
	host, guest := socketPair(t)
	block := make(chan struct{})
	defer close(block)
	g := protocol.NewSession(guest, protocol.SessionConfig{
		Logger: quiet, MaxPayload: 256, MaxInFlight: 1,
		OnHello: func(protocol.Hello) protocol.HelloAck { return protocol.HelloAck{AgentVersion: "test"} },
		Handlers: execHandler(func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error) {
			<-block
			return protocol.ExecResult{}, nil
		}),
	})
	defer g.Close(nil)
	p := newPeer(t, host)
	expectError := func(id uint64, epoch uint32, code string) {
		t.Helper()
		f := p.next()
		var e protocol.Error
		if f.Type != protocol.TypeError || f.ID != id || f.Epoch != epoch || protocol.Unmarshal(f.Payload, &e) != nil || e.Code != code {
			t.Fatalf("got %s id %d epoch %d %s, want Error %s id %d epoch %d", f.Type, f.ID, f.Epoch, f.Payload, code, id, epoch)
		}
	}

	p.send(protocol.Header{Type: protocol.TypeExec, Epoch: 5, ID: 1}, protocol.Exec{Command: "true"})
	expectError(1, 5, protocol.CodeNoSession)

	p.send(protocol.Header{Type: protocol.TypeHello, Epoch: 6, ID: 2}, protocol.Hello{Epoch: 6, MinVersion: 1, MaxVersion: 1})
	if f := p.next(); f.Type != protocol.TypeHelloAck || f.Epoch != 6 || f.ID != 2 {
		t.Fatalf("hello answered with %s epoch %d id %d", f.Type, f.Epoch, f.ID)
	}
	p.epoch = 6
	p.send(protocol.Header{Type: protocol.TypeExec, ID: 3}, protocol.Exec{Command: string(bytes.Repeat([]byte("x"), 300))})
	expectError(3, 6, protocol.CodeTooLarge)
	bad := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeExec, Epoch: 6, ID: 4, Version: 9}, []byte(`{}`))
	p.conn.Write(bad)
	expectError(4, 6, protocol.CodeUnsupportedVersion)
	p.send(protocol.Header{Type: protocol.TypeExec, Epoch: 99, ID: 5}, protocol.Exec{Command: "true"}) // ignored
	p.send(protocol.Header{Type: protocol.TypeActivate, ID: 6}, protocol.Activate{})
	expectError(6, 6, protocol.CodeUnsupportedType)
	p.send(protocol.Header{Type: protocol.TypeExec, ID: 7}, protocol.Exec{Command: "held"})
	p.send(protocol.Header{Type: protocol.TypeExec, ID: 8}, protocol.Exec{Command: "one too many"})
	expectError(8, 6, protocol.CodeBusy)
	p.send(protocol.Header{Type: protocol.TypePing, ID: 9}, nil)
	if f := p.next(); f.Type != protocol.TypePong || f.ID != 9 {
		t.Fatalf("ping answered with %s id %d", f.Type, f.ID)
	}
}

// TestSessionHelloReplaces: a new Hello on the same stream replaces the
// guest's session; the guest's calls of the old session fail with
// ErrReplaced, and its frames carry the new epoch.
func TestSessionHelloReplaces(t *testing.T) {
	host, guest := socketPair(t)
	g := protocol.NewSession(guest, protocol.SessionConfig{Logger: quiet, OnHello: func(protocol.Hello) protocol.HelloAck { return protocol.HelloAck{} }})
	defer g.Close(nil)
	p := newPeer(t, host)
	p.send(protocol.Header{Type: protocol.TypeHello, Epoch: 6, ID: 1}, protocol.Hello{Epoch: 6, MinVersion: 1, MaxVersion: 1})
	p.nextOf(protocol.TypeHelloAck)

	var wg sync.WaitGroup
	wg.Add(1)
	var callErr error
	go func() {
		defer wg.Done()
		callErr = g.Call(testCtx(t), protocol.TypeAuditBatch, protocol.AuditBatch{SpoolID: "s"}, nil, nil)
	}()
	if f := p.next(); f.Type != protocol.TypeAuditBatch || f.Epoch != 6 {
		t.Fatalf("guest sent %s epoch %d", f.Type, f.Epoch)
	}
	p.send(protocol.Header{Type: protocol.TypeHello, Epoch: 7, ID: 2}, protocol.Hello{Epoch: 7, MinVersion: 1, MaxVersion: 1})
	if f := p.next(); f.Type != protocol.TypeHelloAck || f.Epoch != 7 {
		t.Fatalf("second hello answered with %s epoch %d", f.Type, f.Epoch)
	}
	wg.Wait()
	if !errors.Is(callErr, protocol.ErrReplaced) {
		t.Errorf("call of the replaced session: %v, want ErrReplaced", callErr)
	}
	if g.Epoch() != 7 || g.Err() != nil {
		t.Errorf("epoch %d, err %v", g.Epoch(), g.Err())
	}
}

// TestSessionAnswerBeforeEOF: an answer that arrives just before the stream
// ends is the call's result, not ErrClosed (a guest must record an AuditAck
// the host sent before it hung up). The end races with the caller's wake-up,
// so the case runs many times.
func TestSessionAnswerBeforeEOF(t *testing.T) {
	for i := range 50 {
		a, b := socketPair(t)
		s := protocol.NewSession(a, protocol.SessionConfig{Epoch: 7, Logger: quiet})
		p := newPeer(t, b)
		p.epoch = 7
		go func() {
			f, err := p.nextErr()
			if err != nil {
				return
			}
			p.reply(f, protocol.TypeAuditAck, protocol.AuditAck{UpToSeq: 3})
			b.Close()
		}()
		var ack protocol.AuditAck
		if err := s.Call(testCtx(t), protocol.TypeAuditBatch, protocol.AuditBatch{}, &ack, nil); err != nil || ack.UpToSeq != 3 {
			t.Fatalf("run %d: %+v %v, want the answer read before the end of the stream", i, ack, err)
		}
		s.Close(nil)
		s.Wait()
	}
}

// TestSessionWorkersEndWithSession: the handler goroutines a session keeps
// for later requests serve concurrent and sequential requests alike, and
// end with the session (WaitHandlers returns).
func TestSessionWorkersEndWithSession(t *testing.T) {
	host, guest := socketPair(t)
	var served atomic.Int64
	g := protocol.NewSession(guest, protocol.SessionConfig{Logger: quiet,
		OnHello: func(protocol.Hello) protocol.HelloAck { return protocol.HelloAck{} },
		Handlers: execHandler(func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error) {
			served.Add(1)
			return protocol.ExecResult{Route: req.Command}, nil
		})})
	c, err := protocol.Handshake(testCtx(t), host, protocol.ClientConfig{Heartbeat: time.Hour, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	call := func(i int) {
		var res protocol.ExecResult
		cmd := fmt.Sprint(i)
		if err := c.Call(testCtx(t), protocol.TypeExec, protocol.Exec{Command: cmd}, &res, nil); err != nil || res.Route != cmd {
			t.Errorf("call %d: %v, answered %q", i, err, res.Route)
		}
	}
	for round := range 3 {
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() { defer wg.Done(); call(round*100 + i) }()
		}
		wg.Wait()
		for i := range 8 {
			call(round*100 + 50 + i)
		}
	}
	if served.Load() != 3*24 {
		t.Errorf("%d requests served, want %d", served.Load(), 3*24)
	}
	c.Close(nil)
	g.Close(nil)
	done := make(chan struct{})
	go func() { g.WaitHandlers(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the session's handler goroutines outlived it")
	}
}

// TestSessionDirectWriteFullStream: on a socket the peer does not read,
// requests written by their callers fill the stream; each caller still
// returns when its context ends, and every frame on the stream is whole,
// a request written in part included (its rest follows once the peer
// reads), so the session goes on once the peer reads again.
func TestSessionDirectWriteFullStream(t *testing.T) {
	host, guest := socketPair(t)
	s := protocol.NewSession(host, protocol.SessionConfig{Epoch: 7, WriteTimeout: time.Minute, Logger: quiet})
	defer s.Close(nil)
	p := newPeer(t, guest)
	p.epoch = 7

	// Requests, each more than a buffer's chunk, well past what the
	// stream holds: the last ones are written in part or wait (for room,
	// or for the writer), and each call ends with its context all the same.
	arg := string(bytes.Repeat([]byte("y"), 40001))
	for i := range 40 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		err := s.Call(ctx, protocol.TypeExec, protocol.Exec{Command: fmt.Sprintf("fill-%d", i), Args: []string{arg}}, nil, nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("call %d: %v, want its deadline", i, err)
		}
	}

	// The peer reads: whole frames only, then the next call's.
	done := make(chan error, 1)
	go func() {
		var res protocol.ExecResult
		done <- s.Call(context.Background(), protocol.TypeExec, protocol.Exec{Command: "after"}, &res, nil)
	}()
	for n := 0; ; n++ {
		f := p.next() // fails the test on a torn frame
		var req protocol.Exec
		if err := protocol.Unmarshal(f.Payload, &req); err != nil {
			t.Fatalf("frame %d: %v", n, err)
		}
		if req.Command == "after" {
			p.reply(f, protocol.TypeExecResult, protocol.ExecResult{})
			break
		}
		if len(req.Args) != 1 || req.Args[0] != arg {
			t.Fatalf("frame %d (%s): argument of %d bytes", n, req.Command, len(req.Args[0]))
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("call after the stream drained: %v", err)
	}
	if n := p.r.Skipped(); n != 0 {
		t.Fatalf("the peer skipped %d bytes of torn frames", n)
	}
}
