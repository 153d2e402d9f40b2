package protocol

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
)

// Type is a frame's message type.
type Type uint8

// Message types. Requests are sent with FlagResponse clear; their answers carry
// FlagResponse and the request's ID. Every payload is JSON (UTF-8, one object)
// except ExecOutput, whose payload is binary (see ExecOutputChunk).
const (
	TypeHello          Type = 0x01 // host → guest: Hello; answered by HelloAck
	TypeHelloAck       Type = 0x02 // guest → host: HelloAck
	TypePing           Type = 0x03 // either way: empty payload; answered by Pong
	TypePong           Type = 0x04 // answer to Ping: empty payload
	TypeActivate       Type = 0x10 // host → guest: Activate; answered by ActivateResult
	TypeActivateResult Type = 0x11 // guest → host: ActivateResult
	TypeDeactivate     Type = 0x12 // host → guest: Deactivate; answered by ActivateResult
	TypeDryRun         Type = 0x13 // host → guest: DryRun; answered by DryRunResult (capability dry-run)
	TypeDryRunResult   Type = 0x14 // guest → host: ActivationDiff
	TypeExec           Type = 0x20 // host → guest: Exec; answered by ExecOutput* then ExecResult
	TypeExecOutput     Type = 0x21 // guest → host: binary output chunk, FlagMore set
	TypeExecResult     Type = 0x22 // guest → host: ExecResult
	TypeExecCredit     Type = 0x23 // host → guest: ExecCredit for a streamed Exec with a Window; never answered
	TypeExecInput      Type = 0x24 // host → guest: binary standard input of an Exec with an InputWindow; FlagMore until the last; never answered
	TypeExecInputAck   Type = 0x25 // guest → host: ExecCredit for input the command took, FlagMore set (capability exec-stdin)
	TypeAuditBatch     Type = 0x30 // guest → host: AuditBatch (unsolicited request)
	TypeAuditAck       Type = 0x31 // host → guest: AuditAck (answers an AuditBatch)
	TypeError          Type = 0x7f // either way: Error, answers any request
)

var typeNames = map[Type]string{
	TypeHello: "hello", TypeHelloAck: "hello_ack", TypePing: "ping", TypePong: "pong",
	TypeActivate: "activate", TypeActivateResult: "activate_result", TypeDeactivate: "deactivate",
	TypeDryRun: "dry_run", TypeDryRunResult: "dry_run_result",
	TypeExec: "exec", TypeExecOutput: "exec_output", TypeExecResult: "exec_result", TypeExecCredit: "exec_credit",
	TypeExecInput: "exec_input", TypeExecInputAck: "exec_input_ack",
	TypeFileOpen: "file_open", TypeFileOpened: "file_opened", TypeFileWrite: "file_write",
	TypeFileRead: "file_read", TypeFileData: "file_data", TypeFileClose: "file_close",
	TypeAuditBatch: "audit_batch", TypeAuditAck: "audit_ack", TypeError: "error",
}

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// Known reports whether t is a message type of this protocol version.
func (t Type) Known() bool { _, ok := typeNames[t]; return ok }

// Capabilities a guest may announce in its HelloAck.
const (
	CapExecStream = "exec-stream" // ExecOutput chunks while a command runs
	CapExecWindow = "exec-window" // Exec.Window: streamed output paced by the host's ExecCredit
	CapAllowlist  = "allowlist"   // Persona.AllowedCommands is enforced
	CapAuditSpool = "audit-spool" // audit events survive restarts until acknowledged
	CapProfile    = "profile"     // the persona's environment reaches login shells
	CapDryRun     = "dry-run"     // DryRun: what an activation would change
	CapExecStdin  = "exec-stdin"  // Exec.InputWindow: standard input streamed in ExecInput frames
)

// Enforcement levels of a persona's restrictions.
const (
	EnforcementKernel = "kernel" // Landlock in the guest kernel, for every process an exec starts
	EnforcementAgent  = "agent"  // the agent's routing table only
)

