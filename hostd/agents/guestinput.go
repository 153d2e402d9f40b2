package agents

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// A guest is untrusted: what it sends is checked like user input. A
// HelloAck, an activation result or an exec result out of bounds ends the
// session with the reason logged, counted (vmpersona_guest_input_refused_total)
// and audited once per distinct reason (a guest that reconnects and sends
// the same again is not audited again). Audit batches are held to the
// instance's ingestion quota instead: the host answers them later, and the
// guest keeps its events spooled meanwhile.

// ErrGuestInput is the class of a session ended for out-of-bounds guest
// input.
var ErrGuestInput = errdefs.New(errdefs.ErrUpstream, "guest-input", "the guest sent input out of bounds")

// Bounds of a guest's HelloAck.
const (
	MaxAgentVersion = 128
	MaxBootID       = 64
	MaxCapabilities = 64
	MaxCapability   = 64
	MaxHelloSpoolID = 256
)

// DefaultExecMaxOutput is the per-stream output bound the host asks for
// when an exec request names none, and enforces on the answer.
const DefaultExecMaxOutput = 1 << 20

// Default per-instance audit ingestion quotas.
const (
	DefaultAuditEventsPerSecond = 1000
	DefaultAuditBytesPerSecond  = 256 << 10
	// auditQuotaBurst is how many seconds of quota an idle instance saves up.
	auditQuotaBurst = 2
	// maxAuditHold bounds how long one batch is held back (the guest waits
	// 30 s for an answer before it sends the batch again).
	maxAuditHold = 5 * time.Second
)

func guestViolation(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrGuestInput, fmt.Sprintf(format, args...))
}

// printable checks a short identifier a guest sends: valid UTF-8, no
// control characters, at most max bytes.
func printable(field, v string, max int) error {
	if len(v) > max {
		return guestViolation("%s is %d bytes long, at most %d allowed", field, len(v), max)
	}
	if !utf8.ValidString(v) {
		return guestViolation("%s is not valid UTF-8", field)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return guestViolation("%s contains control character %U", field, r)
		}
	}
	return nil
}

// checkHello validates a guest's handshake answer.
func checkHello(h *protocol.HelloAck) error {
	if err := printable("agent_version", h.AgentVersion, MaxAgentVersion); err != nil {
		return err
	}
	if err := printable("boot_id", h.BootID, MaxBootID); err != nil {
		return err
	}
	if err := printable("spool_id", h.SpoolID, MaxHelloSpoolID); err != nil {
		return err
	}
	if len(h.Capabilities) > MaxCapabilities {
		return guestViolation("%d capabilities, at most %d allowed", len(h.Capabilities), MaxCapabilities)
	}
	for _, c := range h.Capabilities {
		if err := printable("capability", c, MaxCapability); err != nil {
			return err
		}
	}
	if h.PendingAudit < 0 {
		return guestViolation("pending_audit is negative")
	}
	return checkActive("active", h.Active)
}

// checkActive validates the persona a guest says it holds: the rules a
// persona created through the API follows.
func checkActive(field string, act *protocol.ActiveState) error {
	if act == nil {
		return nil
	}
	p := act.Persona
	if err := validate.Persona(&p); err != nil {
		return guestViolation("%s persona: %v", field, err)
	}
	return printable(field+".activation_id", act.ActivationID, store.MaxGuestActivationID)
}

// checkExecResult holds an exec answer to the output bound the host asked
// for.
func checkExecResult(res *protocol.ExecResult, maxOutput int) error {
	// Output that is not UTF-8 comes in base64, a third larger.
	limit := func(encoding string) int {
		if encoding == protocol.EncodingBase64 {
			return base64.StdEncoding.EncodedLen(maxOutput)
		}
		return maxOutput
	}
	if len(res.Stdout) > limit(res.StdoutEncoding) || len(res.Stderr) > limit(res.StderrEncoding) {
		return guestViolation("exec result carries %d bytes of stdout and %d of stderr; the host asked for at most %d each",
			len(res.Stdout), len(res.Stderr), maxOutput)
	}
	if res.Persona != nil {
		if err := printable("exec persona", *res.Persona, store.MaxGuestPersona); err != nil {
			return err
		}
	}
	return printable("signal", res.Signal, 32)
}

// boundOutput wraps a streamed exec's output callback: more than maxOutput
// bytes on a stream ends the session.
func (a *agent) boundOutput(s *session, maxOutput int, onOutput func(byte, []byte)) func(byte, []byte) {
	var mu sync.Mutex
	seen := map[byte]int{}
	return func(stream byte, data []byte) {
		mu.Lock()
		seen[stream] += len(data)
		n := seen[stream]
		mu.Unlock()
		if n > maxOutput {
			a.refuseGuest(s, "exec_output", guestViolation("streamed %d bytes on stream %d; the host asked for at most %d", n, stream, maxOutput))
			return
		}
		onOutput(stream, data)
	}
}

// refuseGuest ends the session for out-of-bounds input: logged, counted,
// audited once per distinct reason.
func (a *agent) refuseGuest(s *session, kind string, err error) {
	if s != nil {
		s.cl.Close(err)
	}
	a.noteRefusal(kind, err, "guest input refused: session ended")
}

