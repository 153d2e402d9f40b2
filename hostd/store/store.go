// Package store keeps the host daemon's state in Badger: persona
// definitions, the persona each instance last confirmed, and the audit log.
//
// Every write is a single Badger transaction (read, check, write; retried
// on a conflict) committed with SyncWrites, so a write that has returned
// survives a crash of the process or the machine.
//
// Key layout (one byte-ordered keyspace):
//
//	p/<name>                         persona (JSON personaRecord)
//	m/default                        name of the default persona
//	m/auditseq                       Badger sequence for audit IDs
//	m/schema                         schema version of the data (schema.go)
//	i/<instance>                     instanceRecord (JSON): what the guest last confirmed
//	d/<instance>                     desiredRecord (JSON): what the instance should run
//	a/<id>                           auditRecord (JSON); id sorts by time, then insertion
//	g/<instance>\x00<spool>\x00<seq> audit ID of an ingested guest event (dedup)
//	x/<i|p|t>/<value>\x00<id>       audit index by instance, persona, type (no value)
package store

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/errdefs"
)

// Sentinel errors. Callers match them with errors.Is.
var (
	ErrNotFound           = errdefs.New(errdefs.ErrNotFound, "not-found", "not found")
	ErrExists             = errdefs.New(errdefs.ErrAlreadyExists, "exists", "already exists")
	ErrDefaultConflict    = errdefs.New(errdefs.ErrConflict, "default-conflict", "another persona is the default") // wrapped in *DefaultConflictError{Current string}
	ErrPreconditionFailed = errdefs.New(errdefs.ErrPreconditionFailed, "precondition-failed", "revision does not match")
	ErrInUse              = errdefs.New(errdefs.ErrConflict, "persona-in-use", "persona is active on instances") // wrapped in *InUseError{Instances []string}
	// ErrInvalidArgument: an instance name, spool ID or audit cursor the
	// store cannot use as a key.
	ErrInvalidArgument = errdefs.New(errdefs.ErrInvalidArgument, "bad-request", "invalid argument")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store closed")
)

// DefaultConflictError refuses a second default persona; Current names the
// persona that is the default now.
type DefaultConflictError struct{ Current string }

func (e *DefaultConflictError) Error() string {
	return fmt.Sprintf("persona %q is already the default persona; clear its default_persona first", e.Current)
}

// Details names the current default.
func (e *DefaultConflictError) Details() map[string]any {
	return map[string]any{"current_default": e.Current}
}

func (e *DefaultConflictError) Unwrap() error { return ErrDefaultConflict }

// InUseError refuses to delete a persona that instances hold; Instances
// names them, sorted.
type InUseError struct {
	Persona   string
	Instances []string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("persona %q is active on %s; deactivate it there or delete with ?force=true", e.Persona, strings.Join(e.Instances, ", "))
}

// Details names the instances holding the persona.
func (e *InUseError) Details() map[string]any { return map[string]any{"instances": e.Instances} }

func (e *InUseError) Unwrap() error { return ErrInUse }

// Options configure Open.
type Options struct {
	// Logger receives the store's and Badger's logs; nil means slog.Default().
	Logger *slog.Logger
	// AuditRetention is how long audit events (and guest dedup keys) are
	// kept after they are written; 0 keeps them forever. Badger expires
	// entries with a one-second granularity.
	AuditRetention time.Duration
	// MinFreeBytes is the free-space watermark of the data directory's file
	// system: under it writes fail with ErrStorageLow (reads go on). 0
	// disables the check.
	MinFreeBytes uint64
	// OnStorageCheck, when set, receives each free-space measurement.
	OnStorageCheck func(low bool, free uint64)

	// migrations replaces the package's list (tests); nil means migrations.
	migrations []migration
}

// Store is the host daemon's Badger store. Its methods are safe for
// concurrent use.
type Store struct {
	db        *badger.DB
	log       *slog.Logger
	retention time.Duration
	seq       *badger.Sequence
	now       func() time.Time
	clock     ingestClock // audit IDs (audit_guest.go)
	disk      *diskGuard  // free-space watermark (diskspace.go)
	diskDone  chan struct{}

	// personaMu serialises persona writes so that personas (what reads
	// see) takes them in commit order; see personaCache.
	personaMu sync.Mutex
	personas  atomic.Pointer[personaCache]
	closed    atomic.Bool // set by Close before Badger closes
	// desired serves desired states from memory; desiredMu orders the
	// writes of each instance (desired.go).
	desired   desiredCache
	desiredMu [desiredStripes]sync.Mutex

	stop     chan struct{}
	gcDone   chan struct{}
	closeMu  sync.Mutex
	isClosed bool
}

const (
	prefixPersona  = "p/"
	prefixInstance = "i/"
	prefixDesired  = "d/"
	prefixAudit    = "a/"
	prefixDedup    = "g/"
	prefixIndex    = "x/"
	keyDefault     = "m/default"
	keyAuditSeq    = "m/auditseq"

	maxRetries      = 64
	gcInterval      = 10 * time.Minute
	maxInstanceName = 1024
	maxSpoolID      = 256
)