// Persona is a persona definition: the fields of the product's contract plus
// the server-kept ones. The same type is the REST API's body and the payload
// an activation carries to the guest.
type Persona struct {
	Name                 string            `json:"name"`
	EnvironmentVariables map[string]string `json:"environment_variables"`
	PreActivationScript  string            `json:"pre_activation_script"`
	PostActivationScript string            `json:"post_activation_script"`
	CommandOverrides     map[string]string `json:"command_overrides"`
	RestrictedCommands   []string          `json:"restricted_commands"`
	// AllowedCommands, when non-empty, is an allowlist: only these commands
	// and the overridden ones may run.
	AllowedCommands []string `json:"allowed_commands,omitempty"`
	DefaultPersona  bool     `json:"default_persona"`
	// Rollout is "manual" (the default: an update reaches running guests
	// by a rollout) or "auto" (an update rolls out at once to the
	// instances desiring the persona).
	Rollout string `json:"rollout,omitempty"`
	// Enforcement is "kernel" (the guest kernel, through Landlock, refuses
	// restricted files to everything an exec starts; activation fails on a
	// guest without Landlock) or "agent" (the routing table only). Empty
	// means kernel where the guest has Landlock, agent elsewhere.
	Enforcement string `json:"enforcement,omitempty"`
	// DenyExecWritable forbids running files from writable places (/tmp,
	// /var/tmp, /dev/shm, /run, home directories) under kernel
	// enforcement. Unset means on in allowlist mode, off otherwise.
	DenyExecWritable *bool `json:"deny_exec_writable,omitempty"`
	// RequestEnv names variables an exec request may set beyond the safe
	// default (loader, shell and interpreter start-up variables are
	// refused unless named here).
	RequestEnv []string `json:"request_env,omitempty"`
	// SecretVariables names variables of EnvironmentVariables whose values
	// are secret: the guest keeps them out of its profile file (they reach
	// exec'd commands through the exec environment only), and dry-run
	// diffs and logs show them masked. Each must be a key of
	// EnvironmentVariables.
	SecretVariables []string `json:"secret_variables,omitempty"`
	// ExecUser is the user exec requests run as when they name none (a
	// name or a numeric id); empty means root. Activation scripts always
	// run as root.
	ExecUser string `json:"exec_user,omitempty"`
	// AuditExec records every exec under this persona (actor, command,
	// argument count and a bounded, redacted preview, route, exit code,
	// duration), not only overrides and denials. Unset: the host's
	// setting (vmpersona-hostd --audit-exec, on by default).
	AuditExec *bool `json:"audit_exec,omitempty"`

	// Server-kept fields, ignored on input.
	Revision  uint64    `json:"revision"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Clone deep-copies p (its maps, lists and flags), so the copy and p can
// change apart.
func (p Persona) Clone() Persona {
	p.EnvironmentVariables = maps.Clone(p.EnvironmentVariables)
	p.CommandOverrides = maps.Clone(p.CommandOverrides)
	p.RestrictedCommands = slices.Clone(p.RestrictedCommands)
	p.AllowedCommands = slices.Clone(p.AllowedCommands)
	p.RequestEnv = slices.Clone(p.RequestEnv)
	p.SecretVariables = slices.Clone(p.SecretVariables)
	if p.DenyExecWritable != nil {
		v := *p.DenyExecWritable
		p.DenyExecWritable = &v
	}
	if p.AuditExec != nil {
		v := *p.AuditExec
		p.AuditExec = &v
	}
	return p
}

// ActiveState is the persona a guest holds.
type ActiveState struct {
	Persona      Persona   `json:"persona"`
	Revision     uint64    `json:"revision"`
	ActivationID string    `json:"activation_id"`
	ActivatedAt  time.Time `json:"activated_at"`
}

// Hello opens a session (host → guest).
type Hello struct {
	// Epoch identifies the session. The guest stamps every frame it sends
	// with it; the host drops frames with any other epoch. Never 0.
	Epoch uint32 `json:"epoch"`
	// MinVersion and MaxVersion bound the protocol versions the host speaks.
	MinVersion  uint8  `json:"min_version"`
	MaxVersion  uint8  `json:"max_version"`
	HostVersion string `json:"host_version"`
	// HeartbeatMillis is how often the host pings. The guest treats a
	// silence of three intervals as the end of the session.
	HeartbeatMillis int64 `json:"heartbeat_ms"`
}

// HelloAck answers Hello (guest → host).
type HelloAck struct {
	ProtocolVersion uint8    `json:"protocol_version"`
	AgentVersion    string   `json:"agent_version"`
	Capabilities    []string `json:"capabilities"`
	// BootID is the guest kernel's boot id: it changes when the VM reboots.
	BootID string `json:"boot_id"`
	// SpoolID names the guest's audit sequence space; it changes only when
	// the guest's state directory is created anew. (SpoolID, Seq) is unique.
	SpoolID string `json:"spool_id"`
	// Active is the persona the guest holds, nil when none.
	Active *ActiveState `json:"active"`
	// PendingAudit is how many audit events wait for acknowledgement.
	PendingAudit int `json:"pending_audit"`
	// LandlockABI is the guest kernel's Landlock ABI version, 0 when it has
	// none: personas are then enforced by the agent's routing table only,
	// and one asking for "enforcement": "kernel" is refused.
	LandlockABI int `json:"landlock_abi,omitempty"`
}

// Activate asks the guest to activate a persona (host → guest).
type Activate struct {
	Persona      Persona `json:"persona"`
	Revision     uint64  `json:"revision"`
	ActivationID string  `json:"activation_id"`
	// ScriptTimeoutMillis bounds each script; 0 means the guest's default
	// (5 minutes).
	ScriptTimeoutMillis int64 `json:"script_timeout_ms,omitempty"`
	// Actor is the API user on whose behalf the host asks, for the audit.
	Actor string `json:"actor,omitempty"`
	// Reason is "api" or "default" (the default persona on VM creation).
	Reason string `json:"reason,omitempty"`
}

// Deactivate asks the guest to return to no persona (host → guest).
type Deactivate struct {
	ActivationID        string `json:"activation_id"`
	ScriptTimeoutMillis int64  `json:"script_timeout_ms,omitempty"`
	Actor               string `json:"actor,omitempty"`
}

// Activation results.
const (
	ResultActivated   = "activated"
	ResultDeactivated = "deactivated"
	ResultAborted     = "aborted"     // the pre-activation script failed: nothing changed
	ResultRolledBack  = "rolled_back" // the post-activation script failed: the previous persona is back
	ResultFailed      = "failed"      // the guest could not persist or apply the change: nothing changed
)

// ScriptResult is the outcome of one script run.
type ScriptResult struct {
	ExitCode        int     `json:"exit_code"`
	Signal          string  `json:"signal,omitempty"`
	TimedOut        bool    `json:"timed_out,omitempty"`
	Stdout          string  `json:"stdout"`
	Stderr          string  `json:"stderr"`
	StdoutTruncated bool    `json:"stdout_truncated,omitempty"`
	StderrTruncated bool    `json:"stderr_truncated,omitempty"`
	DurationMillis  float64 `json:"duration_ms"`
}

// ActivateResult answers Activate and Deactivate (guest → host).
type ActivateResult struct {
	Result string `json:"result"`
	// Phase names the script that failed: "pre" or "post".
	Phase string `json:"phase,omitempty"`
	// Script is the failing script's outcome (aborted, rolled_back).
	Script *ScriptResult `json:"script,omitempty"`
	// Error explains a "failed" result.
	Error string `json:"error,omitempty"`
	// Active is what the guest holds after the request, nil for none.
	Active         *ActiveState `json:"active"`
	DurationMillis float64      `json:"duration_ms"`
}

// Exec asks the guest to run a command through its routing table.
type Exec struct {
	Command       string            `json:"command"`
	Args          []string          `json:"args,omitempty"`
	Env           map[string]string `json:"env,omitempty"`
	Stdin         []byte            `json:"stdin,omitempty"` // base64 in JSON
	Cwd           string            `json:"cwd,omitempty"`
	TimeoutMillis int64             `json:"timeout_ms,omitempty"`
	// Stream asks for ExecOutput chunks as output is produced; the final
	// ExecResult then carries no output.
	Stream bool `json:"stream,omitempty"`
	// MaxOutput bounds each captured stream in bytes; 0 means the guest's
	// default (1 MiB).
	MaxOutput int    `json:"max_output,omitempty"`
	Actor     string `json:"actor,omitempty"`
	// User and Group run the command as this user and group (names or
	// numeric ids, resolved in the guest); empty means the persona's
	// exec_user, or root.
	User  string `json:"user,omitempty"`
	Group string `json:"group,omitempty"`
	// Window, for a streamed Exec to a guest announcing CapExecWindow, is
	// how many output bytes the guest may send beyond those the host has
	// acknowledged with ExecCredit; the command waits (its pipe fills)
	// until more credit arrives. 0: no pacing.
	Window int `json:"window,omitempty"`
	// InputWindow, when > 0 (to a guest announcing CapExecStdin), says
	// that the command's standard input follows in ExecInput frames (after
	// Stdin, when that is set too): at most InputWindow bytes beyond those
	// the guest has acknowledged with ExecInputAck, and at most
	// MaxInputWindow.
	InputWindow int `json:"input_window,omitempty"`
	// AuditExec is the host's setting for auditing every exec, which a
	// persona's audit_exec overrides; unset: the guest's --audit-exec.
	AuditExec *bool `json:"audit_exec,omitempty"`
}

// ExecCredit (host → guest, same id as the Exec) acknowledges output bytes
// the host's consumer has taken. Bytes < 0 says the host stopped reading:
// the rest of the output is dropped as it is produced.
type ExecCredit struct {
	Bytes int `json:"bytes"`
}

// MaxInputWindow bounds Exec.InputWindow: the most standard input a guest
// holds for one command that has not taken it yet.
const MaxInputWindow = 4 << 20

// ExecInputAck (guest → host, as a response with FlagMore, the Exec's id)
// carries an ExecCredit: Bytes of standard input the command took since the
// last one, or < 0 when the command's input is closed (it exited or closed
// it): the host sends no more.

// Routes an exec can take.
const (
	RouteDefault  = "default"
	RouteOverride = "override"
	RouteDenied   = "denied"
)

// ExecResult answers Exec (guest → host).
type ExecResult struct {
	ExitCode int    `json:"exit_code"`
	Signal   string `json:"signal"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	// StdoutEncoding and StderrEncoding are EncodingBase64 when the output
	// is not valid UTF-8 and its field carries the bytes in base64; empty
	// when the field is the text itself (see EncodeOutput).
	StdoutEncoding  string  `json:"stdout_encoding,omitempty"`
	StderrEncoding  string  `json:"stderr_encoding,omitempty"`
	StdoutTruncated bool    `json:"stdout_truncated"`
	StderrTruncated bool    `json:"stderr_truncated"`
	Route           string  `json:"route"`
	Persona         *string `json:"persona"`
	DurationMillis  float64 `json:"duration_ms"`
}

