package ktimer_test

import (
	"errors"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/ktimer"
)

func newTimer(t *testing.T) *ktimer.Timer {
	t.Helper()
	k, err := ktimer.New()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// waitAsync runs Wait in a goroutine and returns its result channel.
func waitAsync(k *ktimer.Timer) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- k.Wait() }()
	return ch
}

func TestResetFires(t *testing.T) {
	k := newTimer(t)
	for _, d := range []time.Duration{0, -time.Second, time.Millisecond} {
		k.Reset(d)
		if err := k.Wait(); err != nil {
			t.Fatalf("Reset(%v): Wait: %v", d, err)
		}
	}
}

// A later Reset replaces the earlier expiry: a timer first armed for an
// hour fires once re-armed for now.
func TestResetReplaces(t *testing.T) {
	k := newTimer(t)
	k.Reset(time.Hour)
	done := waitAsync(k)
	k.Reset(time.Millisecond)
	if err := <-done; err != nil {
		t.Fatalf("Wait: %v", err)
	}
}

// A stopped timer does not fire: Wait returns only when the timer is closed.
// An expiry not yet read is cleared by Stop too.
func TestStopDisarms(t *testing.T) {
	k := newTimer(t)
	k.Reset(time.Nanosecond)
	time.Sleep(time.Millisecond) // most likely expired, not yet read
	k.Stop()
	done := waitAsync(k)
	k.Close()
	if err := <-done; !errors.Is(err, ktimer.ErrClosed) {
		t.Fatalf("Wait on a stopped, then closed timer: %v, want ErrClosed", err)
	}
}

func TestCloseEndsWait(t *testing.T) {
	k := newTimer(t)
	k.Reset(time.Hour)
	done := waitAsync(k)
	k.Close()
	if err := <-done; !errors.Is(err, ktimer.ErrClosed) {
		t.Fatalf("Wait after Close: %v, want ErrClosed", err)
	}
	if err := k.Wait(); !errors.Is(err, ktimer.ErrClosed) {
		t.Fatalf("Wait on a closed timer: %v, want ErrClosed", err)
	}
}
