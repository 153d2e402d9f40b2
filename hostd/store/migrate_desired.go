package store

import (
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// migrateDesired (schema 1→2) gives every instance the host has a record of
// a desired state: what the record says it holds (a persona at its
// revision, or none), set by adoption. Without it, an upgraded host would
// take a VM it has long known bare for a new one and impose the default
// persona on it. Personas gain an optional rollout field that old records
// read back without. An instance that already has a desired state (a run
// cut short and started again) keeps it.
func migrateDesired(m *migrator) error {
	const batch = 256
	var from []byte = []byte(prefixInstance)
	for {
		var todo []InstanceRecord
		var next []byte
		err := m.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64, Prefix: []byte(prefixInstance)})
			defer it.Close()
			for it.Seek(from); it.Valid(); it.Next() {
				if len(todo) >= batch {
					next = it.Item().KeyCopy(nil)
					return nil
				}
				var rec InstanceRecord
				if err := it.Item().Value(func(v []byte) error { return decodeInstance(v, &rec) }); err != nil {
					return err
				}
				_, err := txn.Get(desiredKey(rec.Instance))
				switch {
				case err == nil:
					continue
				case !errors.Is(err, badger.ErrKeyNotFound):
					return err
				}
				todo = append(todo, rec)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if len(todo) > 0 {
			err = m.db.Update(func(txn *badger.Txn) error {
				for _, rec := range todo {
					b, err := encodeDesired(adoptedDesired(rec))
					if err != nil {
						return err
					}
					if err := txn.Set(desiredKey(rec.Instance), b); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			m.log.Info("desired state adopted from instance records", "instances", len(todo))
		}
		if next == nil {
			return nil
		}
		from = next
	}
}

// adoptedDesired is the desired state of an instance known by its record.
func adoptedDesired(rec InstanceRecord) *DesiredState {
	d := &DesiredState{Instance: rec.Instance, SetBy: DesiredByAdoption, UpdatedAt: rec.UpdatedAt}
	if rec.Persona != nil {
		d.Persona, d.Revision = rec.Persona, rec.Revision
	}
	return d
}
