package store

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// Audit event sources.
const (
	SourceHost  = "host"
	SourceGuest = "guest"
)

// Audit event types the store's callers record; the vocabulary is
// protocol.AuditTypes (guest events keep the guest's type).
const (
	AuditPersonaCreated        = protocol.AuditPersonaCreated
	AuditPersonaUpdated        = protocol.AuditPersonaUpdated
	AuditPersonaDeleted        = protocol.AuditPersonaDeleted
	AuditActivationRequested   = protocol.AuditActivationRequested
	AuditDeactivationRequested = protocol.AuditDeactivationRequested
	AuditAuthFailure           = protocol.AuditAuthFailure
	AuditExec                  = protocol.AuditExec
	AuditDefaultActivation     = protocol.AuditDefaultActivation
	DefaultAuditLimit          = 100
	MaxAuditLimit              = 10000
	auditIDLen                 = 32 // hex of 8 bytes time + 8 bytes sequence
)

// AuditEvent is one entry of the audit log, the API's type. The store
// assigns its ID (sortable in ingestion order, the cursor of a query); a
// host event's Time is its own, a guest event's its ingestion, and its
// GuestTime the guest's claim, clamped to [ingestion − MaxGuestClockPast,
// ingestion + MaxGuestClockAhead]. What the store writes is auditRecord.
type AuditEvent = apitypes.AuditEvent

// AuditQuery selects audit events. Empty fields do not filter.
type AuditQuery struct {
	Instance, Persona, Type string
	// Since (inclusive) and Until (exclusive) bound the event time.
	Since, Until time.Time
	// After is an event ID (a cursor): only events after it are returned.
	After string
	// Limit caps the answer: 0 (or less) means 100, more than 10000 means 10000.
	Limit int
	// MaxBytes, when positive, ends the answer before the event that would
	// take the stored size of the answer past it (the first event always
	// comes): a page then holds fewer than Limit events although more
	// match. It bounds the memory one query takes.
	MaxBytes int
}

// auditID is the event's key suffix and public ID: the time the host stored
// it in nanoseconds since the epoch (never less than an earlier ID's, see
// ingestClock), then an insertion sequence number, both big-endian, in hex.
// It sorts by ingestion: a guest cannot move the cursor by the time it
// claims.
func auditID(t time.Time, seq uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], timeNanos(t))
	binary.BigEndian.PutUint64(b[8:], seq)
	return hex.EncodeToString(b[:])
}

func timeNanos(t time.Time) uint64 {
	if t.Before(time.Unix(0, 0)) {
		return 0
	}
	if t.After(time.Unix(0, math.MaxInt64)) {
		return math.MaxInt64
	}
	return uint64(t.UnixNano())
}

// timeHex is the part of an audit ID shared by every event at t.
func timeHex(t time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], timeNanos(t))
	return hex.EncodeToString(b[:])
}

// Secondary indexes: x/<field>/<value>\x00<id> (no value) for the fields
// AuditQuery filters on, with the event's TTL. Values longer than
// maxIndexedValue are not indexed (a query for one scans the log instead).
// A value containing NUL may share a prefix with a shorter one; queries
// re-check every filter on the event itself, so that only costs a read.
const (
	indexInstance   = 'i'
	indexPersona    = 'p'
	indexType       = 't'
	maxIndexedValue = 1024
)

func indexPrefix(field byte, value string) []byte {
	k := make([]byte, 0, len(prefixIndex)+2+len(value)+1+auditIDLen)
	k = append(k, prefixIndex...)
	k = append(k, field, '/')
	k = append(k, value...)
	return append(k, 0)
}

func indexed(value string) bool { return value != "" && len(value) <= maxIndexedValue }

func (s *Store) putIndexes(txn *badger.Txn, ev *AuditEvent) error {
	for _, ix := range []struct {
		field byte
		value string
	}{{indexInstance, ev.Instance}, {indexPersona, ev.Persona}, {indexType, ev.Type}} {
		if !indexed(ix.value) {
			continue
		}
		if err := txn.SetEntry(s.entry(append(indexPrefix(ix.field, ix.value), ev.ID...), nil)); err != nil {
			return err
		}
	}
	return nil
}

func auditKey(id string) []byte { return []byte(prefixAudit + id) }

