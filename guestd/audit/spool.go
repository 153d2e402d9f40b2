// Package audit keeps the guest's audit events until the host acknowledges
// them. Events are numbered with a sequence that only grows, persisted
// across restarts, and appended (with fsync) to a spool file in the state
// directory before anything else learns of them. The host acknowledges
// everything up to a sequence number; those events are then dropped. After a
// reconnect or a restart the unacknowledged events are sent again, in order:
// the host deduplicates by (spool id, seq).
//
// An activation's event is made durable in the state record of the
// activation (RecordWith, one write for both): the spool file gets its copy
// without fsync, and at start the spool takes back from the state log
// (state.LoggedEvents) any such event a crash took from the spool file.
//
// The spool is bounded by a number of events and a number of bytes. When a
// new event would exceed a bound, the oldest unacknowledged events are
// dropped to make room (a tenth of the spool at once, so the file is not
// rewritten on every event). The gap in sequence numbers shows the host what
// was lost, Dropped counts it, and each drop is logged at error level.
package audit

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/protocol"
)

const (
	spoolFile = "audit-spool.jsonl"
	metaFile  = "audit-meta.json"
	// ackFile holds the latest acknowledgement, a fixed-size checksummed
	// record overwritten in place without fsync: a lost or torn one only
	// makes the guest send acknowledged events again, which the host
	// deduplicates. metaFile (synced) holds the spool id and the
	// acknowledgement as of the last compaction.
	ackFile = "audit-ack.json"
	// ackSize is the size of the acknowledgement record: JSON padded with
	// spaces, ending in a newline.
	ackSize = 64
)

// The spool file keeps acknowledged events until they are this many
// (or this many bytes): compaction rewrites the file with fsync, so it is
// done once per many acknowledgements, not per acknowledgement.
const (
	compactEvents = 1024
	compactBytes  = 1 << 20
)

// Default bounds of the spool.
const (
	DefaultMaxEvents = 10000
	DefaultMaxBytes  = 8 << 20
)

// ErrCorrupt reports spool metadata that cannot be decoded.
var ErrCorrupt = errors.New("audit: corrupt spool metadata")

// Limits bounds the spool.
type Limits struct {
	MaxEvents int
	MaxBytes  int
}

type meta struct {
	SpoolID   string `json:"spool_id"`
	AckedUpTo uint64 `json:"acked_up_to"`
}

type entry struct {
	ev   protocol.AuditEvent
	size int
}

// Spool is the persistent queue of unacknowledged audit events. It is safe
// for concurrent use.
type Spool struct {
	dir    string
	limits Limits
	log    *slog.Logger
	notify chan struct{}

	mu sync.Mutex
	// fmu guards f too: writers hold mu, and take fmu to replace or close
	// f; Sync holds only fmu.
	fmu     sync.Mutex
	f       *os.File
	ackF    *os.File // ackFile, opened at the first acknowledgement
	meta    meta
	nextSeq uint64
	events  []entry
	bytes   int
	dropped uint64
	// acknowledged events still in the spool file (not yet compacted away)
	ackedEvents int
	ackedBytes  int
}

