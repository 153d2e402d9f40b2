package store

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// What set an instance's desired state (DesiredState.SetBy).
const (
	DesiredByActivation   = "activation"   // an activation request
	DesiredByDeactivation = "deactivation" // a deactivation request: none, deliberately
	DesiredByDefault      = "default"      // the default persona, for an instance never seen before
	DesiredByAdoption     = "adopted"      // first seen holding a persona: what it holds
	DesiredByRollout      = "rollout"      // a rollout of the persona's current revision
	DesiredByAssignment   = "assignment"   // the highest-priority assignment selecting the instance
)

// Audit event types of the desired state's changes.
const (
	AuditRolloutStarted  = protocol.AuditRolloutStarted
	AuditRolloutFinished = protocol.AuditRolloutFinished
	AuditReconciled      = protocol.AuditReconciled
)

// DesiredState is what an instance should run: a persona at a revision, or
// none. Persona is the persona as it was at Revision, so that the instance
// converges to exactly that revision even after the persona has changed.
type DesiredState struct {
	Instance string            `json:"instance"`
	Persona  *protocol.Persona `json:"persona"` // nil: none
	Revision uint64            `json:"revision"`
	SetBy    string            `json:"set_by"`
	Actor    string            `json:"actor,omitempty"`
	// UpdatedAt is when the desired state was written; PutDesired sets it
	// to now when zero.
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// PersonaName is the desired persona's name, "" for none.
func (d DesiredState) PersonaName() string {
	if d.Persona == nil {
		return ""
	}
	return d.Persona.Name
}

func desiredKey(instance string) []byte { return []byte(prefixDesired + instance) }

// Desired states are read on every instance status (GET /instances/{id}),
// and a Badger read transaction waits for in-flight synced commits: during
// an activation storm a status read would queue behind a thousand fsyncs.
// So reads are served from memory: desiredCache holds every desired state
// as Badger holds it, loaded at Open and replaced after each committed
// write. Writes of one instance are ordered by a striped lock, so the
// cache installs them in commit order; writes of different instances still
// go to Badger together (its write loop groups them into one fsync).

// desiredStripes is the number of locks ordering desired-state writes.
const desiredStripes = 64

// desiredCache maps instance → *DesiredState, each never mutated once
// stored.
type desiredCache struct{ m sync.Map }

func (s *Store) desiredLock(instance string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(instance))
	return &s.desiredMu[h.Sum32()%desiredStripes]
}

// loadDesired reads every desired state from Badger into the cache.
func (s *Store) loadDesired() error {
	return s.view(func(txn *badger.Txn) error {
		return eachValue(txn, prefixDesired, func(instance string, v []byte) error {
			d := new(DesiredState)
			if err := decodeDesired(v, d); err != nil {
				return err
			}
			s.desired.m.Store(instance, d)
			return nil
		})
	})
}

// reloadDesired reads one instance's desired state from Badger into the
// cache, after a write whose outcome is unknown. The caller holds its
// stripe.
func (s *Store) reloadDesired(instance string) {
	var d *DesiredState
	err := s.view(func(txn *badger.Txn) error {
		item, err := txn.Get(desiredKey(instance))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		d = new(DesiredState)
		return item.Value(func(v []byte) error { return decodeDesired(v, d) })
	})
	switch {
	case err != nil:
		s.log.Error("desired state cache: reload after a failed write", "instance", instance, "err", err)
	case d == nil:
		s.desired.m.Delete(instance)
	default:
		s.desired.m.Store(instance, d)
	}
}

// GetDesired reads an instance's desired state; ErrNotFound when none was
// ever recorded (an instance the host has never seen). It is answered from
// memory; the caller may change what it gets.
func (s *Store) GetDesired(instance string) (DesiredState, error) {
	if err := checkInstance(instance); err != nil {
		return DesiredState{}, err
	}
	if s.closed.Load() {
		return DesiredState{}, ErrClosed
	}
	v, ok := s.desired.m.Load(instance)
	if !ok {
		return DesiredState{}, fmt.Errorf("desired state of %q: %w", instance, ErrNotFound)
	}
	d := *v.(*DesiredState)
	if d.Persona != nil {
		p := d.Persona.Clone()
		d.Persona = &p
	}
	return d, nil
}

