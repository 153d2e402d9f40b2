package audit

import (
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// Delivery limits.
const (
	// BatchMax bounds the events of one AuditBatch.
	BatchMax = 256
	// RetryPause is the pause before a refused or partly acknowledged batch
	// is sent again.
	RetryPause = 2 * time.Second
	// AnswerTimeout bounds the wait for an AuditAck; an unanswered batch is
	// then sent again at once.
	AnswerTimeout = 30 * time.Second
)

// Delivery is the guest's side of audit delivery (protocol README §5.5):
// which events the next batch carries, which batch waits for its
// acknowledgement, what an answer does to the spool, and what a new session
// resets. It does no I/O of its own beyond the spool; the caller sends the
// batches and reports each outcome. Not safe for concurrent use: one
// connection's delivery loop owns it.
//
// Exactly once rests on two rules kept here: an event leaves the spool only
// when the host acknowledged a sequence number at or above it, and every
// event still in the spool is sent again (after a refusal, a lost answer, a
// new session or a restart). The host deduplicates by (spool id, seq).
type Delivery struct {
	spool *Spool

	inFlight bool
	last     uint64    // highest seq of the batch in flight
	sent     time.Time // when it was sent
	hold     time.Time // no batch before this (after a refusal)
}

// NewDelivery returns the delivery state of spool, with nothing in flight.
func NewDelivery(spool *Spool) *Delivery { return &Delivery{spool: spool} }

// AnswerTimeout is how long the caller waits for the answer to a batch.
func (d *Delivery) AnswerTimeout() time.Duration { return AnswerTimeout }

// InFlight reports whether a batch waits for its answer, and its highest seq.
func (d *Delivery) InFlight() (bool, uint64) { return d.inFlight, d.last }

// Next returns the batch to send now — the oldest unacknowledged events,
// oldest first, at most BatchMax — and marks it in flight. It returns nil
// while a batch waits for its answer (for up to AnswerTimeout), during the
// pause after a refusal, and when nothing is pending.
func (d *Delivery) Next(now time.Time) []protocol.AuditEvent {
	if now.Before(d.hold) {
		return nil
	}
	if d.inFlight && now.Sub(d.sent) < AnswerTimeout {
		return nil
	}
	events := d.spool.Pending(BatchMax)
	if len(events) == 0 {
		d.inFlight = false
		return nil
	}
	d.inFlight, d.sent, d.last = true, now, events[len(events)-1].Seq
	return events
}

// Acked applies the host's AuditAck: every event with seq ≤ upTo leaves the
// spool. When the host kept only part of the batch, or the spool could not
// record the acknowledgement (the error is returned), the rest is sent
// again after RetryPause, not in a tight loop.
func (d *Delivery) Acked(upTo uint64, now time.Time) error {
	d.inFlight = false
	if err := d.spool.Ack(upTo); err != nil {
		d.hold = now.Add(RetryPause)
		return err
	}
	if upTo < d.last {
		d.hold = now.Add(RetryPause)
	}
	return nil
}

// Refused records an Error answer (or an answer that did not decode): the
// events stay and are sent again after RetryPause.
func (d *Delivery) Refused(now time.Time) {
	d.inFlight = false
	d.hold = now.Add(RetryPause)
}

// Unanswered records a batch whose answer did not come within
// AnswerTimeout: it is sent again at once.
func (d *Delivery) Unanswered() { d.inFlight = false }

// Reset starts over for a new session (or after the old one ended): nothing
// is in flight, no pause holds, and the next batch is the oldest events
// still in the spool — so whatever the old session had in flight is sent
// again, and the host's deduplication keeps it exactly once.
func (d *Delivery) Reset() {
	d.inFlight, d.last, d.sent, d.hold = false, 0, time.Time{}, time.Time{}
}
