package store

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/errdefs"

	"github.com/vmpersona/vmpersona/hostd/assignment"
)

// Assignments (selector → persona, with a priority) live under s/<name>. On
// one host they are written here; in fleet mode they are the fleet's,
// copied here by ApplyReplica like the personas. Adding them needed no
// schema version: older stores simply have none.

const prefixAssignment = "s/"

func assignmentKey(name string) []byte { return []byte(prefixAssignment + name) }

// storedAssignment is an assignment as kept: the request that wrote it is
// kept too, so that a retried write is recognised.
type storedAssignment struct {
	assignment.Assignment
	RequestID string `json:"request_id,omitempty"`
}

func readAssignment(txn *badger.Txn, name string) (storedAssignment, bool, error) {
	var sa storedAssignment
	item, err := txn.Get(assignmentKey(name))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return sa, false, nil
	}
	if err != nil {
		return sa, false, err
	}
	err = item.Value(func(v []byte) error { return json.Unmarshal(v, &sa) })
	return sa, err == nil, err
}

func writeAssignment(txn *badger.Txn, sa storedAssignment) error {
	b, err := json.Marshal(sa)
	if err != nil {
		return err
	}
	return txn.Set(assignmentKey(sa.Name), b)
}

// GetAssignment reads one assignment.
func (s *Store) GetAssignment(name string) (assignment.Assignment, error) {
	var out assignment.Assignment
	err := s.view(func(txn *badger.Txn) error {
		sa, ok, err := readAssignment(txn, name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("assignment %q: %w", name, ErrNotFound)
		}
		out = sa.Assignment
		return nil
	})
	return out, err
}

// ListAssignments returns every assignment, sorted by name (never nil).
func (s *Store) ListAssignments() ([]assignment.Assignment, error) {
	out := []assignment.Assignment{}
	err := s.view(func(txn *badger.Txn) error {
		return eachValue(txn, prefixAssignment, func(name string, v []byte) error {
			var sa storedAssignment
			if err := json.Unmarshal(v, &sa); err != nil {
				return fmt.Errorf("assignment %s%s: %w", prefixAssignment, name, err)
			}
			out = append(out, sa.Assignment)
			return nil
		})
	})
	return out, err
}

// PutAssignment creates or replaces an assignment (its revision goes up by
// one). ifMatch not 0 requires the stored revision to be that one
// (ErrPreconditionFailed; ErrNotFound when there is none). A retry carrying
// the requestID of the write that stored the current revision answers
// that write's result. created says whether the assignment is new.
func (s *Store) PutAssignment(a assignment.Assignment, ifMatch uint64, requestID string) (assignment.Assignment, bool, error) {
	if err := assignment.Validate(&a); err != nil {
		return a, false, err
	}
	var out assignment.Assignment
	var created bool
	err := s.update(func(txn *badger.Txn) error {
		cur, ok, err := readAssignment(txn, a.Name)
		if err != nil {
			return err
		}
		if ok && requestID != "" && cur.RequestID == requestID {
			out, created = cur.Assignment, cur.Revision == 1
			return nil
		}
		if _, err := txn.Get(personaKey(a.Persona)); errors.Is(err, badger.ErrKeyNotFound) {
			return NoPersonaError(a.Persona)
		} else if err != nil {
			return err
		}
		if ifMatch != 0 {
			if !ok {
				return fmt.Errorf("assignment %q: %w", a.Name, ErrNotFound)
			}
			if cur.Revision != ifMatch {
				return fmt.Errorf("assignment %q is at revision %d, not %d: %w", a.Name, cur.Revision, ifMatch, ErrPreconditionFailed)
			}
		}
		now := s.now().UTC()
		n := a
		n.CreatedAt, n.UpdatedAt, n.Revision = now, now, 1
		if ok {
			n.CreatedAt, n.Revision = cur.CreatedAt, cur.Revision+1
		}
		out, created = n, !ok
		return writeAssignment(txn, storedAssignment{Assignment: n, RequestID: requestID})
	})
	return out, created, err
}

// NoPersonaError refuses an assignment naming a persona that does not
// exist (field persona).
func NoPersonaError(name string) error {
	return errdefs.WithDetails(errdefs.InvalidField("persona", fmt.Sprintf("persona: no persona named %q", name)), "persona", name)
}

// DeleteAssignment removes an assignment; ifMatch as in PutAssignment.
func (s *Store) DeleteAssignment(name string, ifMatch uint64) error {
	return s.update(func(txn *badger.Txn) error {
		cur, ok, err := readAssignment(txn, name)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("assignment %q: %w", name, ErrNotFound)
		}
		if ifMatch != 0 && cur.Revision != ifMatch {
			return fmt.Errorf("assignment %q is at revision %d, not %d: %w", name, cur.Revision, ifMatch, ErrPreconditionFailed)
		}
		return txn.Delete(assignmentKey(name))
	})
}

// replicaAssignments applies a replica batch's assignments in txn.
func replicaAssignments(txn *badger.Txn, b ReplicaBatch) error {
	return applyReplica(txn, "assignment", prefixAssignment, b.Full, b.Assignments,
		func(a *assignment.Assignment) string { return a.Name },
		func(a *assignment.Assignment) error { return writeAssignment(txn, storedAssignment{Assignment: *a}) })
}
