package store

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// The types below are the on-disk format: their JSON is what Badger keeps.
// They belong to the store, not to the wire (protocol) or the REST API, so
// that a rename there never changes what is on disk. Any change to them, or
// to how they are encoded, is a new schema version with a migration (see
// schema.go); the golden records in testdata/ fail until there is one.

// personaRecord is a persona as stored under p/<name> and inside instance
// records.
type personaRecord struct {
	Name                 string            `json:"name"`
	EnvironmentVariables map[string]string `json:"environment_variables"`
	PreActivationScript  string            `json:"pre_activation_script"`
	PostActivationScript string            `json:"post_activation_script"`
	CommandOverrides     map[string]string `json:"command_overrides"`
	RestrictedCommands   []string          `json:"restricted_commands"`
	AllowedCommands      []string          `json:"allowed_commands,omitempty"`
	DefaultPersona       bool              `json:"default_persona"`
	Rollout              string            `json:"rollout,omitempty"` // schema 2
	Enforcement          string            `json:"enforcement,omitempty"`
	DenyExecWritable     *bool             `json:"deny_exec_writable,omitempty"`
	RequestEnv           []string          `json:"request_env,omitempty"`
	SecretVariables      []string          `json:"secret_variables,omitempty"` // schema 4
	ExecUser             string            `json:"exec_user,omitempty"`
	AuditExec            *bool             `json:"audit_exec,omitempty"`
	Revision             uint64            `json:"revision"`
	CreatedAt            time.Time         `json:"created_at,omitzero"`
	UpdatedAt            time.Time         `json:"updated_at,omitzero"`
}

// The conversions are Go struct conversions on purpose: a field added to (or
// renamed in) protocol.Persona stops them compiling, so nobody changes the
// persona without deciding what the store keeps of it. Field tags do not
// take part: the wire's JSON names may change, the store's stay.
func toPersonaRecord(p *protocol.Persona) *personaRecord {
	r := personaRecord(*p)
	return &r
}

func fromPersonaRecord(r *personaRecord) *protocol.Persona {
	p := protocol.Persona(*r)
	validate.Normalize(&p)
	return &p
}

func encodePersona(p *protocol.Persona) ([]byte, error) { return json.Marshal(toPersonaRecord(p)) }

// decodePersona is how a stored persona value is read, from Badger or for
// the cache.
func decodePersona(v []byte) (*protocol.Persona, error) {
	var r personaRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, err
	}
	return fromPersonaRecord(&r), nil
}

// instanceRecord is an InstanceRecord as stored under i/<instance>: what
// the guest last confirmed. What the instance should run is a record of its
// own (desiredRecord, d/<instance>): the two are written by different
// parties (the guest's confirmations, the operator's requests), so neither
// write has to read and keep the other's fields.
type instanceRecord struct {
	Instance     string         `json:"instance"`
	Persona      *personaRecord `json:"persona"`
	Revision     uint64         `json:"revision"`
	ActivationID string         `json:"activation_id,omitempty"`
	ActivatedAt  time.Time      `json:"activated_at,omitzero"`
	UpdatedAt    time.Time      `json:"updated_at,omitzero"`
	BootID       string         `json:"boot_id,omitempty"`
}

func encodeInstance(rec *InstanceRecord) ([]byte, error) {
	r := instanceRecord{
		Instance: rec.Instance, Revision: rec.Revision, ActivationID: rec.ActivationID,
		ActivatedAt: rec.ActivatedAt, UpdatedAt: rec.UpdatedAt, BootID: rec.BootID,
	}
	if rec.Persona != nil {
		r.Persona = toPersonaRecord(rec.Persona)
	}
	return json.Marshal(r)
}

func decodeInstance(v []byte, rec *InstanceRecord) error {
	var r instanceRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return fmt.Errorf("instance record: decode: %w", err)
	}
	*rec = InstanceRecord{
		Instance: r.Instance, Revision: r.Revision, ActivationID: r.ActivationID,
		ActivatedAt: r.ActivatedAt, UpdatedAt: r.UpdatedAt, BootID: r.BootID,
	}
	if r.Persona != nil {
		rec.Persona = fromPersonaRecord(r.Persona)
	}
	return nil
}

// auditRecord is an AuditEvent as stored under a/<id>.
type auditRecord struct {
	ID           string    `json:"id"`
	Time         time.Time `json:"time"`
	Instance     string    `json:"instance,omitempty"`
	Actor        string    `json:"actor,omitempty"`
	Type         string    `json:"type"`
	Persona      string    `json:"persona,omitempty"`
	Command      string    `json:"command,omitempty"`
	Route        string    `json:"route,omitempty"`
	Result       string    `json:"result,omitempty"`
	ActivationID string    `json:"activation_id,omitempty"`
	Source       string    `json:"source"`
	GuestSpool   string    `json:"guest_spool,omitempty"`
	GuestSeq     uint64    `json:"guest_seq,omitempty"`
	Detail       string    `json:"detail,omitempty"`
	GuestTime    time.Time `json:"guest_time,omitzero"`  // since schema 3
	ClockSkew    bool      `json:"clock_skew,omitempty"` // since schema 3
}

func encodeAudit(ev *AuditEvent) ([]byte, error) { return json.Marshal(auditRecord(*ev)) }

func decodeAudit(v []byte, ev *AuditEvent) error {
	var r auditRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return err
	}
	*ev = AuditEvent(r)
	return nil
}

// desiredRecord is a DesiredState as stored under d/<instance> (schema 2).
type desiredRecord struct {
	Instance  string         `json:"instance"`
	Persona   *personaRecord `json:"persona"`
	Revision  uint64         `json:"revision"`
	SetBy     string         `json:"set_by"`
	Actor     string         `json:"actor,omitempty"`
	UpdatedAt time.Time      `json:"updated_at,omitzero"`
}

func encodeDesired(d *DesiredState) ([]byte, error) {
	r := desiredRecord{Instance: d.Instance, Revision: d.Revision, SetBy: d.SetBy, Actor: d.Actor, UpdatedAt: d.UpdatedAt}
	if d.Persona != nil {
		r.Persona = toPersonaRecord(d.Persona)
	}
	return json.Marshal(r)
}

func decodeDesired(v []byte, d *DesiredState) error {
	var r desiredRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return fmt.Errorf("desired state: decode: %w", err)
	}
	*d = DesiredState{Instance: r.Instance, Revision: r.Revision, SetBy: r.SetBy, Actor: r.Actor, UpdatedAt: r.UpdatedAt}
	if r.Persona != nil {
		d.Persona = fromPersonaRecord(r.Persona)
	}
	return nil
}
