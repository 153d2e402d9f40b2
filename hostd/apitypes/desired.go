package apitypes

import (
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// Sync states: how an instance's guest compares with its desired state.
const (
	// SyncInSync: the guest holds the desired revision, the persona's latest.
	SyncInSync = "in_sync"
	// SyncDrifted: the guest holds the desired revision, but the persona
	// changed since; a rollout moves it.
	SyncDrifted = "drifted"
	// SyncPending: the desired state is not applied yet.
	SyncPending = "pending"
	// SyncUnreachable: no session with the guest's agent.
	SyncUnreachable = "unreachable"
	// SyncFailed: the last attempt to apply the desired state failed.
	SyncFailed = "failed"
)

// SyncStates lists every sync state.
var SyncStates = []string{SyncInSync, SyncDrifted, SyncPending, SyncUnreachable, SyncFailed}

// What set an instance's desired state (DesiredState.SetBy).
const (
	SetByActivation   = "activation"
	SetByDeactivation = "deactivation"
	SetByDefault      = "default" // the default persona, for an instance never seen
	SetByAdoption     = "adopted" // first seen holding a persona (or none): what it holds
	SetByRollout      = "rollout"
	SetByAssignment   = "assignment" // an assignment selecting the instance (actor "assignment:NAME")
)

// DesiredState is what an instance should run: a persona at a revision, or
// none (Persona nil) — a deliberate deactivation is a desired state too.
type DesiredState struct {
	Persona  *string `json:"persona"`
	Revision uint64  `json:"revision"`
	// SetBy says what set it; empty while the instance was never seen.
	SetBy     string    `json:"set_by,omitempty"`
	Actor     string    `json:"actor,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// ActualState is what the guest holds: confirmed by the live session, or
// the host's last record of it while the agent is away (Confirmed false).
type ActualState struct {
	Persona      *string   `json:"persona"`
	Revision     uint64    `json:"revision"`
	ActivationID string    `json:"activation_id,omitempty"`
	ActivatedAt  time.Time `json:"activated_at,omitzero"`
	// BootID is the guest's boot id when it confirmed this state.
	BootID    string `json:"boot_id,omitempty"`
	Confirmed bool   `json:"confirmed"`
}

// InstanceSync is the desired state, the actual one and how they compare,
// as GET /instances and GET /instances/{id} show them.
type InstanceSync struct {
	Desired DesiredState `json:"desired"`
	Active  ActualState  `json:"active"`
	// Sync is one of SyncStates.
	Sync string `json:"sync"`
	// SyncReason explains any sync state but in_sync.
	SyncReason string `json:"sync_reason,omitempty"`
	// LatestRevision is the desired persona's current revision.
	LatestRevision uint64 `json:"latest_revision,omitempty"`
	// SyncScript is the failing script's outcome when Sync is failed.
	SyncScript *protocol.ScriptResult `json:"sync_script,omitempty"`
	// FailedAt is when the last attempt failed.
	FailedAt time.Time `json:"failed_at,omitzero"`
}

// ActivationDiff is what an activation would change, computed by the guest
// against what it holds (values of secret-looking variables masked).
type ActivationDiff = protocol.ActivationDiff

// DryRunResult answers POST /instances/{id}/personas/{persona}/activate?dry_run=true.
type DryRunResult struct {
	Instance string         `json:"instance"`
	DryRun   bool           `json:"dry_run"`
	Diff     ActivationDiff `json:"diff"`
}

// RolloutRequest is the optional body of POST /personas/{name}/rollout.
type RolloutRequest struct {
	// DryRun changes nothing and answers each instance's diff.
	DryRun bool `json:"dry_run,omitempty"`
	// MaxParallel bounds the instances activated at once, 0 to 256 (0: 5).
	MaxParallel int `json:"max_parallel,omitempty"`
	// MaxFailures: no new instance is started once this many have failed
	// (0: 1).
	MaxFailures int `json:"max_failures,omitempty"`
	// Instances to roll out to; empty: every instance desiring the persona.
	Instances []string `json:"instances,omitempty"`
}

// Results of one instance in a rollout.
const (
	RolloutActivated  = protocol.ResultActivated  // moved to the revision
	RolloutInSync     = "in_sync"                 // held the revision already: nothing ran
	RolloutAborted    = protocol.ResultAborted    // the pre-activation script failed: nothing changed
	RolloutRolledBack = protocol.ResultRolledBack // the post-activation script failed: the previous persona is back
	RolloutFailed     = protocol.ResultFailed     // the guest could not apply it
	RolloutError      = "error"                   // no answer from the guest (deadline, session ended)
	RolloutPending    = "pending"                 // agent not connected: applies when it connects
	RolloutSkipped    = "skipped"                 // not started: max_failures was reached
	RolloutDryRun     = "dry_run"                 // dry run: see Diff
)

// RolloutResult is one instance's outcome in a rollout.
type RolloutResult struct {
	Instance string `json:"instance"`
	// Result is one of the Rollout* results.
	Result string `json:"result"`
	// From is what the guest held before; nil for none or unknown.
	From   *protocol.PersonaRef   `json:"from"`
	To     protocol.PersonaRef    `json:"to"`
	Phase  string                 `json:"phase,omitempty"`
	Script *protocol.ScriptResult `json:"script,omitempty"`
	Error  string                 `json:"error,omitempty"`
	// Diff is the guest's answer in a dry run.
	Diff           *ActivationDiff `json:"diff,omitempty"`
	DurationMillis float64         `json:"duration_ms"`
}

// Failed reports whether the result counts against max_failures.
func (r RolloutResult) Failed() bool {
	switch r.Result {
	case RolloutAborted, RolloutRolledBack, RolloutFailed, RolloutError:
		return true
	}
	return false
}

// RolloutSummary sums a rollout up.
type RolloutSummary struct {
	Persona     string `json:"persona"`
	Revision    uint64 `json:"revision"`
	DryRun      bool   `json:"dry_run"`
	MaxParallel int    `json:"max_parallel"`
	MaxFailures int    `json:"max_failures"`
	Total       int    `json:"total"`
	Activated   int    `json:"activated"`
	InSync      int    `json:"in_sync"`
	Failed      int    `json:"failed"`
	Pending     int    `json:"pending"`
	Skipped     int    `json:"skipped"`
	// Stopped: max_failures was reached and instances were skipped.
	Stopped        bool    `json:"stopped"`
	DurationMillis float64 `json:"duration_ms"`
}

// RolloutAnswer answers a rollout that is not streamed.
type RolloutAnswer struct {
	Summary RolloutSummary  `json:"summary"`
	Results []RolloutResult `json:"results"`
}

// Kinds of a streamed rollout's lines.
const (
	RolloutLineResult  = "result"
	RolloutLineSummary = "summary"
	RolloutLineError   = "error"
)

// RolloutLine is one NDJSON line of a streamed rollout (?stream=true): a
// result per instance as it finishes (Kind result, the result's members
// beside kind), then the summary (Kind summary), or an error.
type RolloutLine struct {
	Kind string `json:"kind"`
	*RolloutResult
	Summary *RolloutSummary `json:"summary,omitempty"`
	// Status and Detail describe an error after the stream began.
	Status int    `json:"status,omitempty"`
	Detail string `json:"detail,omitempty"`
}
