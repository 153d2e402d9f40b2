package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Schema versions.
//
// keySchema holds the version of the on-disk format (8 bytes, big-endian).
// Version 1 is the format of the first releases, which wrote no version: a
// store with data and no key is at version 1. Open brings an older store up
// to SchemaVersion by running the migrations in order, one log line each,
// and refuses a store written by a newer version (ErrSchemaTooNew) rather
// than misread it.
//
// How to change what the store keeps (a field of a record in records.go, a
// key's layout, an encoding):
//
//  1. Change the record types in records.go and their conversions.
//  2. Append a migration to migrations below. It takes every stored value
//     of the previous version to the new one (m.rewrite does the walking,
//     in bounded transactions, keeping audit entries' expiry) and must be
//     safe to run again over values it has already rewritten: a crash in
//     the middle runs it again from the start at the next Open. A change
//     that old values read back from unchanged (a new optional field) still
//     takes a migration, one that rewrites nothing: the version is what
//     tells an older daemon that it must not open the store.
//  3. Keep testdata/schema1/ as it is (it is what version 1 stores hold) and
//     add testdata/schema<N>/ with the records encoded at the new version;
//     TestGoldenEncoding compares the current encoding with the newest
//     directory, TestGoldenMigration opens every older one.
const keySchema = "m/schema"

// SchemaVersion is the on-disk format this build writes: one more than
// len(migrations).
const SchemaVersion = 4

// ErrSchemaTooNew: the store was written by a newer version of the daemon.
// Wrapped in *SchemaError.
var ErrSchemaTooNew = errors.New("store written by a newer version")

// SchemaError refuses a store whose schema version is newer than this build
// knows.
type SchemaError struct {
	Dir          string
	Found, Known uint64
}

func (e *SchemaError) Error() string {
	return fmt.Sprintf("%s: %s is at schema version %d; this vmpersona-hostd knows versions up to %d: run a newer vmpersona-hostd, or restore a backup of the data directory taken before the upgrade",
		ErrSchemaTooNew, e.Dir, e.Found, e.Known)
}

func (e *SchemaError) Unwrap() error { return ErrSchemaTooNew }

// migration takes the store from one schema version to the next.
type migration struct {
	name string
	up   func(m *migrator) error
}

// migrations in order: migrations[i] takes a store from version i+1 to i+2.
var migrations = []migration{
	{"desired state: every recorded instance desires what it holds; personas may carry rollout", migrateDesired},
	{"audit: IDs in ingestion order; guest events keep their own time as guest_time", migrateAuditOrder},
	// Version 4 adds the personas' secret_variables. Old values read back
	// unchanged; the version keeps an older daemon, which would drop the
	// field and write secret values into guests' profile files, from
	// opening the store.
	{"personas may carry secret_variables", func(*migrator) error { return nil }},
}

// migrator is what a migration works with.
type migrator struct {
	db  *badger.DB
	log *slog.Logger
}

// rewrite passes every value under prefix to fn and stores what it returns
// when changed is true (the key and its expiry stay). It works in
// transactions of bounded size, so a migration of a large audit log never
// exceeds Badger's transaction limit; each is committed before the next.
func (m *migrator) rewrite(prefix string, fn func(key, value []byte) (out []byte, changed bool, err error)) error {
	type change struct {
		key, value []byte
		expires    uint64
	}
	var from []byte = []byte(prefix)
	for {
		var batch []change
		var next []byte
		err := m.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(prefix)})
			defer it.Close()
			size := 0
			for it.Seek(from); it.Valid(); it.Next() {
				item := it.Item()
				if size >= txnBudgetBytes/2 || len(batch) >= txnBudgetEvents {
					next = item.KeyCopy(nil)
					return nil
				}
				v, err := item.ValueCopy(nil)
				if err != nil {
					return err
				}
				out, changed, err := fn(item.Key(), v)
				if err != nil {
					return fmt.Errorf("%q: %w", item.Key(), err)
				}
				if changed {
					batch = append(batch, change{item.KeyCopy(nil), out, item.ExpiresAt()})
					size += len(item.Key()) + len(out) + 64
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(batch) > 0 {
			err = m.db.Update(func(txn *badger.Txn) error {
				for _, c := range batch {
					e := badger.NewEntry(c.key, c.value)
					if c.expires != 0 {
						e.ExpiresAt = c.expires
					}
					if err := txn.SetEntry(e); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		if next == nil {
			return nil
		}
		from = next
	}
}

// readSchema returns the store's schema version (0 for an empty store) and
// whether the store records it.
func readSchema(db *badger.DB) (v uint64, recorded bool, err error) {
	err = db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keySchema))
		if err == nil {
			b, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if len(b) != 8 {
				return fmt.Errorf("schema version is %d bytes long, want 8", len(b))
			}
			v, recorded = binary.BigEndian.Uint64(b), true
			return nil
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		if it.Rewind(); it.Valid() {
			v = 1 // data written before the version was kept
		}
		return nil
	})
	return v, recorded, err
}

func writeSchema(db *badger.DB, v uint64) error {
	return db.Update(func(txn *badger.Txn) error {
		return txn.Set([]byte(keySchema), binary.BigEndian.AppendUint64(nil, v))
	})
}

// migrate brings the store in dir to the version migs lead to, or refuses
// it when it is newer.
func migrate(db *badger.DB, dir string, migs []migration, log *slog.Logger) error {
	known := uint64(len(migs) + 1)
	cur, recorded, err := readSchema(db)
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	switch {
	case cur == 0:
		// An empty store starts at the current version: there is nothing
		// to migrate.
		return writeSchema(db, known)
	case cur > known:
		return &SchemaError{Dir: dir, Found: cur, Known: known}
	case !recorded:
		// Written by a release that kept no version: from now on it does.
		if err := writeSchema(db, cur); err != nil {
			return fmt.Errorf("record schema version %d: %w", cur, err)
		}
	}
	m := &migrator{db: db, log: log}
	for v := cur; v < known; v++ {
		mig := migs[v-1]
		start := time.Now()
		if err := mig.up(m); err != nil {
			return fmt.Errorf("migration %d→%d (%s): %w", v, v+1, mig.name, err)
		}
		if err := writeSchema(db, v+1); err != nil {
			return fmt.Errorf("migration %d→%d (%s): record the version: %w", v, v+1, mig.name, err)
		}
		log.Info("store schema migrated", "from", v, "to", v+1, "migration", mig.name, "duration", time.Since(start))
	}
	return nil
}
