package store

import (
	"encoding/json"
	"fmt"
)

// migrateAuditOrder (schema 2→3): audit IDs follow the order the host
// stores events in, not the time an event claims, and a guest event keeps
// its own time as guest_time while time is when the host stored it. IDs
// already handed out stay (they sort before every new one: they were made
// from times in the past). A stored guest event gets guest_time = its
// time, which is what the guest claimed; running it again changes nothing.
func migrateAuditOrder(m *migrator) error {
	return m.rewrite(prefixAudit, func(key, v []byte) ([]byte, bool, error) {
		var r auditRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, false, fmt.Errorf("decode: %w", err)
		}
		if r.Source != SourceGuest || !r.GuestTime.IsZero() {
			return nil, false, nil
		}
		r.GuestTime = r.Time
		out, err := json.Marshal(r)
		return out, err == nil, err
	})
}
