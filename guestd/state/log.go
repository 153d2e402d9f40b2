package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vmpersona/vmpersona/protocol"
)

// The active persona lives in a log of checksummed, sequence-numbered
// records (logFile). Each record holds a whole state — the active persona or
// none — and, for an activation or a deactivation, its audit event, so that
// an activation costs one durable write: the record is written over the
// zeroed region after the newest record, then fdatasync. The file's blocks
// were written (zeros) and synced when it was made, so that write changes
// no file size or extent: the cheapest durable write a file system has.
//
// At start the records are read from the beginning; the last one whose
// magic, length, checksum and sequence (one more than the one before) are
// right wins. A record cut short by a crash, or garbled, fails its checksum
// and ends the scan: the one before wins, and the next write goes over it.
// When a record does not fit in the file, the file is replaced (temporary
// file, fsync, rename, directory fsync) by a new zeroed one that starts with
// that record.
//
// Layout of a record (little endian): magic "VPS1", payload length u32,
// sequence u64, CRC-32C u32 of (length, sequence, payload), 4 zero bytes,
// then the payload: compact JSON {"version":2,"active":…,"event":…}.
const (
	logFile    = "state.log"
	headerSize = 24
	// minRegion is the smallest size of a log file: about 2,000 records of
	// an empty persona, 60 of a persona with 100 variables and 50 inline
	// overrides.
	minRegion = 1 << 20
	// firstRegion is the smallest size of the first log file made in a
	// state directory (about 100 records of an empty persona).
	firstRegion = 64 << 10
	// maxRecord bounds a record's payload (a persona's text is at most
	// 16 MiB; its JSON a little more).
	maxRecord = 64 << 20
)

var (
	logMagic = [4]byte{'V', 'P', 'S', '1'}
	castagn  = crc32.MakeTable(crc32.Castagnoli)
)

// recordVersion is the layout version of a record's payload (1 was
// active.json's).
const recordVersion = 2

type record struct {
	Version int                   `json:"version"`
	Active  *protocol.ActiveState `json:"active"`
	Event   *protocol.AuditEvent  `json:"event,omitempty"`
}

type scanned struct {
	seq uint64
	rec record
}

// scanLog returns the valid records of a log file, oldest first, and the
// offset where the next record goes.
func scanLog(data []byte) (recs []scanned, end int) {
	var prev uint64
	for off := 0; off+headerSize <= len(data); {
		h := data[off : off+headerSize]
		if [4]byte(h[0:4]) != logMagic {
			break
		}
		n := int(binary.LittleEndian.Uint32(h[4:8]))
		seq := binary.LittleEndian.Uint64(h[8:16])
		if n > maxRecord || off+headerSize+n > len(data) {
			break
		}
		payload := data[off+headerSize : off+headerSize+n]
		if crc32.Update(crc32.Checksum(h[4:16], castagn), castagn, payload) != binary.LittleEndian.Uint32(h[16:20]) {
			break
		}
		if len(recs) > 0 && seq != prev+1 {
			break
		}
		var r record
		if json.Unmarshal(payload, &r) != nil || r.Version != recordVersion {
			break
		}
		recs = append(recs, scanned{seq: seq, rec: r})
		prev = seq
		off += headerSize + n
		end = off
	}
	return recs, end
}

// encodeRecord frames a record with sequence seq.
func encodeRecord(seq uint64, r record) ([]byte, error) {
	payload, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(payload) > maxRecord {
		return nil, fmt.Errorf("state record of %d bytes, at most %d", len(payload), maxRecord)
	}
	buf := make([]byte, headerSize+len(payload))
	copy(buf[0:4], logMagic[:])
	binary.LittleEndian.PutUint32(buf[4:8], uint32(len(payload)))
	binary.LittleEndian.PutUint64(buf[8:16], seq)
	copy(buf[headerSize:], payload)
	binary.LittleEndian.PutUint32(buf[16:20], crc32.Update(crc32.Checksum(buf[4:16], castagn), castagn, payload))
	return buf, nil
}

// LoggedEvents returns the audit events held by the valid records of the
// state log in dir, oldest first (none when there is no log). The audit
// spool takes back from here the events whose own copy a crash lost.
func LoggedEvents(dir string) ([]protocol.AuditEvent, error) {
	data, err := os.ReadFile(filepath.Join(dir, logFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state log: %w", err)
	}
	recs, _ := scanLog(data)
	var evs []protocol.AuditEvent
	for _, r := range recs {
		if r.rec.Event != nil {
			evs = append(evs, *r.rec.Event)
		}
	}
	return evs, nil
}

// Store keeps the active persona in a state directory.
type Store struct {
	dir string

	mu      sync.Mutex
	f       *os.File // the log, nil before the first record (or after a failed replacement)
	size    int      // the log file's size
	end     int      // where the next record goes
	seq     uint64   // sequence of the newest record, 0 for none
	newest  *record  // the newest valid record, nil for none
	legacy  bool     // active.json (layout 1) is still there
	closed  bool
	beforeR func() error
}

// Open returns the store in dir, creating the directory (mode 0700) when it
// does not exist, and reads the state log (or, on a guest upgraded from a
// version that kept active.json, that file: it is removed once the first
// record is durable).
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	removeStaleTemps(dir)
	s := &Store{dir: dir}
	if _, err := os.Stat(filepath.Join(dir, activeFile)); err == nil {
		s.legacy = true
	}
	f, err := os.OpenFile(filepath.Join(dir, logFile), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("state log: %w", err)
	}
	data := make([]byte, fi.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("state log: %w", err)
	}
	recs, end := scanLog(data)
	s.f, s.size, s.end = f, len(data), end
	if len(recs) > 0 {
		last := recs[len(recs)-1]
		s.seq, s.newest = last.seq, &last.rec
	}
	return s, nil
}