// Output streams in an ExecOutput chunk.
const (
	StreamStdout byte = 1
	StreamStderr byte = 2
)

// AppendExecOutput appends an ExecOutput payload: one stream byte, then the
// raw output bytes (no encoding, so binary output costs nothing extra).
func AppendExecOutput(dst []byte, stream byte, data []byte) []byte {
	dst = append(dst, stream)
	return append(dst, data...)
}

// ParseExecOutput splits an ExecOutput payload.
func ParseExecOutput(payload []byte) (stream byte, data []byte, err error) {
	if len(payload) == 0 || (payload[0] != StreamStdout && payload[0] != StreamStderr) {
		return 0, nil, fmt.Errorf("protocol: malformed exec output chunk")
	}
	return payload[0], payload[1:], nil
}

// AuditEvent is one event recorded by the guest.
type AuditEvent struct {
	Seq          uint64    `json:"seq"`
	Time         time.Time `json:"time"`
	Type         string    `json:"type"`
	Persona      string    `json:"persona,omitempty"`
	Command      string    `json:"command,omitempty"`
	Route        string    `json:"route,omitempty"`
	Result       string    `json:"result,omitempty"`
	ActivationID string    `json:"activation_id,omitempty"`
	Actor        string    `json:"actor,omitempty"`
	Detail       string    `json:"detail,omitempty"`
}

