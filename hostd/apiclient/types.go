package apiclient

import (
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// Instance states and agent states as the server reports them.
const (
	StateRunning = "running"
	StateShutoff = "shutoff"
	StateUnknown = "unknown"

	AgentConnected    = "connected"
	AgentConnecting   = "connecting"
	AgentDisconnected = "disconnected"
)

// Instance is a virtual machine the host daemon knows.
type Instance struct {
	ID string `json:"id"`
	// Source is "static", "libvirt" or "qmp".
	Source   string `json:"source"`
	Endpoint string `json:"endpoint"`
	// State is "running", "shutoff" or "unknown".
	State string    `json:"state"`
	Agent AgentInfo `json:"agent"`
	// ActivePersona names the persona active in the guest, nil for none.
	ActivePersona *string `json:"active_persona"`
	// Reason says why the instance cannot be reached, when it cannot.
	Reason string `json:"reason,omitempty"`
	// UUID is a libvirt domain's UUID.
	UUID string `json:"uuid,omitempty"`
	// PortOpen says whether the guest has the agent port open (libvirt,
	// QMP); nil when unknown.
	PortOpen *bool `json:"port_open,omitempty"`
}

// EnableResult says what adding the agent channel to a domain did.
type EnableResult struct {
	Instance string `json:"instance"`
	Did      string `json:"did"`
}

// AgentInfo is the state of the session with an instance's guest agent.
type AgentInfo struct {
	// State is "connected", "connecting" or "disconnected".
	State        string    `json:"state"`
	Version      string    `json:"version,omitempty"`
	BootID       string    `json:"boot_id,omitempty"`
	Capabilities []string  `json:"capabilities,omitempty"`
	ConnectedAt  time.Time `json:"connected_at,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
}

// ActivePersona is the persona an instance holds.
type ActivePersona struct {
	Instance string `json:"instance"`
	// Persona is nil when the instance holds no persona.
	Persona      *protocol.Persona `json:"persona"`
	Revision     uint64            `json:"revision"`
	ActivationID string            `json:"activation_id,omitempty"`
	ActivatedAt  time.Time         `json:"activated_at,omitzero"`
	// Stale is true when the persona changed in the store since it was
	// activated (the guest runs an older revision).
	Stale bool `json:"stale"`
}

// ActivateOptions tune an activation.
type ActivateOptions struct {
	// ScriptTimeout bounds each activation script in the guest (whole
	// seconds, rounded up); 0 leaves the guest's default (5 minutes).
	ScriptTimeout time.Duration
}

// ActivateResult answers a successful activation.
type ActivateResult struct {
	Instance       string    `json:"instance"`
	Result         string    `json:"result"`
	Persona        string    `json:"persona"`
	Revision       uint64    `json:"revision"`
	ActivationID   string    `json:"activation_id"`
	ActivatedAt    time.Time `json:"activated_at,omitzero"`
	DurationMillis float64   `json:"duration_ms"`
}

// DeactivateResult answers a deactivation.
type DeactivateResult struct {
	Instance       string  `json:"instance"`
	Result         string  `json:"result"`
	DurationMillis float64 `json:"duration_ms"`
}

// ExecRequest asks to run a command in a guest through its routing table.
type ExecRequest struct {
	Command string            `json:"command"`
	Args    []string          `json:"args"`
	Env     map[string]string `json:"env,omitempty"`
	Stdin   string            `json:"stdin,omitempty"`
	Cwd     string            `json:"cwd,omitempty"`
	// TimeoutSeconds bounds the command in the guest (the guest kills it
	// then); 0 leaves the server's default (30 s).
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
}

// ExecResult is the outcome of a command that ran: the API answers with the
// protocol's own result (exit code or signal, output, truncation flags,
// route, persona, duration). In a streamed exec, Stdout and Stderr are
// empty: the output went to the writers.
type ExecResult = protocol.ExecResult

// AuditEvent is one entry of the host's audit log.
type AuditEvent struct {
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
	// Source is "host" or "guest".
	Source     string `json:"source,omitempty"`
	GuestSpool string `json:"guest_spool,omitempty"`
	GuestSeq   uint64 `json:"guest_seq,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

// AuditQuery filters the audit log. Zero fields do not filter.
type AuditQuery struct {
	Instance string
	Persona  string
	Type     string
	Since    time.Time
	Until    time.Time
	Limit    int
	// After is the cursor: only events after the one with this ID.
	After string
}

// AuditPage is one answer of the audit log, oldest first.
type AuditPage struct {
	Events []AuditEvent `json:"events"`
	// Next is the ID of the last event, the cursor for the next page;
	// empty when the page is empty.
	Next string `json:"next"`
}
