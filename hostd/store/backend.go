package store

import (
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// The interfaces below are what the host daemon asks of its store. *Store
// (Badger, one host) implements them; a replicated backend (etcd, for a
// fleet of hosts) implements the same, with the same errors (ErrNotFound,
// ErrExists, ErrPreconditionFailed, *DefaultConflictError, *InUseError,
// ErrInvalidArgument, ErrClosed) and the same guarantees: every write is
// atomic and durable when it returns, persona writes compare the revision
// in the same transaction (ifMatch), and PutInstance writes the record and
// its audit events together or not at all.

// Personas is the persona catalogue.
type Personas interface {
	CreatePersona(p protocol.Persona) (protocol.Persona, error)
	GetPersona(name string) (protocol.Persona, error)
	// PersonaVersion identifies the stored version of a persona (revision
	// and update time) without copying it.
	PersonaVersion(name string) (revision uint64, updatedAt time.Time, err error)
	ListPersonas() ([]protocol.Persona, error)
	UpdatePersona(p protocol.Persona, ifMatch uint64) (protocol.Persona, error)
	DeletePersona(name string, ifMatch uint64, force bool) error
	DefaultPersona() (p protocol.Persona, ok bool, err error)
}

// Instances are the instance records: what each instance holds.
type Instances interface {
	GetInstance(instance string) (InstanceRecord, error)
	// PutInstance writes the record and the host audit events that go with
	// it in one atomic, durable write.
	PutInstance(rec InstanceRecord, events ...AuditEvent) error
	// PutInstanceDesired writes the record, the instance's desired state
	// and the host audit events in one atomic, durable write.
	PutInstanceDesired(rec InstanceRecord, d DesiredState, events ...AuditEvent) error
	DeleteInstance(instance string) error
	ListInstances() ([]InstanceRecord, error)
}

// DesiredStates are what each instance should run, the reconciler's input
// (the instance records are what it runs).
type DesiredStates interface {
	// GetDesired answers ErrNotFound for an instance never seen.
	GetDesired(instance string) (DesiredState, error)
	// PutDesired writes the desired state and the host audit events that
	// go with it in one atomic, durable write.
	PutDesired(d DesiredState, events ...AuditEvent) ([]AuditEvent, error)
	ListDesired() ([]DesiredState, error)
}

// AuditLog is the audit log, host and guest events.
type AuditLog interface {
	AppendAudit(evs ...AuditEvent) ([]AuditEvent, error)
	// IngestGuestAudit stores a guest's batch exactly once per (instance,
	// spool, seq).
	IngestGuestAudit(instance string, b protocol.AuditBatch) (upTo uint64, inserted []AuditEvent, err error)
	QueryAudit(q AuditQuery) ([]AuditEvent, error)
}

// Backend is a whole store.
type Backend interface {
	Personas
	Instances
	DesiredStates
	AuditLog
	// Ready is nil while the store answers reads (a readiness probe).
	Ready() error
	// Writable is nil while the store takes writes.
	Writable() error
	Close() error
}

var _ Backend = (*Store)(nil)