// Dir returns the state directory.
func (s *Store) Dir() string { return s.dir }

// BeforeReplace sets a function called before the log file is replaced by a
// new one that holds only the newest record: the events of the older records
// must be durable elsewhere by then (the audit spool syncs its file).
func (s *Store) BeforeReplace(f func() error) {
	s.mu.Lock()
	s.beforeR = f
	s.mu.Unlock()
}

type activeDoc struct {
	Version int                   `json:"version"`
	Active  *protocol.ActiveState `json:"active"`
}

// Load returns the persisted active persona, nil when none is active (also
// when nothing has ever been written).
func (s *Store) Load() (*protocol.ActiveState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.newest != nil {
		return s.newest.Active, nil
	}
	if s.f != nil && s.size > 0 {
		// A log file is only ever made holding a synced record: without a
		// valid one it is damaged, and the guest does not guess.
		return nil, fmt.Errorf("%w: %s holds no valid record", ErrCorrupt, logFile)
	}
	return s.loadLegacy()
}

// loadLegacy reads active.json, the active persona file of earlier versions.
func (s *Store) loadLegacy() (*protocol.ActiveState, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, activeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load active persona: %w", err)
	}
	var doc activeDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, activeFile, err)
	}
	if doc.Version != fileVersion {
		return nil, fmt.Errorf("%w: %s: layout version %d, want %d", ErrCorrupt, activeFile, doc.Version, fileVersion)
	}
	return doc.Active, nil
}

// Save persists the active persona (nil for none) durably.
func (s *Store) Save(a *protocol.ActiveState) error { return s.Commit(a, nil) }

// ErrClosed reports a write to a closed store.
var ErrClosed = errors.New("state: store closed")

// Commit persists the active persona (nil for none) and, when ev is not nil,
// the audit event of the change, in one record and one durable write. When
// it returns nil the record survives a crash; when it returns an error the
// previous record is still the newest after a restart.
func (s *Store) Commit(a *protocol.ActiveState, ev *protocol.AuditEvent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	r := record{Version: recordVersion, Active: a, Event: ev}
	buf, err := encodeRecord(s.seq+1, r)
	if err != nil {
		return fmt.Errorf("save active persona: %w", err)
	}
	if s.f == nil || s.end+len(buf) > s.size {
		err = s.replace(buf)
	} else {
		err = s.overwrite(buf)
	}
	if err != nil {
		return fmt.Errorf("save active persona: %w", err)
	}
	s.seq++
	s.newest = &r
	if s.legacy {
		// The log now wins over active.json whatever happens to it.
		os.Remove(filepath.Join(s.dir, activeFile))
		s.legacy = false
	}
	return nil
}

// overwrite writes buf over the zeroed region at the end of the log and
// makes it durable.
func (s *Store) overwrite(buf []byte) error {
	if _, err := s.f.WriteAt(buf, int64(s.end)); err != nil {
		s.unwrite(len(buf))
		return err
	}
	if err := unix.Fdatasync(int(s.f.Fd())); err != nil {
		s.unwrite(len(buf))
		return fmt.Errorf("fdatasync: %w", err)
	}
	s.end += len(buf)
	return nil
}

// unwrite zeroes what a failed write may have left after the newest record,
// so that the page cache, written back later, does not bring back a record
// the caller was told failed.
func (s *Store) unwrite(n int) {
	s.f.WriteAt(make([]byte, min(n, s.size-s.end)), int64(s.end))
}

// replace makes a new log file holding buf, zeroed to its full size, and
// renames it over the old one (synced: file, rename, directory).
func (s *Store) replace(buf []byte) error {
	if s.f != nil && s.beforeR != nil {
		if err := s.beforeR(); err != nil {
			return err
		}
	}
	size := max(minRegion, 8*len(buf))
	if s.seq == 0 {
		// The first log of a state directory: a guest that activates
		// once (most of a fleet, most days) writes and syncs 64 KiB, not
		// 1 MiB; the first replacement makes a full one.
		size = max(firstRegion, min(minRegion, 16*len(buf)))
	}
	size = (size + 4095) &^ 4095
	data := make([]byte, size)
	copy(data, buf)
	path := filepath.Join(s.dir, logFile)
	if err := WriteFileAtomic(path, data, 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		// The record is durable; the next write replaces the file again.
		if s.f != nil {
			s.f.Close()
		}
		s.f, s.size, s.end = nil, 0, 0
		return nil
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.size, s.end = f, size, len(buf)
	return nil
}

// Close releases the log file; later writes fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