// PutDesired writes (replaces) an instance's desired state, with host audit
// events in the same commit.
func (s *Store) PutDesired(d DesiredState, events ...AuditEvent) ([]AuditEvent, error) {
	if err := checkInstance(d.Instance); err != nil {
		return nil, err
	}
	b, cached, err := s.encodeDesired(&d)
	if err != nil {
		return nil, err
	}
	now := s.now()
	in := make([]AuditEvent, len(events))
	for i, ev := range events {
		if ev.Type == "" {
			return nil, fmt.Errorf("audit event %d has no type: %w", i, ErrInvalidArgument)
		}
		if ev.Time.IsZero() {
			ev.Time = now
		}
		ev.Time = ev.Time.UTC()
		ev.Source = SourceHost
		in[i] = ev
	}
	evs := make([]AuditEvent, len(in))
	mu := s.desiredLock(d.Instance)
	mu.Lock()
	defer mu.Unlock()
	err = s.update(func(txn *badger.Txn) error {
		copy(evs, in) // a retried transaction starts again from the input
		for i := range evs {
			if err := s.putAudit(txn, &evs[i]); err != nil {
				return err
			}
		}
		return txn.Set(desiredKey(d.Instance), b)
	})
	if err != nil {
		if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrInvalidArgument) {
			// A commit whose outcome is unknown may have landed.
			s.reloadDesired(d.Instance)
		}
		return nil, err
	}
	s.desired.m.Store(d.Instance, cached)
	return evs, nil
}

// encodeDesired normalises d (UTC time, now when zero; no revision without
// a persona) and encodes it; cached is what the cache holds once it is
// written (decoded back, so that it is exactly what a reload would give).
func (s *Store) encodeDesired(d *DesiredState) (b []byte, cached *DesiredState, err error) {
	if d.UpdatedAt.IsZero() {
		d.UpdatedAt = s.now()
	}
	d.UpdatedAt = d.UpdatedAt.UTC()
	if d.Persona == nil {
		d.Revision = 0
	}
	b, err = encodeDesired(d)
	if err != nil {
		return nil, nil, fmt.Errorf("desired state of %q: encode: %w", d.Instance, err)
	}
	if c, ok := desiredCopy(d); ok {
		return b, c, nil
	}
	cached = new(DesiredState)
	if err := decodeDesired(b, cached); err != nil {
		return nil, nil, fmt.Errorf("desired state of %q: %w", d.Instance, err)
	}
	return b, cached, nil
}

// desiredCopy is what decoding d's encoding gives (decodeDesired after
// encodeDesired), made without the JSON round trip, which cost a quarter of
// the host's CPU in a large persona's activation. ok is false, and the
// caller decodes, where the two could differ: a string that is not valid
// UTF-8 (JSON replaces its bytes) or a time that is not in UTC (JSON keeps
// only its offset). An empty list whose field is omitted when empty comes
// back nil, and a missing map or list comes back empty, as decoding gives.
func desiredCopy(d *DesiredState) (*DesiredState, bool) {
	if !jsonSame(d.Instance, d.SetBy, d.Actor) || !jsonSameTime(d.UpdatedAt) {
		return nil, false
	}
	out := &DesiredState{Instance: d.Instance, Revision: d.Revision, SetBy: d.SetBy, Actor: d.Actor, UpdatedAt: d.UpdatedAt}
	if d.Persona == nil {
		return out, true
	}
	p := *d.Persona
	if !jsonSameTime(p.CreatedAt) || !jsonSameTime(p.UpdatedAt) ||
		!jsonSame(p.Name, p.PreActivationScript, p.PostActivationScript, p.Rollout, p.Enforcement, p.ExecUser) ||
		!jsonSameMap(p.EnvironmentVariables) || !jsonSameMap(p.CommandOverrides) ||
		!jsonSame(p.RestrictedCommands...) || !jsonSame(p.AllowedCommands...) ||
		!jsonSame(p.RequestEnv...) || !jsonSame(p.SecretVariables...) {
		return nil, false
	}
	p = p.Clone()
	p.AllowedCommands = nilIfEmpty(p.AllowedCommands)
	p.RequestEnv = nilIfEmpty(p.RequestEnv)
	p.SecretVariables = nilIfEmpty(p.SecretVariables)
	validate.Normalize(&p)
	out.Persona = &p
	return out, true
}

// jsonSame reports whether every string survives a JSON round trip as it is.
func jsonSame(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

func jsonSameMap(m map[string]string) bool {
	for k, v := range m {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// jsonSameTime: a zero time is omitted and comes back zero; a UTC time
// (carrying no monotonic reading: UTC strips it) comes back equal.
func jsonSameTime(t time.Time) bool {
	return t.IsZero() || (t.Location() == time.UTC && t == t.Round(0))
}

// nilIfEmpty: a list whose field is omitted when empty decodes as nil.
func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

// ListDesired returns every recorded desired state, sorted by instance name
// (never nil).
func (s *Store) ListDesired() ([]DesiredState, error) {
	out := []DesiredState{}
	err := s.view(func(txn *badger.Txn) error {
		return eachValue(txn, prefixDesired, func(_ string, v []byte) error {
			var d DesiredState
			if err := decodeDesired(v, &d); err != nil {
				return err
			}
			out = append(out, d)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
