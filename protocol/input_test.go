package protocol_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// countingReader counts the bytes read from it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// inputExec serves an Exec with streamed input through fn.
func inputExec(fn func(ctx context.Context, in *protocol.Input, req protocol.Exec) (any, error)) map[protocol.Type]protocol.Handler {
	return map[protocol.Type]protocol.Handler{protocol.TypeExec: {Answer: protocol.TypeExecResult, Input: true, Serve: func(ctx context.Context, r *protocol.Request) (any, error) {
		var req protocol.Exec
		if err := r.Decode(&req); err != nil {
			return nil, err
		}
		return fn(ctx, r.Input(req.InputWindow), req)
	}}}
}

// TestSessionStreamedInput: standard input of any size reaches the command
// whole and in order, and a command that reads slowly holds the host back:
// the host never has read more than the window beyond what the command took.
func TestSessionStreamedInput(t *testing.T) {
	const total, window = 4 << 20, 64 << 10
	data := make([]byte, total)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	src := &countingReader{r: bytes.NewReader(data)}
	host, guest := socketPair(t)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: inputExec(func(_ context.Context, in *protocol.Input, _ protocol.Exec) (any, error) {
		if in == nil {
			t.Error("the handler got no input")
			return protocol.ExecResult{}, nil
		}
		h := sha256.New()
		buf := make([]byte, 7000) // reads that do not match the frames
		taken := int64(0)
		for i := 0; ; i++ {
			if i%100 == 0 {
				time.Sleep(5 * time.Millisecond) // a slow reader now and then
			}
			n, err := in.Read(buf)
			h.Write(buf[:n])
			taken += int64(n)
			if ahead := src.n.Load() - taken; ahead > window {
				t.Errorf("the host read %d bytes beyond what the command took (window %d)", ahead, window)
				return nil, errors.New("window broken")
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
		}
		return protocol.ExecResult{Stdout: hex.EncodeToString(h.Sum(nil)), ExitCode: int(taken)}, nil
	})}, protocol.ClientConfig{})

	var res protocol.ExecResult
	err := c.CallWith(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "cat", InputWindow: window}, &res,
		protocol.CallOptions{Input: src, InputWindow: window})
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if res.ExitCode != total || res.Stdout != hex.EncodeToString(want[:]) {
		t.Errorf("the command took %d bytes of %d; same content: %v", res.ExitCode, total, res.Stdout == hex.EncodeToString(want[:]))
	}
}

// blockedReader blocks in Read until it is stopped; reading (when set) is
// closed once a Read waits.
type blockedReader struct {
	stop    chan struct{}
	reading chan struct{}
	once    sync.Once
}

func (b *blockedReader) Read([]byte) (int, error) {
	if b.reading != nil {
		b.once.Do(func() { close(b.reading) })
	}
	<-b.stop
	return 0, errors.New("stopped")
}

// TestSessionInputStopped: a command that ends without reading its input
// ends the call, even while the input is waiting for data that never
// comes (an HTTP client that sends nothing more): StopInput is called, and
// the call returns the answer.
func TestSessionInputStopped(t *testing.T) {
	host, guest := socketPair(t)
	src := &blockedReader{stop: make(chan struct{}), reading: make(chan struct{})}
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: inputExec(func(context.Context, *protocol.Input, protocol.Exec) (any, error) {
		// The command ends while the host waits in Read for input (an
		// answer sooner than that finds the input not started at all).
		<-src.reading
		return protocol.ExecResult{ExitCode: 3}, nil
	})}, protocol.ClientConfig{})
	stopped := false
	var res protocol.ExecResult
	err := c.CallWith(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "true", InputWindow: 1024}, &res,
		protocol.CallOptions{Input: src, InputWindow: 1024, StopInput: func() { stopped = true; close(src.stop) }})
	if err != nil || res.ExitCode != 3 {
		t.Fatalf("call: %v, %+v", err, res)
	}
	if !stopped {
		t.Error("the input was not stopped")
	}
}

// TestSessionInputFailure: an input that fails before its end ends the
// command's input and fails the call with ErrInput (the command did not get
// all it was sent).
func TestSessionInputFailure(t *testing.T) {
	host, guest := socketPair(t)
	got := make(chan int, 1)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: inputExec(func(_ context.Context, in *protocol.Input, _ protocol.Exec) (any, error) {
		b, _ := io.ReadAll(in)
		got <- len(b)
		return protocol.ExecResult{}, nil
	})}, protocol.ClientConfig{})
	src := io.MultiReader(bytes.NewReader(make([]byte, 5000)), iotestErr{})
	err := c.CallWith(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "cat", InputWindow: 1 << 20}, nil,
		protocol.CallOptions{Input: src, InputWindow: 1 << 20})
	if !errors.Is(err, protocol.ErrInput) {
		t.Errorf("call: %v, want ErrInput", err)
	}
	if n := <-got; n != 5000 {
		t.Errorf("the command got %d bytes, want the 5000 before the failure", n)
	}
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// TestSessionInputOverflow: a host that sends more than the window the
// guest holds does not grow the guest's memory: the command's input ends
// with ErrInputOverflow.
func TestSessionInputOverflow(t *testing.T) {
	host, guest := socketPair(t)
	src := &countingReader{r: bytes.NewReader(make([]byte, 1<<20))}
	readErr := make(chan error, 1)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: inputExec(func(ctx context.Context, in *protocol.Input, _ protocol.Exec) (any, error) {
		// Let the host send before reading anything.
		for src.n.Load() < 64<<10 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		_, err := io.Copy(io.Discard, in)
		readErr <- err
		return protocol.ExecResult{}, nil
	})}, protocol.ClientConfig{})
	// The request gives the guest a 4 KiB window; the host's end ignores it.
	c.CallWith(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "cat", InputWindow: 4 << 10}, nil,
		protocol.CallOptions{Input: src, InputWindow: 1 << 20})
	if err := <-readErr; !errors.Is(err, protocol.ErrInputOverflow) {
		t.Errorf("reading input sent beyond the window: %v, want ErrInputOverflow", err)
	}
}