func validAuditID(id string) bool {
	if len(id) != auditIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func dedupKey(instance, spool string, seq uint64) []byte {
	k := make([]byte, 0, len(prefixDedup)+len(instance)+len(spool)+2+8)
	k = append(k, prefixDedup...)
	k = append(k, instance...)
	k = append(k, 0)
	k = append(k, spool...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func (s *Store) entry(k, v []byte) *badger.Entry {
	e := badger.NewEntry(k, v)
	if s.retention > 0 {
		e = e.WithTTL(s.retention)
	}
	return e
}

// putAudit assigns ev an ID and sets it in txn.
func (s *Store) putAudit(txn *badger.Txn, ev *AuditEvent) error {
	seq, err := s.seq.Next()
	if err != nil {
		return fmt.Errorf("audit sequence: %w", err)
	}
	ev.ID = auditID(s.clock.next(s.now()), seq)
	b, err := encodeAudit(ev)
	if err != nil {
		return fmt.Errorf("audit event: encode: %w", err)
	}
	if err := txn.SetEntry(s.entry(auditKey(ev.ID), b)); err != nil {
		return err
	}
	return s.putIndexes(txn, ev)
}

// Transaction budget for audit writes: Badger refuses a transaction larger
// than 15% of its memtable (ErrTxnTooBig); staying well below that means a
// transaction is never cut in the middle of an event (an audit entry without
// its dedup key, or the reverse).
const (
	txnBudgetBytes  = 2 << 20
	txnBudgetEvents = 1000
)

// estimateEvent is a generous upper bound on what an event adds to a
// transaction (JSON escaping may expand a byte to six).
func estimateEvent(ev *AuditEvent) int {
	n := len(ev.Instance) + len(ev.Actor) + len(ev.Type) + len(ev.Persona) + len(ev.Command) +
		len(ev.Route) + len(ev.Result) + len(ev.ActivationID) + len(ev.GuestSpool) + len(ev.Detail)
	return 6*n + 4*len(ev.Instance) + 4*len(ev.Persona) + 4*len(ev.Type) + 1024
}

// writeChunks writes items 0..n-1 in as few transactions as the budget
// allows: put handles item i inside the current transaction, size estimates
// it beforehand. reset is called before each attempt at a transaction (a
// conflict retries it) with the index it starts from, so callers can discard
// what a failed attempt collected. Each transaction is committed (synced)
// before the next starts; an error leaves the earlier ones committed.
func (s *Store) writeChunks(n int, size func(i int) int, reset func(from int), put func(txn *badger.Txn, i int) error) error {
	for from := 0; from < n; {
		next := from
		err := s.update(func(txn *badger.Txn) error {
			reset(from)
			next = from
			used := 0
			for i := from; i < n; i++ {
				sz := size(i)
				if i > from && (used+sz > txnBudgetBytes || i-from >= txnBudgetEvents) {
					break
				}
				if err := put(txn, i); err != nil {
					return err
				}
				used += sz
				next = i + 1
			}
			return nil
		})
		if err != nil {
			return err
		}
		from = next
	}
	return nil
}

// AppendAudit records host events and returns them with their IDs. A zero
// Time becomes now; times are stored in UTC; Source is set to "host". The
// events are durable when it returns. Type must not be empty.
func (s *Store) AppendAudit(evs ...AuditEvent) ([]AuditEvent, error) {
	out := make([]AuditEvent, len(evs))
	now := s.now()
	for i, ev := range evs {
		if err := prepareHostEvent(&ev, now); err != nil {
			return nil, fmt.Errorf("audit event %d: %w", i, err)
		}
		out[i] = ev
	}
	err := s.writeChunks(len(out), func(i int) int { return estimateEvent(&out[i]) }, func(int) {}, func(txn *badger.Txn, i int) error {
		return s.putAudit(txn, &out[i])
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// prepareHostEvent readies a host event for writing.
func prepareHostEvent(ev *AuditEvent, now time.Time) error {
	if ev.Type == "" {
		return fmt.Errorf("no type: %w", ErrInvalidArgument)
	}
	if ev.Time.IsZero() {
		ev.Time = now
	}
	ev.Time = ev.Time.UTC()
	ev.Source = SourceHost
	return nil
}

// IngestGuestAudit stores a guest's audit batch exactly once: events whose
// (instance, spool ID, seq) is already stored are skipped. Everything is
// durable when it returns. upTo is the highest seq of the batch (all of its
// events are stored now, whether by this call or an earlier one) — what the
// AuditAck carries; 0 for an empty batch. inserted are the events stored by
// this call, with their IDs.
//
// A guest is not trusted with the log: an event whose type is not one a
// guest records (GuestAuditType) is acknowledged and never stored, every
// text field is cut to its bound (guestEvent), the guest's clock is kept as
// GuestTime, clamped, and the event is ordered by when the host stored it.
func (s *Store) IngestGuestAudit(instance string, b protocol.AuditBatch) (upTo uint64, inserted []AuditEvent, err error) {
	if err := checkInstance(instance); err != nil {
		return 0, nil, err
	}
	switch {
	case b.SpoolID == "":
		return 0, nil, fmt.Errorf("audit batch has no spool ID: %w", ErrInvalidArgument)
	case len(b.SpoolID) > maxSpoolID || strings.IndexByte(b.SpoolID, 0) >= 0 || !utf8.ValidString(b.SpoolID):
		return 0, nil, fmt.Errorf("audit batch has a malformed spool ID: %w", ErrInvalidArgument)
	}
	if len(b.Events) == 0 {
		return 0, []AuditEvent{}, nil
	}
	now := s.now()
	// inserted grows per transaction; marks[i] is len(inserted) before the
	// transaction that starts at event i, so a retried one can drop its part.
	marks := make(map[int]int)
	inserted = []AuditEvent{}
	size := func(i int) int {
		ev := guestEvent(instance, b.SpoolID, b.Events[i], now)
		return estimateEvent(&ev) + len(prefixDedup) + len(instance) + len(b.SpoolID) + 64
	}
	err = s.writeChunks(len(b.Events), size, func(from int) {
		if m, ok := marks[from]; ok {
			inserted = inserted[:m]
		} else {
			marks[from] = len(inserted)
		}
	}, func(txn *badger.Txn, i int) error {
		g := b.Events[i]
		dk := dedupKey(instance, b.SpoolID, g.Seq)
		_, err := txn.Get(dk)
		if err == nil {
			return nil // stored before (or earlier in this batch)
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		if !GuestAuditType(g.Type) {
			// Not a guest's to record (a host-looking type): remembered
			// as seen, so that it is acknowledged once, never stored.
			return txn.SetEntry(s.entry(dk, nil))
		}
		ev := guestEvent(instance, b.SpoolID, g, now)
		if err := s.putAudit(txn, &ev); err != nil {
			return err
		}
		if err := txn.SetEntry(s.entry(dk, []byte(ev.ID))); err != nil {
			return err
		}
		inserted = append(inserted, ev)
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	for _, g := range b.Events {
		upTo = max(upTo, g.Seq)
	}
	return upTo, inserted, nil
}

// QueryAudit returns the events q selects, in the order the host stored
// them. With more than q.Limit matches (or q.MaxBytes reached), the last
// event's ID is the cursor for the next page (q.After). Since and Until
// select by the time the host stored the event.
func (s *Store) QueryAudit(q AuditQuery) ([]AuditEvent, error) {
	out, _, err := s.QueryAuditPage(q)
	return out, err
}

// QueryAuditPage is QueryAudit that also says whether more events match
// after the answer (it was cut by q.Limit or q.MaxBytes), seen in the same
// read transaction.
func (s *Store) QueryAuditPage(q AuditQuery) (evs []AuditEvent, more bool, err error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultAuditLimit
	}
	limit = min(limit, MaxAuditLimit)
	if q.After != "" && !validAuditID(q.After) {
		return nil, false, fmt.Errorf("audit cursor %q: %w", q.After, ErrInvalidArgument)
	}
	// Walk the primary log, or the index of one filter (instance first,
	// then persona, then type). Both are ordered by ID.
	base := []byte(prefixAudit)
	useIndex := true
	switch {
	case indexed(q.Instance):
		base = indexPrefix(indexInstance, q.Instance)
	case indexed(q.Persona):
		base = indexPrefix(indexPersona, q.Persona)
	case indexed(q.Type):
		base = indexPrefix(indexType, q.Type)
	default:
		useIndex = false
	}
	key := func(suffix string) []byte { return append(slices.Clip(base), suffix...) }
	start := base
	if !q.Since.IsZero() {
		start = key(timeHex(q.Since))
	}
	var after []byte
	if q.After != "" {
		after = key(q.After)
		if bytes.Compare(after, start) > 0 {
			start = after
		}
	}
	var until []byte
	if !q.Until.IsZero() {
		until = key(timeHex(q.Until))
	}

	out := []AuditEvent{}
	err = s.view(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{
			PrefetchValues: !useIndex, PrefetchSize: min(limit, 100), Prefix: base,
		})
		defer it.Close()
		size := 0
		for it.Seek(start); it.Valid(); it.Next() {
			k := it.Item().Key()
			if after != nil && bytes.Equal(k, after) {
				continue
			}
			if until != nil && bytes.Compare(k, until) >= 0 {
				break
			}
			if len(k) != len(base)+auditIDLen {
				continue // a longer value with a NUL: not this one
			}
			item := it.Item()
			if useIndex {
				var err error
				item, err = txn.Get(auditKey(string(k[len(base):])))
				if errors.Is(err, badger.ErrKeyNotFound) {
					continue // expired a moment before its index entry
				}
				if err != nil {
					return err
				}
			}
			var ev AuditEvent
			vsize := 0
			if err := item.Value(func(v []byte) error { vsize = len(v); return decodeAudit(v, &ev) }); err != nil {
				return fmt.Errorf("audit event %s: decode: %w", k[len(base):], err)
			}
			if q.Instance != "" && ev.Instance != q.Instance ||
				q.Persona != "" && ev.Persona != q.Persona ||
				q.Type != "" && ev.Type != q.Type {
				continue
			}
			if len(out) >= limit || q.MaxBytes > 0 && len(out) > 0 && size+vsize > q.MaxBytes {
				more = true // a matching event that does not fit
				break
			}
			size += vsize
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return out, more, nil
}
