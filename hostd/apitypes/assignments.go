package apitypes

import (
	"time"

	"github.com/vmpersona/vmpersona/hostd/assignment"
)

// Assignment gives the instances its selector selects a persona: GET, PUT
// /assignments/{name}, each entry of GET /assignments. Among the
// assignments selecting one instance the highest priority wins (at equal
// priority, the name that sorts first); an explicit activation or
// deactivation of that instance still wins for it.
type Assignment = assignment.Assignment

// AssignmentSelector says which instances an assignment applies to: every
// criterion given must hold; a list holds when any entry does; a label map
// when every key has that value.
type AssignmentSelector = assignment.Selector

// AssignmentList answers GET /assignments: assignments sorted by name.
type AssignmentList struct {
	Assignments []Assignment `json:"assignments"`
}

// InstanceLabels is the body of PUT /instances/{id}/labels and its answer:
// the instance's labels, which assignments select by.
type InstanceLabels struct {
	Labels map[string]string `json:"labels"`
}

// FleetRolloutRequest is the body of POST /fleet/rollouts/{persona}: each
// host rolls the persona's current revision out to its own instances
// desiring it.
type FleetRolloutRequest struct {
	// DryRun changes nothing; each host reports each instance's diff.
	DryRun bool `json:"dry_run,omitempty"`
	// MaxParallel bounds the instances each host activates at once (0: 5).
	MaxParallel int `json:"max_parallel,omitempty"`
	// MaxFailures: a host starts no new instance once this many of its
	// own have failed (0: 1).
	MaxFailures int `json:"max_failures,omitempty"`
}

// FleetRollout is a rollout asked of every host: the answer of POST
// /fleet/rollouts/{persona}.
type FleetRollout struct {
	ID          string    `json:"id"`
	Persona     string    `json:"persona"`
	Revision    uint64    `json:"revision"`
	DryRun      bool      `json:"dry_run,omitempty"`
	MaxParallel int       `json:"max_parallel,omitempty"`
	MaxFailures int       `json:"max_failures,omitempty"`
	Actor       string    `json:"actor,omitempty"`
	RequestedAt time.Time `json:"requested_at"`
}

// States of one host in a fleet rollout.
const (
	FleetRolloutPending = "pending" // the host has not reported on this rollout yet
	FleetRolloutRunning = "running"
	FleetRolloutDone    = "done"
	FleetRolloutSkipped = "skipped" // not run: the persona moved on (Reason says)
)

// FleetRolloutHost is one host's progress in a fleet rollout.
type FleetRolloutHost struct {
	Host string `json:"host"`
	// State is one of the FleetRollout* states.
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
	// Summary counts the host's instances so far (final once done).
	Summary   *RolloutSummary `json:"summary,omitempty"`
	Results   []RolloutResult `json:"results,omitempty"`
	UpdatedAt time.Time       `json:"updated_at,omitzero"`
}

// FleetRolloutStatus answers GET /fleet/rollouts/{persona}: the last fleet
// rollout of the persona and each present host's progress in it.
type FleetRolloutStatus struct {
	Rollout FleetRollout       `json:"rollout"`
	Hosts   []FleetRolloutHost `json:"hosts"`
}
