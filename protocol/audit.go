package protocol

// The vocabulary of audit event types: the one list both daemons, the
// host's store, its REST API and vmpersonactl's completion use. The guest
// records the first five; the host records the rest.
const (
	// Guest events.
	AuditActivation   = "activation"   // a persona became active
	AuditDeactivation = "deactivation" // the guest returned to no persona
	AuditOverride     = "override"     // a command ran its persona's override
	AuditDenial       = "denial"       // a restricted command was refused
	AuditExec         = "exec"         // a command ran as itself

	// Host events.
	AuditPersonaCreated        = "persona_created"
	AuditPersonaUpdated        = "persona_updated"
	AuditPersonaDeleted        = "persona_deleted"
	AuditActivationRequested   = "activation_requested"   // an activation asked through the API
	AuditDeactivationRequested = "deactivation_requested" // a deactivation asked through the API
	AuditDefaultActivation     = "default_activation"     // the default persona applied to a new instance
	AuditReconciled            = "reconciled"             // the host's record caught up with the guest, or the guest was converged to its desired state
	AuditAuthFailure           = "auth_failure"           // a refused API request
	AuditChannelEnabled        = "channel_enabled"        // the agent channel was added to a libvirt domain
	AuditGuestRefused          = "guest_refused"          // a guest's input was out of bounds: its session was ended
	AuditRolloutStarted        = "rollout_started"        // a rollout of a persona's revision began
	AuditRolloutFinished       = "rollout_finished"       // a rollout ended (its summary)
	AuditFilePushed            = "file_pushed"            // a file was written into a guest (path and size)
	AuditFilePulled            = "file_pulled"            // a file was read from a guest (path and size)
	AuditAssignmentSet         = "assignment_set"         // an assignment was created or replaced (persona, selector, priority)
	AuditAssignmentDeleted     = "assignment_deleted"     // an assignment was deleted
	AuditLabelsSet             = "labels_set"             // an instance's labels were replaced
)

// AuditTypes lists every audit event type.
var AuditTypes = []string{
	AuditActivation, AuditDeactivation, AuditOverride, AuditDenial, AuditExec,
	AuditPersonaCreated, AuditPersonaUpdated, AuditPersonaDeleted,
	AuditActivationRequested, AuditDeactivationRequested, AuditDefaultActivation,
	AuditReconciled, AuditAuthFailure, AuditChannelEnabled, AuditGuestRefused, AuditRolloutStarted, AuditRolloutFinished,
	AuditFilePushed, AuditFilePulled,
	AuditAssignmentSet, AuditAssignmentDeleted, AuditLabelsSet,
}
