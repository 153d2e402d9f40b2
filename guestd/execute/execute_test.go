package execute

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

func TestRunCapturesAndReports(t *testing.T) {
	res, err := Run(context.Background(), Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", `cat; echo "$FOO" >&2; exit 5`},
		Env: []string{"FOO=bar"}, Stdin: []byte("input"), Dir: "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "input" || string(res.Stderr) != "bar\n" || res.ExitCode != 5 || res.Signal != "" || res.TimedOut {
		t.Fatalf("%+v", res)
	}
}

func TestRunSignalName(t *testing.T) {
	res, err := Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "kill -TERM $$"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Signal != "SIGTERM" || res.ExitCode != -1 {
		t.Fatalf("%+v", res)
	}
}

func TestRunStartFailure(t *testing.T) {
	_, err := Run(context.Background(), Spec{Path: "/nonexistent/cmd"})
	if !errors.Is(err, ErrStart) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v", err)
	}
}

func TestStreamingBounded(t *testing.T) {
	var mu sync.Mutex
	got := map[byte]int{}
	res, err := Run(context.Background(), Spec{
		Path: "/bin/sh", Args: []string{"sh", "-c", "head -c 10000 /dev/zero; head -c 50 /dev/zero >&2"},
		MaxOutput: 1000,
		OnOutput: func(s byte, d []byte) {
			mu.Lock()
			got[s] += len(d)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got[Stdout] != 1000 || got[Stderr] != 50 || !res.StdoutTruncated || res.StderrTruncated || len(res.Stdout) != 0 {
		t.Fatalf("streamed %v, result %+v", got, res)
	}
}

func TestLimiter(t *testing.T) {
	l := NewLimiter(1)
	release, err := l.TryAcquire()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.TryAcquire(); !errors.Is(err, ErrBusy) {
		t.Fatalf("want ErrBusy, got %v", err)
	}
	release()
	if _, err := l.TryAcquire(); err != nil {
		t.Fatal(err)
	}
}

// Acquire waits for a slot in a bounded queue, within its context.
func TestLimiterQueue(t *testing.T) {
	l := NewQueuedLimiter(1, 2)
	release, err := l.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 2)
	for range 2 {
		go func() {
			r, err := l.Acquire(context.Background())
			if err != nil {
				t.Error(err)
				r = func() {}
			}
			got <- r
		}()
	}
	for l.Waiting() < 2 {
		time.Sleep(time.Millisecond)
	}
	// The queue is full: refused at once.
	if _, err := l.Acquire(context.Background()); !errors.Is(err, ErrBusy) {
		t.Fatalf("full queue: want ErrBusy, got %v", err)
	}
	release()
	r := <-got // one waiter has the slot now
	// A waiter whose context ends is refused.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Acquire(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("cancelled wait: want ErrBusy, got %v", err)
	}
	r()
	(<-got)()
	if l.Waiting() != 0 {
		t.Fatalf("waiting: %d", l.Waiting())
	}
	if r, err := l.TryAcquire(); err != nil {
		t.Fatal(err)
	} else {
		r()
	}
}
