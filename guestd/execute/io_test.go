package execute

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// Without input the process reads the shared /dev/null, and output larger
// than one read is captured whole and then bounded.
func TestDevNullStdinAndLargeOutput(t *testing.T) {
	for range 3 {
		res, err := Run(context.Background(), Spec{
			Path: "/bin/sh", Args: []string{"sh", "-c", `readlink /proc/self/fd/0; wc -c; head -c 100000 /dev/zero`},
			MaxOutput: 90000,
		})
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(res.Stdout), "\n", 3)
		if len(lines) < 3 || lines[0] != "/dev/null" || strings.TrimSpace(lines[1]) != "0" {
			t.Fatalf("stdin: %q", res.Stdout[:min(len(res.Stdout), 40)])
		}
		if len(res.Stdout) != 90000 || !res.StdoutTruncated || !bytes.Equal([]byte(lines[2]), make([]byte, len(lines[2]))) {
			t.Fatalf("stdout %d bytes, truncated %v", len(res.Stdout), res.StdoutTruncated)
		}
	}
	if devNull() == nil {
		t.Fatal("/dev/null not shared")
	}
}

func BenchmarkRunTrue(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Run(context.Background(), Spec{Path: "/bin/true"}); err != nil {
			b.Fatal(err)
		}
	}
}

// blockingInput is a streamed input whose Read waits until Close (a host
// that sends nothing more); it records the Close.
type blockingInput struct {
	data   io.Reader
	closed chan struct{}
	once   sync.Once
}

func (b *blockingInput) Read(p []byte) (int, error) {
	if n, err := b.data.Read(p); err != io.EOF {
		return n, err
	}
	<-b.closed
	return 0, io.ErrClosedPipe
}

func (b *blockingInput) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// Streamed input reaches the process as it reads it, and the run ends with
// the process even while the input still waits for more (its Read returns
// once Run closes it), whether or not the process read any of it.
func TestStreamedInput(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 1<<20) // 10 MiB: many pipe buffers
	in := &blockingInput{data: bytes.NewReader(big), closed: make(chan struct{})}
	res, err := Run(context.Background(), Spec{Path: "/usr/bin/head", Args: []string{"head", "-c", "10000000"}, Input: in, Timeout: time.Minute, MaxOutput: 16 << 20})
	if err != nil || !bytes.Equal(res.Stdout, big[:10000000]) {
		t.Fatalf("head of streamed input: %v, %d bytes", err, len(res.Stdout))
	}
	select {
	case <-in.closed:
	default:
		t.Error("Run returned without closing its input")
	}

	// All the input sent so far is read, the process ends, and the input
	// waits for more: Run closes it.
	in = &blockingInput{data: strings.NewReader("hello"), closed: make(chan struct{})}
	res, err = Run(context.Background(), Spec{Path: "/usr/bin/head", Args: []string{"head", "-c", "5"}, Input: in, Timeout: time.Minute})
	if err != nil || string(res.Stdout) != "hello" || res.TimedOut {
		t.Fatalf("head -c 5 of input that waits: %v, %+v", err, res)
	}

	in = &blockingInput{data: bytes.NewReader(big), closed: make(chan struct{})}
	res, err = Run(context.Background(), Spec{Path: "/bin/true", Input: in, Timeout: time.Minute})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("a process that reads nothing: %v, %+v", err, res)
	}
	// A process that cannot start closes the input too.
	in = &blockingInput{data: bytes.NewReader(nil), closed: make(chan struct{})}
	if _, err := Run(context.Background(), Spec{Path: "/no/such/program", Input: in}); err == nil {
		t.Fatal("a missing program started")
	}
	select {
	case <-in.closed:
	default:
		t.Error("a failed start left the input open")
	}
}
