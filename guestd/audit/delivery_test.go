package audit

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// quiet drops the spool's log lines: the tests check state, not logs.
var quiet = slog.New(slog.DiscardHandler)

// step is one thing that happens to a Delivery in a table case.
type step struct {
	do   string // record (n), next (want), ack (upTo), refuse, unanswered, reset, wait (d), reopen
	n    int
	upTo uint64
	d    time.Duration
	want []uint64 // next: the seqs of the batch sent; nil: none
}

func record1(n int) step        { return step{do: "record", n: n} }
func next(want ...uint64) step  { return step{do: "next", want: want} }
func ack(upTo uint64) step      { return step{do: "ack", upTo: upTo} }
func wait(d time.Duration) step { return step{do: "wait", d: d} }
func do(what string) step       { return step{do: what} }
func seqRange(from, to uint64) []uint64 {
	return slices.Collect(func(y func(uint64) bool) {
		for i := from; i <= to && y(i); i++ {
		}
	})
}

func TestDelivery(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
	}{
		{"nothing pending, nothing sent", []step{next()}},
		{"one batch in flight at a time", []step{
			record1(3), next(1, 2, 3), record1(1), next(), ack(3), next(4), ack(4), next(),
		}},
		{"a partial ack sends the rest after the pause, not at once", []step{
			record1(3), next(1, 2, 3), ack(1), next(), wait(RetryPause - time.Millisecond), next(), wait(time.Millisecond), next(2, 3),
		}},
		{"a refusal keeps the events and pauses", []step{
			record1(2), next(1, 2), do("refuse"), next(), wait(RetryPause), next(1, 2), ack(2), next(),
		}},
		{"an unanswered batch is sent again at once", []step{
			record1(2), next(1, 2), do("unanswered"), next(1, 2),
		}},
		{"a batch in flight past the answer timeout is sent again", []step{
			record1(1), next(1), wait(AnswerTimeout - time.Millisecond), next(), wait(time.Millisecond), next(1),
		}},
		{"a new session sends what the old one had in flight", []step{
			record1(2), next(1, 2), do("reset"), next(1, 2), ack(2), next(),
		}},
		{"a new session lifts the refusal pause", []step{
			record1(1), next(1), do("refuse"), next(), do("reset"), next(1),
		}},
		{"acknowledged events never come back, across a restart", []step{
			record1(3), next(1, 2, 3), ack(2), do("reopen"), next(3), ack(3), do("reopen"), next(),
		}},
		{"a stale ack below the batch pauses and re-sends only the unacknowledged", []step{
			record1(3), next(1, 2, 3), ack(3), record1(1), next(4), ack(2), next(), wait(RetryPause), next(4),
		}},
		{"batches are the oldest events, at most BatchMax", []step{
			record1(BatchMax + 5), {do: "next", want: seqRange(1, BatchMax)}, ack(BatchMax), {do: "next", want: seqRange(BatchMax+1, BatchMax+5)},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Limits{}, quiet)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { s.Close() }()
			d := NewDelivery(s)
			now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
			for i, st := range tc.steps {
				where := fmt.Sprintf("step %d (%s)", i, st.do)
				switch st.do {
				case "record":
					record(t, s, st.n)
				case "next":
					got := seqs(d.Next(now))
					if !slices.Equal(got, st.want) {
						t.Fatalf("%s: sent %v, want %v", where, got, st.want)
					}
					if inFlight, last := d.InFlight(); len(st.want) > 0 && (!inFlight || last != st.want[len(st.want)-1]) {
						t.Fatalf("%s: in flight %v up to %d after sending %v", where, inFlight, last, st.want)
					}
				case "ack":
					if err := d.Acked(st.upTo, now); err != nil {
						t.Fatalf("%s: %v", where, err)
					}
				case "refuse":
					d.Refused(now)
				case "unanswered":
					d.Unanswered()
				case "reset":
					d.Reset()
				case "wait":
					now = now.Add(st.d)
				case "reopen":
					// The guest daemon restarts: a new spool from the same
					// directory, a new Delivery.
					s.Close()
					if s, err = Open(dir, Limits{}, quiet); err != nil {
						t.Fatal(err)
					}
					d = NewDelivery(s)
				default:
					t.Fatalf("%s: unknown step", where)
				}
			}
		})
	}
}