// Open loads (or creates) the spool in dir. A new spool id is generated when
// the directory has none.
func Open(dir string, limits Limits, log *slog.Logger) (*Spool, error) {
	if limits.MaxEvents <= 0 {
		limits.MaxEvents = DefaultMaxEvents
	}
	if limits.MaxBytes <= 0 {
		limits.MaxBytes = DefaultMaxBytes
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Spool{dir: dir, limits: limits, log: log, notify: make(chan struct{}, 1)}
	data, err := os.ReadFile(filepath.Join(dir, metaFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		var b [16]byte
		rand.Read(b[:])
		s.meta = meta{SpoolID: hex.EncodeToString(b[:])}
		if err := s.writeMeta(s.meta); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("audit spool: %w", err)
	default:
		if err := json.Unmarshal(data, &s.meta); err != nil || s.meta.SpoolID == "" {
			return nil, fmt.Errorf("%w: %s", ErrCorrupt, metaFile)
		}
	}
	// The unsynced acknowledgement, when it survived and its checksum holds.
	if data, err := os.ReadFile(filepath.Join(dir, ackFile)); err == nil {
		if upTo, ok := decodeAck(data); ok && upTo > s.meta.AckedUpTo {
			s.meta.AckedUpTo = upTo
		}
	}
	s.nextSeq = s.meta.AckedUpTo + 1
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.recoverLogged(); err != nil {
		return nil, err
	}
	if err := s.compactLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// load reads the spool file. A line that does not decode (the tail of an
// append cut short by a crash) is skipped.
func (s *Spool) load() error {
	f, err := os.Open(filepath.Join(s.dir, spoolFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var ev protocol.AuditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Seq == 0 {
			s.log.Warn("audit spool: skipping an unreadable line", "bytes", len(sc.Bytes()))
			continue
		}
		if ev.Seq >= s.nextSeq {
			s.nextSeq = ev.Seq + 1
		}
		if ev.Seq <= s.meta.AckedUpTo {
			continue
		}
		s.events = append(s.events, entry{ev: ev, size: len(sc.Bytes()) + 1})
		s.bytes += len(sc.Bytes()) + 1
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	return nil
}

// recoverLogged takes back the events of the state log (activations and
// deactivations, made durable there) that the spool file lost in a crash:
// those not acknowledged and not in the file. The compaction at the end of
// Open then writes them to the spool file with fsync.
func (s *Spool) recoverLogged() error {
	logged, err := state.LoggedEvents(s.dir)
	if err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	have := make(map[uint64]bool, len(s.events))
	for _, e := range s.events {
		have[e.ev.Seq] = true
	}
	added := false
	for _, ev := range logged {
		if ev.Seq >= s.nextSeq {
			s.nextSeq = ev.Seq + 1
		}
		if ev.Seq == 0 || ev.Seq <= s.meta.AckedUpTo || have[ev.Seq] {
			continue
		}
		line, _ := json.Marshal(ev)
		s.events = append(s.events, entry{ev: ev, size: len(line) + 1})
		s.bytes += len(line) + 1
		have[ev.Seq] = true
		added = true
	}
	if added {
		slices.SortFunc(s.events, func(a, b entry) int { return cmp.Compare(a.ev.Seq, b.ev.Seq) })
		s.log.Warn("audit spool: events taken back from the state log", "events", len(s.events))
	}
	return nil
}

// encodeAck returns the acknowledgement record of upTo: fixed size, the
// CRC-32C of the number beside it.
func encodeAck(upTo uint64) []byte {
	n := strconv.FormatUint(upTo, 10)
	b := make([]byte, 0, ackSize)
	b = fmt.Appendf(b, `{"acked_up_to":%s,"crc":"%08x"}`, n, crc32.Checksum([]byte(n), castagnoli))
	for len(b) < ackSize-1 {
		b = append(b, ' ')
	}
	return append(b, '\n')
}

// decodeAck reads an acknowledgement record; ok is false when it does not
// decode or its checksum is wrong (an overwrite torn by a crash). A record
// without a checksum is one of an earlier version, replaced by rename.
func decodeAck(data []byte) (upTo uint64, ok bool) {
	var a struct {
		AckedUpTo json.Number `json:"acked_up_to"`
		CRC       *string     `json:"crc"`
	}
	if json.Unmarshal(data, &a) != nil {
		return 0, false
	}
	upTo, err := strconv.ParseUint(string(a.AckedUpTo), 10, 64)
	if err != nil {
		return 0, false
	}
	if a.CRC != nil && *a.CRC != fmt.Sprintf("%08x", crc32.Checksum([]byte(a.AckedUpTo), castagnoli)) {
		return 0, false
	}
	return upTo, true
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (s *Spool) writeMeta(m meta) error {
	data, _ := json.Marshal(m)
	return state.WriteFileAtomic(filepath.Join(s.dir, metaFile), data, 0o600)
}

// compactLocked makes the acknowledgement durable in the synced meta file,
// then rewrites the spool file without the acknowledged events: a rewritten
// spool never forgets a sequence number the meta file does not cover.
func (s *Spool) compactLocked() error {
	if err := s.writeMeta(s.meta); err != nil {
		return err
	}
	return s.rewrite()
}

// rewrite replaces the spool file with the events held in memory and
// reopens it for appending. Called with mu held (or before s is shared).
func (s *Spool) rewrite() error {
	var buf bytes.Buffer
	for _, e := range s.events {
		line, _ := json.Marshal(e.ev)
		buf.Write(line)
		buf.WriteByte('\n')
	}
	path := filepath.Join(s.dir, spoolFile)
	if err := state.WriteFileAtomic(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	s.ackedEvents, s.ackedBytes = 0, 0
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f != nil {
		s.f.Close()
	}
	s.f = f
	if err != nil {
		s.f = nil
		return fmt.Errorf("audit spool: %w", err)
	}
	return nil
}

// ID returns the spool id: (ID, Seq) is unique.
func (s *Spool) ID() string { return s.meta.SpoolID }

// Notify receives a value whenever events have been recorded.
func (s *Spool) Notify() <-chan struct{} { return s.notify }

// Len returns the number of unacknowledged events.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.events)
}

// Dropped returns how many unacknowledged events were dropped because the
// spool was full.
func (s *Spool) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Record numbers ev, appends it durably and logs it. The returned event
// carries its sequence number. An error means the event could not be made
// durable; it is still queued in memory for sending.
func (s *Spool) Record(ev protocol.AuditEvent) (protocol.AuditEvent, error) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	s.mu.Lock()
	ev.Seq = s.nextSeq
	line := s.queueLocked(ev)
	var err error
	if s.f == nil {
		err = errors.New("audit spool: file not open")
	} else if _, err = s.f.Write(line); err == nil {
		err = s.f.Sync()
	}
	s.mu.Unlock()
	s.logged(ev)
	if err != nil {
		return ev, fmt.Errorf("audit spool: append: %w", err)
	}
	return ev, nil
}

// RecordWith numbers ev and calls persist with it, which makes it durable
// (the state record of an activation holds it); only when persist succeeds
// is the event queued and appended to the spool file — without fsync: after
// a crash Open takes it back from where persist put it. On an error nothing
// is recorded and the sequence number is not used.
func (s *Spool) RecordWith(ev protocol.AuditEvent, persist func(protocol.AuditEvent) error) (protocol.AuditEvent, error) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	s.mu.Lock()
	ev.Seq = s.nextSeq
	if err := persist(ev); err != nil {
		s.mu.Unlock()
		return ev, err
	}
	line := s.queueLocked(ev)
	if s.f != nil {
		s.f.Write(line)
	}
	s.mu.Unlock()
	s.logged(ev)
	return ev, nil
}

// queueLocked queues ev (numbered by the caller with nextSeq, which it
// moves on), making room for it when the spool is full, and returns its
// line for the spool file.
func (s *Spool) queueLocked(ev protocol.AuditEvent) []byte {
	s.nextSeq++
	line, _ := json.Marshal(ev)
	line = append(line, '\n')
	if len(s.events)+1 > s.limits.MaxEvents || s.bytes+len(line) > s.limits.MaxBytes {
		s.makeRoomLocked(len(line))
	}
	s.events = append(s.events, entry{ev: ev, size: len(line)})
	s.bytes += len(line)
	return line
}

// Sync makes every event appended to the spool file durable. It takes only
// the file's lock, so persist functions of RecordWith may call it (the state
// log syncs the spool before it drops records).
func (s *Spool) Sync() error {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f == nil {
		return errors.New("audit spool: file not open")
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("audit spool: fsync: %w", err)
	}
	return nil
}

func (s *Spool) makeRoomLocked(need int) {
	drop := max(len(s.events)/10, 1)
	for drop < len(s.events) && s.bytes-sumSize(s.events[:drop])+need > s.limits.MaxBytes {
		drop++
	}
	drop = min(drop, len(s.events))
	first, last := uint64(0), uint64(0)
	if drop > 0 {
		first, last = s.events[0].ev.Seq, s.events[drop-1].ev.Seq
	}
	s.bytes -= sumSize(s.events[:drop])
	s.events = append([]entry(nil), s.events[drop:]...)
	s.dropped += uint64(drop)
	s.log.Error("audit spool full: dropped the oldest unacknowledged events",
		"dropped", drop, "first_seq", first, "last_seq", last,
		"max_events", s.limits.MaxEvents, "max_bytes", s.limits.MaxBytes)
	if err := s.compactLocked(); err != nil {
		s.log.Error("audit spool: compaction failed", "err", err)
	}
}

// logged logs a recorded event and wakes the delivery.
func (s *Spool) logged(ev protocol.AuditEvent) {
	s.log.Info("audit", "seq", ev.Seq, "type", ev.Type, "persona", ev.Persona, "command", ev.Command,
		"route", ev.Route, "result", ev.Result, "activation_id", ev.ActivationID, "actor", ev.Actor, "detail", ev.Detail)
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func sumSize(es []entry) int {
	n := 0
	for _, e := range es {
		n += e.size
	}
	return n
}

// Pending returns up to max of the oldest unacknowledged events.
func (s *Spool) Pending(max int) []protocol.AuditEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(max, len(s.events))
	out := make([]protocol.AuditEvent, n)
	for i := range n {
		out[i] = s.events[i].ev
	}
	return out
}

// Ack drops every event up to and including upTo. The acknowledgement is
// written over the previous one (in place, without fsync) before the events
// leave memory; the spool file is compacted, after a synced write of the
// acknowledgement, once the acknowledged prefix is large.
func (s *Spool) Ack(upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	upTo = min(upTo, s.nextSeq-1)
	if upTo <= s.meta.AckedUpTo {
		return nil
	}
	if err := s.writeAck(upTo); err != nil {
		return fmt.Errorf("audit spool: ack: %w", err)
	}
	s.meta.AckedUpTo = upTo
	i := 0
	for i < len(s.events) && s.events[i].ev.Seq <= upTo {
		s.bytes -= s.events[i].size
		s.ackedBytes += s.events[i].size
		i++
	}
	if i == 0 {
		return nil
	}
	s.ackedEvents += i
	// Slicing, not copying what is left: append reallocates (copying
	// only the live events) once the array's end is reached.
	clear(s.events[:i])
	s.events = s.events[i:]
	if s.ackedEvents < compactEvents && s.ackedBytes < compactBytes {
		return nil
	}
	return s.compactLocked()
}

// writeAck overwrites the acknowledgement record. Called with mu held.
func (s *Spool) writeAck(upTo uint64) error {
	if s.ackF == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, ackFile), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return err
		}
		// A record of an earlier version (replaced by rename) may be
		// shorter or longer.
		if err := f.Truncate(ackSize); err != nil {
			f.Close()
			return err
		}
		s.ackF = f
	}
	_, err := s.ackF.WriteAt(encodeAck(upTo), 0)
	return err
}

// Close closes the spool file.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ackF != nil {
		s.ackF.Close()
		s.ackF = nil
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