// Open opens (creating if needed) the store in dir. Only one process may
// have a directory open at a time (Badger holds a lock file).
func Open(dir string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.AuditRetention < 0 {
		return nil, fmt.Errorf("store: negative audit retention: %w", ErrInvalidArgument)
	}
	bopts := badger.DefaultOptions(dir).
		WithSyncWrites(true).
		WithLogger(badgerLogger{log.With("lib", "badger")}).
		WithNumVersionsToKeep(1).
		// Small memtables bound the memory a flood of audit events can
		// pin (Badger keeps NumMemtables of them, plus flush buffers).
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithValueThreshold(64 << 10). // large personas go to the value log
		WithValueLogFileSize(256 << 20).
		WithBlockCacheSize(32 << 20).
		WithIndexCacheSize(16 << 20).
		WithNumCompactors(2).
		WithCompactL0OnClose(true).
		WithDetectConflicts(true)
	if err := releaseReserveForOpen(dir, opts.MinFreeBytes, log); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	if err := removeEmptyLogs(dir, log); err != nil {
		return nil, err
	}
	db, err := badger.Open(bopts)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", dir, err)
	}
	migs := opts.migrations
	if migs == nil {
		migs = migrations
	}
	if err := migrate(db, dir, migs, log); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	seq, err := db.GetSequence([]byte(keyAuditSeq), 1000)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: audit sequence: %w", err)
	}
	s := &Store{
		db:        db,
		log:       log,
		retention: opts.AuditRetention,
		seq:       seq,
		now:       func() time.Time { return time.Now().UTC() },
		stop:      make(chan struct{}),
		gcDone:    make(chan struct{}),
		disk:      &diskGuard{dir: dir, min: opts.MinFreeBytes, onCheck: opts.OnStorageCheck, log: log},
		diskDone:  make(chan struct{}),
	}
	s.disk.check(true)
	c, err := s.loadPersonas()
	if err != nil {
		seq.Release()
		db.Close()
		return nil, fmt.Errorf("store: load personas: %w", err)
	}
	s.personas.Store(c)
	if err := s.loadDesired(); err != nil {
		seq.Release()
		db.Close()
		return nil, fmt.Errorf("store: load desired states: %w", err)
	}
	go s.gcLoop()
	go s.disk.loop(s.stop, s.diskDone)
	return s, nil
}

// Close stops background work and closes Badger. Further calls return nil.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.isClosed {
		return nil
	}
	s.isClosed = true
	s.closed.Store(true)
	close(s.stop)
	<-s.gcDone
	<-s.diskDone
	var errs []error
	if err := s.seq.Release(); err != nil {
		errs = append(errs, fmt.Errorf("store: release audit sequence: %w", err))
	}
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("store: close: %w", err))
	}
	return errors.Join(errs...)
}

// gcLoop reclaims value-log space now and then (expired audit events,
// replaced personas).
func (s *Store) gcLoop() {
	defer close(s.gcDone)
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			for s.db.RunValueLogGC(0.5) == nil {
				select {
				case <-s.stop:
					return
				default:
				}
			}
		}
	}
}

// update runs fn in a read-write transaction and commits it, retrying the
// whole of it when Badger reports a conflict with a concurrent writer.
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	var err error
	for range maxRetries {
		err = s.guardedUpdate(fn)
		if !errors.Is(err, badger.ErrConflict) {
			break
		}
	}
	switch {
	case errors.Is(err, badger.ErrDBClosed):
		return ErrClosed
	case errors.Is(err, badger.ErrConflict):
		return fmt.Errorf("store: still conflicting after %d attempts: %w", maxRetries, err)
	}
	return err
}

func (s *Store) view(fn func(txn *badger.Txn) error) error {
	err := s.db.View(fn)
	if errors.Is(err, badger.ErrDBClosed) {
		return ErrClosed
	}
	return err
}

// Ready reports whether the store answers reads and takes writes (nil), is
// closed (ErrClosed), or refuses writes for want of disk space
// (ErrStorageLow, saying how much is free): for a readiness probe.
func (s *Store) Ready() error {
	if err := s.view(func(*badger.Txn) error { return nil }); err != nil {
		return err
	}
	return s.disk.refuse()
}

// badgerLogger hands Badger's logs to slog. Badger's informational lines
// (tables opened, compactions, value-log replay) are internal bookkeeping:
// they go out at debug level.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(trimMsg(f, a)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(trimMsg(f, a)) }
func (b badgerLogger) Infof(f string, a ...any)    { b.l.Debug(trimMsg(f, a)) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.l.Debug(trimMsg(f, a)) }

func trimMsg(f string, a []any) string { return strings.TrimSpace(fmt.Sprintf(f, a...)) }