// AuditBatch carries audit events, oldest first (guest → host). The guest
// sends it unprompted after the handshake and whenever events are recorded.
type AuditBatch struct {
	SpoolID string       `json:"spool_id"`
	Events  []AuditEvent `json:"events"`
}

// AuditAck acknowledges every event up to and including UpToSeq
// (host → guest, answering an AuditBatch). The guest then drops them.
type AuditAck struct {
	UpToSeq uint64 `json:"up_to_seq"`
}

// Error codes.
const (
	CodeDenied             = "denied"              // restricted in the current persona
	CodeNotFound           = "not_found"           // the command does not exist in the guest
	CodeNotExecutable      = "not_executable"      // the command exists but cannot be run
	CodeCannotStart        = "cannot_start"        // the process cannot be started (its cwd, say)
	CodeBadRequest         = "bad_request"         // the payload could not be decoded or is invalid
	CodeUnsupportedType    = "unsupported_type"    // the message type is unknown to the receiver
	CodeUnsupportedVersion = "unsupported_version" // no protocol version in common
	CodeTooLarge           = "too_large"           // the frame exceeded the receiver's limit
	CodeBusy               = "busy"                // too many requests in flight
	CodeNoSession          = "no_session"          // a request arrived before Hello
	CodeInternal           = "internal"
)

