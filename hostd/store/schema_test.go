package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func TestSchemaVersionMatchesMigrations(t *testing.T) {
	if SchemaVersion != len(migrations)+1 {
		t.Fatalf("SchemaVersion = %d with %d migrations; it must be len(migrations)+1", SchemaVersion, len(migrations))
	}
}

// rawDB opens dir with Badger alone, for setting up and inspecting stores.
func rawDB(t *testing.T, dir string, fn func(db *badger.DB) error) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := fn(db); err != nil {
		db.Close()
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func schemaOf(t *testing.T, dir string) uint64 {
	t.Helper()
	var v uint64
	rawDB(t, dir, func(db *badger.DB) (err error) {
		var recorded bool
		v, recorded, err = readSchema(db)
		if err == nil && v != 0 && !recorded {
			err = fmt.Errorf("schema version %d is not recorded", v)
		}
		return err
	})
	return v
}

// legacyStore is a store of the first releases: data, no version key.
func legacyStore(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	rawDB(t, dir, func(db *badger.DB) error {
		return db.Update(func(txn *badger.Txn) error { return txn.Set([]byte("t/0"), []byte("v1")) })
	})
	return dir
}

// logLines captures a store's logs.
type logLines struct{ bytes.Buffer }

func (l *logLines) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(&l.Buffer, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func (l *logLines) count(substr string) int { return strings.Count(l.String(), substr) }

// recording returns migrations that append their name to the value of t/0,
// in the transaction they run in.
func recording(names ...string) []migration {
	var out []migration
	for _, name := range names {
		out = append(out, migration{name: name, up: func(m *migrator) error {
			return m.rewrite("t/", func(_, v []byte) ([]byte, bool, error) {
				return append(append(v, ','), name...), true, nil
			})
		}})
	}
	return out
}

func valueOf(t *testing.T, s *Store, key string) string {
	t.Helper()
	var out string
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(key))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		out = string(v)
		return err
	})
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return out
}

func TestSchemaFreshStoreStartsAtCurrentVersion(t *testing.T) {
	dir := t.TempDir()
	var logs logLines
	s, err := Open(dir, Options{Logger: logs.logger(), migrations: recording("a", "b")})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if v := schemaOf(t, dir); v != 3 {
		t.Fatalf("fresh store at version %d, want 3", v)
	}
	if n := logs.count("store schema migrated"); n != 0 {
		t.Fatalf("a fresh store ran %d migrations:\n%s", n, logs.String())
	}
	// And with the real list.
	dir = t.TempDir()
	openAt(t, dir, Options{}).Close()
	if v := schemaOf(t, dir); v != SchemaVersion {
		t.Fatalf("fresh store at version %d, want %d", v, SchemaVersion)
	}
}

// Migrations run once each, in order, from the store's version up, with a
// log line each.
func TestSchemaMigrationsRunInOrder(t *testing.T) {
	dir := legacyStore(t)
	var logs logLines
	s, err := Open(dir, Options{Logger: logs.logger(), migrations: recording("a", "b", "c")})
	if err != nil {
		t.Fatal(err)
	}
	if got := valueOf(t, s, "t/0"); got != "v1,a,b,c" {
		t.Errorf("after migrating: %q, want v1,a,b,c", got)
	}
	s.Close()
	if v := schemaOf(t, dir); v != 4 {
		t.Fatalf("version %d after three migrations from 1, want 4", v)
	}
	for i, want := range []string{"from=1 to=2 migration=a", "from=2 to=3 migration=b", "from=3 to=4 migration=c"} {
		if logs.count(want) != 1 {
			t.Errorf("log line %d (%s) missing:\n%s", i, want, logs.String())
		}
	}

	// Opened again: nothing runs; one more migration runs alone.
	logs.Reset()
	s, err = Open(dir, Options{Logger: logs.logger(), migrations: recording("a", "b", "c", "d")})
	if err != nil {
		t.Fatal(err)
	}
	if got := valueOf(t, s, "t/0"); got != "v1,a,b,c,d" {
		t.Errorf("after the fourth migration: %q, want v1,a,b,c,d", got)
	}
	s.Close()
	if n := logs.count("store schema migrated"); n != 1 {
		t.Errorf("%d migrations ran on reopen, want 1:\n%s", n, logs.String())
	}
}