// forgedAudit notes the events of a batch whose type is not a guest's: the
// store acknowledges them without keeping them. Each is counted; a refusal
// is logged and audited at most once a minute per instance, saying how
// many such events came since the last one (a guest cannot turn forged
// events into host events faster than that).
func (a *agent) forgedAudit(b *protocol.AuditBatch) {
	n, first := 0, ""
	for i := range b.Events {
		if typ := b.Events[i].Type; !store.GuestAuditType(typ) {
			if n == 0 {
				first = typ
			}
			n++
		}
	}
	if n == 0 {
		return
	}
	a.m.met.GuestInputRefused.WithLabelValues("audit_type").Add(float64(n))
	now := time.Now()
	a.mu.Lock()
	a.forgedSince += n
	due := !now.Before(a.forgedNext)
	count := a.forgedSince
	if due {
		a.forgedNext, a.forgedSince = now.Add(time.Minute), 0
	}
	a.mu.Unlock()
	if !due {
		return
	}
	err := guestViolation("%d audit events of types that are not a guest's (first %.64q): acknowledged, not stored", count, first)
	a.log.Warn("guest audit events refused", "err", err)
	a.auditRefusal("audit_type", err)
}

// noteRefusal counts a refusal, and logs and audits it unless it is the
// same as the last one.
func (a *agent) noteRefusal(kind string, err error, msg string) {
	a.m.met.GuestInputRefused.WithLabelValues(kind).Inc()
	a.mu.Lock()
	repeated := a.lastRefusal == err.Error()
	a.lastRefusal = err.Error()
	a.mu.Unlock()
	if repeated {
		a.log.Debug(msg+" (again)", "kind", kind, "err", err)
		return
	}
	a.log.Warn(msg, "kind", kind, "err", err)
	a.auditRefusal(kind, err)
}

// auditRefusal records a guest_refused event.
func (a *agent) auditRefusal(kind string, err error) {
	stored, aerr := a.m.st.AppendAudit(store.AuditEvent{
		Type: protocol.AuditGuestRefused, Instance: a.name, Actor: SystemActor, Result: kind, Detail: capDetail(err.Error()),
	})
	if aerr != nil {
		a.log.Error("append audit event", "type", protocol.AuditGuestRefused, "err", aerr)
		return
	}
	a.m.countAudit(stored)
}

func capDetail(s string) string {
	if len(s) > 512 {
		return strings.ToValidUTF8(s[:512], "") + "…"
	}
	return s
}

// auditQuota is an instance's audit ingestion budget: two token buckets,
// events and bytes, refilled per second.
type auditQuota struct {
	eventRate, byteRate float64 // per second; set once

	mu            sync.Mutex
	events, bytes float64
	last          time.Time
}

func (q *auditQuota) refill(now time.Time) {
	if q.last.IsZero() {
		q.events, q.bytes, q.last = q.eventRate*auditQuotaBurst, q.byteRate*auditQuotaBurst, now
		return
	}
	dt := now.Sub(q.last).Seconds()
	q.last = now
	q.events = min(q.eventRate*auditQuotaBurst, q.events+dt*q.eventRate)
	q.bytes = min(q.byteRate*auditQuotaBurst, q.bytes+dt*q.byteRate)
}

// admit takes the cost of as many of evs as fit the quota now (a prefix)
// and returns how many; or, when the quota does not yet hold the whole
// batch (or as much of it as the bucket can ever hold), 0 and how long
// until it does. Waiting for the whole batch rather than admitting a few
// events at a time keeps a guest from sending the same large batch again
// and again for a handful of events each time.
func (q *auditQuota) admit(evs []protocol.AuditEvent, now time.Time, force bool) (int, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.refill(now)
	wantEvents, wantBytes := 0.0, 0.0
	for i := range evs {
		wantEvents++
		wantBytes += float64(store.GuestAuditSize(&evs[i]))
	}
	wantEvents = min(wantEvents, q.eventRate*auditQuotaBurst)
	wantBytes = min(wantBytes, q.byteRate*auditQuotaBurst)
	if !force && (q.events < wantEvents || q.bytes < wantBytes) {
		need := max((wantEvents-q.events)/q.eventRate, (wantBytes-q.bytes)/q.byteRate)
		return 0, time.Duration(need*float64(time.Second)) + time.Millisecond
	}
	n := 0
	for n < len(evs) && q.events >= 1 && q.bytes >= 1 {
		q.events--
		q.bytes -= float64(store.GuestAuditSize(&evs[n]))
		n++
	}
	return n, 0
}

// throttleAudit is the back-pressure of audit ingestion: it returns the
// part of b the instance's quota admits (a prefix: the acknowledgement then
// covers only it, and the guest sends the rest again), waiting for quota up
// to maxAuditHold; with none by then, an empty batch (nothing
// acknowledged). Waiting here holds the guest back: the session serves one
// batch at a time and the guest waits for each answer, its events staying
// in its spool meanwhile.
func (a *agent) throttleAudit(ctx context.Context, b protocol.AuditBatch) protocol.AuditBatch {
	a.forgedAudit(&b)
	q := &a.quota
	if q.eventRate <= 0 || q.byteRate <= 0 || len(b.Events) == 0 {
		return b
	}
	start := time.Now()
	defer func() {
		if d := time.Since(start); d > time.Millisecond {
			a.m.met.AuditThrottleSeconds.Add(d.Seconds())
		}
	}()
	deadline := start.Add(maxAuditHold)
	for {
		now := time.Now()
		n, wait := q.admit(b.Events, now, !now.Before(deadline))
		if n > 0 || !now.Before(deadline) {
			b.Events = b.Events[:n]
			return b
		}
		if left := deadline.Sub(now); wait > left {
			wait = left
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			b.Events = nil
			return b
		}
	}
}