// DeniedMessage is the message of a refused command, exactly as users know it.
const DeniedMessage = "Error: Command not allowed in current persona"

// Error answers a request that failed (either way).
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Command names the command an exec error is about.
	Command string `json:"command,omitempty"`
	// Persona is the active persona when an exec was denied.
	Persona string `json:"persona,omitempty"`
}

func (e *Error) Error() string {
	if e.Command != "" {
		return fmt.Sprintf("%s: %s (%s)", e.Code, e.Message, e.Command)
	}
	return e.Code + ": " + e.Message
}

// Is places the error in its class (package errdefs) by its code.
func (e *Error) Is(target error) bool { return target == e.class() }

func (e *Error) class() error {
	switch e.Code {
	case CodeDenied:
		return errdefs.ErrForbidden
	case CodeNotFound, CodeNotExecutable, CodeCannotStart:
		return errdefs.ErrInvalid
	case CodeBadRequest:
		return errdefs.ErrInvalidArgument
	case CodeBusy:
		return errdefs.ErrUnavailable
	}
	return errdefs.ErrUpstream
}

// Kind names the refusal precisely.
func (e *Error) Kind() string {
	switch e.Code {
	case CodeDenied:
		return "command-denied"
	case CodeNotFound, CodeNotExecutable, CodeCannotStart:
		return "command-not-startable"
	case CodeBadRequest:
		return "guest-refused"
	case CodeBusy:
		return "agent-busy"
	}
	return "agent-error"
}

// Explain is what users are told: the seed's message for a denied command,
// the command and the reason for one that cannot start, else the message.
func (e *Error) Explain() string {
	switch e.Code {
	case CodeDenied:
		return DeniedMessage
	case CodeNotFound, CodeNotExecutable, CodeCannotStart:
		return e.Command + ": " + e.Message
	case CodeBadRequest, CodeBusy:
		return e.Message
	}
	return e.Error()
}

// Details are the command (and the active persona, or the reason it
// cannot start) of an exec refusal.
func (e *Error) Details() map[string]any {
	switch e.Code {
	case CodeDenied:
		return map[string]any{"command": e.Command, "persona": e.Persona}
	case CodeNotFound, CodeNotExecutable, CodeCannotStart:
		return map[string]any{"command": e.Command, "reason": e.Code}
	}
	return nil
}

// Marshal encodes a JSON message payload.
func Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes a JSON message payload. Unknown fields are ignored so
// that newer peers may add fields within a protocol version.
func Unmarshal(payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return &Error{Code: CodeBadRequest, Message: err.Error()}
	}
	return nil
}

// SoftwareVersion is the vmpersona release both daemons report (set at build
// time with -ldflags "-X github.com/vmpersona/vmpersona/protocol.SoftwareVersion=…").
var SoftwareVersion = "0.1.0-dev"
