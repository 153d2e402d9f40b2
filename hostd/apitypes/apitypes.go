// Package apitypes is the REST API of vmpersona-hostd as Go types: every
// request body, every answer, the list wrappers, the problem document and
// its extra members, and the audit event. The server (hostd/api), the Go
// client (hostd/apiclient) and vmpersonactl all use these types, and the
// OpenAPI description (GET /openapi.json) is tested field by field against
// them, so a field exists in one place.
//
// JSON field names are the product's contract: renaming one breaks users.
package apitypes

import (
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// Persona is a persona as the API reads and writes it: the wire format's
// persona, with the server-kept revision, created_at and updated_at.
type Persona = protocol.Persona

// PersonaList answers GET /personas: personas sorted by name.
type PersonaList struct {
	Personas []Persona `json:"personas"`
	// Next is the cursor of the next page (send it as ?after=); absent on
	// the last page.
	Next string `json:"next,omitempty"`
}

// Instance states as discovery reports them. A static instance (no
// discovery) is "running" while its agent is connected, else "unknown".
const (
	StateRunning = "running"
	StatePaused  = "paused" // vCPUs stopped (libvirt suspended, QMP stop or prelaunch)
	StateShutoff = "shutoff"
	StateUnknown = "unknown"
)

// InstanceStates lists every instance state.
var InstanceStates = []string{StateRunning, StatePaused, StateShutoff, StateUnknown}

// Instance sources.
const (
	SourceStatic  = "static"
	SourceLibvirt = "libvirt"
	SourceQMP     = "qmp"
)

// InstanceSources lists every instance source.
var InstanceSources = []string{SourceStatic, SourceLibvirt, SourceQMP}

// Agent session states.
const (
	AgentConnected    = "connected"
	AgentConnecting   = "connecting"
	AgentDisconnected = "disconnected"
)

// AgentStates lists every agent session state.
var AgentStates = []string{AgentConnected, AgentConnecting, AgentDisconnected}

// Instance is a virtual machine the host daemon knows: GET /instances/{id},
// and each entry of GET /instances.
type Instance struct {
	ID string `json:"id"`
	// Source is one of InstanceSources.
	Source string `json:"source"`
	// Endpoint is where the agent is reached ("unix:PATH", "vsock:CID:PORT").
	Endpoint string `json:"endpoint"`
	// State is one of InstanceStates.
	State string `json:"state"`
	Agent Agent  `json:"agent"`
	// ActivePersona names the persona the guest holds (or, while the agent
	// is away, last confirmed); nil for none.
	ActivePersona *string `json:"active_persona"`
	// Reason says why the agent cannot be reached, when it cannot.
	Reason string `json:"reason,omitempty"`
	// UUID is a libvirt domain's UUID.
	UUID string `json:"uuid,omitempty"`
	// Host is, in a fleet listing (?scope=fleet), the host whose hostd
	// published the instance.
	Host string `json:"host,omitempty"`
	// PortOpen says whether the guest has the agent port open (libvirt,
	// QMP); absent when unknown.
	PortOpen *bool `json:"port_open,omitempty"`
	// Labels are the instance's labels (libvirt domain metadata, or its
	// --instance/--qmp flag), which assignments select by.
	Labels map[string]string `json:"labels,omitempty"`
	// The desired state, what the guest confirms, and how they compare.
	InstanceSync
}

// Agent is the state of the session with an instance's guest agent.
type Agent struct {
	// State is one of AgentStates.
	State   string `json:"state"`
	Version string `json:"version,omitempty"`
	// BootID changes when the guest reboots.
	BootID string `json:"boot_id,omitempty"`
	// Capabilities the agent announced; empty, never null.
	Capabilities []string `json:"capabilities"`
	// ConnectedAt is when the current session began; absent while none.
	ConnectedAt time.Time `json:"connected_at,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// LandlockABI is the guest kernel's Landlock ABI version (restrictions
	// enforced by the guest kernel); absent when it has none (routing
	// table only).
	LandlockABI int `json:"landlock_abi,omitempty"`
}

// InstanceList answers GET /instances: instances sorted by id.
type InstanceList struct {
	Instances []Instance `json:"instances"`
	// Next is the cursor of the next page (send it as ?after=); absent on
	// the last page.
	Next string `json:"next,omitempty"`
}

// ActivePersona answers GET /instances/{id}/active_persona: the persona the
// host last saw the guest confirm.
type ActivePersona struct {
	Instance string `json:"instance"`
	// Persona is nil when the instance holds no persona.
	Persona  *Persona `json:"persona"`
	Revision uint64   `json:"revision"`
	// ActivationID identifies the activation that made it active.
	ActivationID string `json:"activation_id,omitempty"`
	// ActivatedAt is null when the instance holds no persona.
	ActivatedAt *time.Time `json:"activated_at"`
	// Stale is true whenever the instance is not in sync with its desired
	// state: no live session confirms the record, the guest holds another
	// activation, the desired state is not applied, or the persona changed
	// since (drifted).
	Stale bool `json:"stale"`
}

// ActivateRequest is the optional body of an activation or deactivation.
type ActivateRequest struct {
	// ScriptTimeoutSeconds bounds each activation script in the guest,
	// 0 to 86400; 0 means the server's default (300).
	ScriptTimeoutSeconds float64 `json:"script_timeout_seconds,omitempty"`
}

// Activation results.
const (
	ResultActivated   = protocol.ResultActivated
	ResultDeactivated = protocol.ResultDeactivated
	ResultAborted     = protocol.ResultAborted
	ResultRolledBack  = protocol.ResultRolledBack
	// ResultUnchanged answers an activation of the persona the instance
	// already holds, in sync, at the same revision: no script ran
	// (?force=true activates again).
	ResultUnchanged = "unchanged"
)

// ActivationResult answers a successful activation or deactivation. A
// refused one answers a Problem (409) with Result, Phase and the script's
// exit code and output.
type ActivationResult struct {
	Instance string `json:"instance"`
	// Result is ResultActivated, ResultDeactivated or ResultUnchanged.
	Result string `json:"result"`
	// Persona, Revision, ActivationID and ActivatedAt describe the persona
	// now active; absent after a deactivation.
	Persona        string    `json:"persona,omitempty"`
	Revision       uint64    `json:"revision,omitempty"`
	ActivationID   string    `json:"activation_id,omitempty"`
	ActivatedAt    time.Time `json:"activated_at,omitzero"`
	DurationMillis float64   `json:"duration_ms"`
}

// ExecRequest asks to run a command in a guest through its routing table
// (POST /instances/{id}/exec).
type ExecRequest struct {
	Command string            `json:"command"`
	Args    []string          `json:"args"`
	Env     map[string]string `json:"env,omitempty"`
	// Stdin is sent to the command byte for byte: UTF-8 text as it is, or
	// any bytes in base64 with StdinEncoding "base64".
	Stdin         string `json:"stdin,omitempty"`
	StdinEncoding string `json:"stdin_encoding,omitempty"`
	// Cwd is an absolute path in the guest; empty for the agent's.
	Cwd string `json:"cwd,omitempty"`
	// TimeoutSeconds bounds the command in the guest (its whole process
	// group is killed then), 0 to 86400; 0 means 30 seconds.
	TimeoutSeconds float64 `json:"timeout_seconds,omitempty"`
	// User and Group run the command as this guest user and group (names
	// or numeric ids); empty means the persona's exec_user, or root.
	User  string `json:"user,omitempty"`
	Group string `json:"group,omitempty"`
	// MaxOutputBytes cuts each captured stream of a buffered answer (at
	// most the guest's --max-output; 0 for that bound) and, when set, a
	// streamed one (which is otherwise not cut). A cut stream is flagged
	// stdout_truncated / stderr_truncated.
	MaxOutputBytes int `json:"max_output_bytes,omitempty"`
}

// ExecStdinMediaType is the Content-Type of an exec request whose standard
// input is streamed: the body is the ExecRequest document (without stdin),
// one newline ("\n"), then the command's standard input, byte for byte,
// until the end of the body. The command reads it as it arrives, so its
// size is not bounded by the request body's limit; the request document
// itself is.
const ExecStdinMediaType = "application/vnd.vmpersona.exec-stdin"

// IsExecStdin reports whether a Content-Type header names
// ExecStdinMediaType (parameters aside).
func IsExecStdin(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), ExecStdinMediaType)
}

// Encodings of exec input and output strings.
const (
	// EncodingBase64 marks a string carrying bytes in base64 because
	// they are not valid UTF-8; no encoding means UTF-8 text as it is.
	EncodingBase64 = protocol.EncodingBase64
)

// ExecResult answers a command that ran: its exit code or signal, output,
// truncation flags, route, persona and duration. A command that ran and
// failed is a result, not a problem.
type ExecResult = protocol.ExecResult

// Streams of an exec stream line (POST /instances/{id}/exec?stream=true).
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	StreamExit   = "exit"
	StreamFailed = "error"
)

// ExecStreamLine is one NDJSON line of a streamed exec: output as it
// arrives ("stdout", "stderr": Data), then one "exit" line with the result,
// or, should the exec fail after output began, one "error" line
// (StreamFailed) with the problem's members.
type ExecStreamLine struct {
	Stream string `json:"stream"`
	Data   string `json:"data,omitempty"`
	// Encoding is "base64" when Data carries bytes that are not UTF-8;
	// absent, Data is the text (a chunk never ends inside a character).
	Encoding string `json:"encoding,omitempty"`
	// ExecResult is set on the "exit" line.
	*ExecResult
	// StreamError is set on the "error" line.
	*StreamError
}

// StreamError is the problem that ends a stream after output began.
type StreamError struct {
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// EnableResult answers POST /instances/{id}/enable: what adding the agent
// channel to a libvirt domain did.
type EnableResult struct {
	Instance string `json:"instance"`
	Did      string `json:"did"`
}

// Health answers GET /healthz.
type Health struct {
	Status string `json:"status"` // "ok"
}

// Ready answers GET /readyz when the daemon is ready.
type Ready struct {
	Status string `json:"status"` // "ready"
	// Agents counts the agent sessions the daemon manages.
	Agents int `json:"agents"`
}

// Audit event sources.
const (
	SourceHost  = "host"
	SourceGuest = "guest"
)

// AuditEvent is one entry of the audit log. Type is one of
// protocol.AuditTypes.
type AuditEvent struct {
	// ID is assigned by the host, sorts in the order the host stored the
	// events, and is the cursor of GET /audit?after=.
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Instance string    `json:"instance,omitempty"`
	Actor    string    `json:"actor,omitempty"`
	Type     string    `json:"type"`
	Persona  string    `json:"persona,omitempty"`
	Command  string    `json:"command,omitempty"`
	// Route is the exec route ("default", "override", "denied").
	Route        string `json:"route,omitempty"`
	Result       string `json:"result,omitempty"`
	ActivationID string `json:"activation_id,omitempty"`
	// Source is SourceHost or SourceGuest.
	Source string `json:"source"`
	// GuestSpool and GuestSeq identify a guest event in the guest's spool
	// (they make its ingestion exactly-once).
	GuestSpool string `json:"guest_spool,omitempty"`
	GuestSeq   uint64 `json:"guest_seq,omitempty"`
	Detail     string `json:"detail,omitempty"`
	// GuestTime is a guest event's own time by the guest's clock (Time is
	// when the host stored it), clamped to a window around that; ClockSkew
	// says it was clamped.
	GuestTime time.Time `json:"guest_time,omitzero"`
	ClockSkew bool      `json:"clock_skew,omitempty"`
}

// AuditPage answers GET /audit: events oldest first.
type AuditPage struct {
	Events []AuditEvent `json:"events"`
	// Next is the ID of the last event when the page is full, the cursor
	// of the next page (send it as ?after=); absent when no event follows
	// in this query's order (a follower resumes after the last event's ID).
	Next string `json:"next,omitempty"`
}

// FleetHostList answers GET /fleet/hosts: the hosts present in the fleet.
type FleetHostList struct {
	Hosts []FleetHost `json:"hosts"`
}

// FleetHost is a host's presence in the fleet, kept on an etcd lease.
type FleetHost struct {
	Host       string `json:"host"`
	Version    string `json:"version"`
	APIAddress string `json:"api_address,omitempty"`
	// AppliedRevision is the etcd revision of the host's copy of the
	// catalogue.
	AppliedRevision int64     `json:"applied_revision"`
	StartedAt       time.Time `json:"started_at"`
	// Labels are the host's labels (--fleet-host-label), which assignments
	// select by.
	Labels map[string]string `json:"labels,omitempty"`
}
