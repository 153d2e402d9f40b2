package protocol_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// pacedStream serves an Exec that streams total bytes in 1 KiB chunks under
// the request's window, counting what it has sent; its handler's last
// Output error goes to result.
func pacedStream(total int, sent *atomic.Int64, result chan<- error) map[protocol.Type]protocol.Handler {
	return execHandler(func(ctx context.Context, r *protocol.Request, req protocol.Exec) (any, error) {
		r.SetWindow(req.Window)
		if req.Command == "two" {
			// stdout and stderr from two goroutines at once, as a
			// command's two pipes; the shorter ends first.
			errs := make(chan error, 2)
			for st, n := range map[byte]int{protocol.StreamStdout: total, protocol.StreamStderr: total / 3} {
				go func() {
					chunk := bytes.Repeat([]byte{'y'}, 1000)
					for i := 0; i < n; i += len(chunk) {
						if err := r.Output(st, chunk); err != nil {
							errs <- err
							return
						}
						sent.Add(int64(len(chunk)))
					}
					errs <- nil
				}()
			}
			result <- errors.Join(<-errs, <-errs)
			return protocol.ExecResult{}, nil
		}
		chunk := bytes.Repeat([]byte{'x'}, 1024)
		for n := 0; n < total; n += len(chunk) {
			chunk[0] = byte(n / 1024)
			if err := r.Output(protocol.StreamStdout, chunk); err != nil {
				result <- err
				return nil, err
			}
			sent.Add(int64(len(chunk)))
		}
		result <- nil
		return protocol.ExecResult{}, nil
	})
}

// TestSessionPacedOutput: with a window, a consumer that stops for a while
// holds the guest back instead of overflowing its buffer (16 KiB here, for
// 1 MiB of output), and it gets every byte in order. Without pacing this
// call fails with ErrOutputOverflow (TestSessionOutputOverflow).
func TestSessionPacedOutput(t *testing.T) {
	const total, window = 1 << 20, 8 << 10
	var sent atomic.Int64
	result := make(chan error, 1)
	host, guest := socketPair(t)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: pacedStream(total, &sent, result)}, protocol.ClientConfig{OutputBuffer: 16 << 10})

	var got bytes.Buffer
	first := true
	err := c.CallPaced(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "stream", Stream: true, Window: window}, nil, func(_ byte, data []byte) {
		if first {
			// Stop long enough for an unpaced guest to overflow the buffer.
			first = false
			time.Sleep(100 * time.Millisecond)
		}
		if ahead := sent.Load() - int64(got.Len()); ahead > 2*window+1024 {
			t.Errorf("the guest ran %d bytes ahead of the consumer (window %d)", ahead, window)
		}
		got.Write(data)
	}, window)
	if err != nil {
		t.Fatalf("paced call: %v", err)
	}
	if err := <-result; err != nil {
		t.Fatal(err)
	}
	if got.Len() != total {
		t.Fatalf("got %d bytes of %d", got.Len(), total)
	}
	for i := 0; i < total; i += 1024 {
		if got.Bytes()[i] != byte(i/1024) {
			t.Fatalf("chunk %d out of order", i/1024)
		}
	}
}

// TestSessionPacedOutputStopped: a paced call that ends before its answer
// (the HTTP client went away) tells the guest, whose output then fails with
// ErrOutputStopped instead of waiting for credit that never comes.
func TestSessionPacedOutputStopped(t *testing.T) {
	const window = 8 << 10
	var sent atomic.Int64
	result := make(chan error, 1)
	host, guest := socketPair(t)
	c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: pacedStream(64<<20, &sent, result)}, protocol.ClientConfig{})

	ctx, cancel := context.WithCancel(testCtx(t))
	err := c.CallPaced(ctx, protocol.TypeExec, protocol.Exec{Command: "stream", Stream: true, Window: window}, nil, func(byte, []byte) { cancel() }, window)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v", err)
	}
	select {
	case err := <-result:
		if !errors.Is(err, protocol.ErrOutputStopped) {
			t.Fatalf("the guest's output after the host stopped reading: %v, want ErrOutputStopped", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the guest still waits for credit after the host stopped reading")
	}
	if n := sent.Load(); n > 4*window {
		t.Errorf("the guest sent %d bytes to a stopped reader (window %d)", n, window)
	}
}

// TestSessionPacedTwoStreams: a command's stdout and stderr wait for credit
// at the same time; when one stream ends, the other still wakes up for the
// credit that follows (a wake-up taken by the finished stream once left the
// other waiting until the command's timeout).
func TestSessionPacedTwoStreams(t *testing.T) {
	const total, window = 1 << 20, 4 << 10
	for range 5 {
		var sent atomic.Int64
		result := make(chan error, 1)
		host, guest := socketPair(t)
		c, _ := pair(t, host, guest, protocol.SessionConfig{Handlers: pacedStream(total, &sent, result)}, protocol.ClientConfig{})
		var got [3]int
		err := c.CallPaced(testCtx(t), protocol.TypeExec, protocol.Exec{Command: "two", Stream: true, Window: window}, nil, func(st byte, data []byte) {
			got[st] += len(data)
		}, window)
		if err != nil {
			t.Fatalf("paced call: %v", err)
		}
		if err := <-result; err != nil {
			t.Fatal(err)
		}
		if want := (total + 999) / 1000 * 1000; got[protocol.StreamStdout] != want {
			t.Fatalf("stdout: %d bytes, want %d", got[protocol.StreamStdout], want)
		}
	}
}