// A failing migration stops Open with its name; the versions before it are
// kept, and the next Open resumes from there.
func TestSchemaMigrationFailureResumes(t *testing.T) {
	dir := legacyStore(t)
	boom := errors.New("boom")
	migs := recording("a", "b", "c")
	good := migs[1]
	migs[1].up = func(*migrator) error { return boom }
	_, err := Open(dir, Options{Logger: quietLogger(), migrations: migs})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "2→3 (b)") {
		t.Fatalf("Open = %v, want the failure of migration 2→3 (b)", err)
	}
	if v := schemaOf(t, dir); v != 2 {
		t.Fatalf("version %d after a failure in the second migration, want 2", v)
	}
	migs[1] = good
	s := openAt(t, dir, Options{migrations: migs})
	if got := valueOf(t, s, "t/0"); got != "v1,a,b,c" {
		t.Errorf("after resuming: %q, want v1,a,b,c (a ran once)", got)
	}
}

// A store written by a newer version is refused, and left as it is.
func TestSchemaNewerStoreRefused(t *testing.T) {
	dir := t.TempDir()
	rawDB(t, dir, func(db *badger.DB) error {
		return db.Update(func(txn *badger.Txn) error {
			return txn.Set([]byte(keySchema), binary.BigEndian.AppendUint64(nil, SchemaVersion+1))
		})
	})
	_, err := Open(dir, Options{Logger: quietLogger()})
	var se *SchemaError
	if !errors.Is(err, ErrSchemaTooNew) || !errors.As(err, &se) || se.Found != SchemaVersion+1 || se.Known != SchemaVersion {
		t.Fatalf("Open = %v, want a *SchemaError (found %d, known %d)", err, SchemaVersion+1, SchemaVersion)
	}
	for _, want := range []string{dir, fmt.Sprintf("schema version %d", SchemaVersion+1), "newer vmpersona-hostd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if v := schemaOf(t, dir); v != SchemaVersion+1 { // also: Badger was closed
		t.Fatalf("refused store now at version %d", v)
	}
}

// rewrite walks more values than one transaction holds, keeps each entry's
// expiry, and leaves other prefixes alone.
func TestMigratorRewrite(t *testing.T) {
	dir := t.TempDir()
	const n = 2*txnBudgetEvents + 7
	expires := uint64(time.Now().Add(time.Hour).Unix())
	rawDB(t, dir, func(db *badger.DB) error {
		wb := db.NewWriteBatch()
		for i := range n {
			e := badger.NewEntry(fmt.Appendf(nil, "t/%05d", i), []byte("old"))
			if i%2 == 0 {
				e.ExpiresAt = expires
			}
			if err := wb.SetEntry(e); err != nil {
				return err
			}
		}
		if err := wb.Set([]byte("u/0"), []byte("old")); err != nil {
			return err
		}
		return wb.Flush()
	})
	rawDB(t, dir, func(db *badger.DB) error {
		m := &migrator{db: db, log: quietLogger()}
		calls := 0
		up := func(_, v []byte) ([]byte, bool, error) {
			calls++
			if string(v) == "new" {
				return nil, false, nil
			}
			return []byte("new"), true, nil
		}
		if err := m.rewrite("t/", up); err != nil {
			return err
		}
		if calls != n {
			return fmt.Errorf("rewrite saw %d values, want %d", calls, n)
		}
		return db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.DefaultIteratorOptions)
			defer it.Close()
			seen := 0
			for it.Rewind(); it.Valid(); it.Next() {
				item := it.Item()
				v, _ := item.ValueCopy(nil)
				k := string(item.Key())
				switch {
				case k == "u/0":
					if string(v) != "old" {
						return fmt.Errorf("u/0 rewritten")
					}
				case strings.HasPrefix(k, "t/"):
					seen++
					var i int
					fmt.Sscanf(k, "t/%d", &i)
					want := uint64(0)
					if i%2 == 0 {
						want = expires
					}
					if string(v) != "new" || item.ExpiresAt() != want {
						return fmt.Errorf("%s = %q expiring %d, want new expiring %d", k, v, item.ExpiresAt(), want)
					}
				}
			}
			if seen != n {
				return fmt.Errorf("%d values after rewrite, want %d", seen, n)
			}
			return nil
		})
	})
}
