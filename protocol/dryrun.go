package protocol

// DryRun asks the guest what activating Persona would change, computed
// against what it holds now; nothing changes (host → guest). Guests
// announce it with the capability CapDryRun; older guests answer
// CodeUnsupportedType.
type DryRun struct {
	Persona  Persona `json:"persona"`
	Revision uint64  `json:"revision"`
}

// PersonaRef names a persona at a revision.
type PersonaRef struct {
	Name     string `json:"name"`
	Revision uint64 `json:"revision"`
}

// Kinds of an EnvChange.
const (
	ChangeAdded   = "added"
	ChangeRemoved = "removed"
	ChangeChanged = "changed"
)

// EnvChange is one environment variable an activation would change, in the
// environment commands get. Values of variables whose names look secret are
// replaced by MaskedValue.
type EnvChange struct {
	Name   string `json:"name"`
	Change string `json:"change"` // ChangeAdded, ChangeRemoved, ChangeChanged
	Old    string `json:"old,omitempty"`
	New    string `json:"new,omitempty"`
	Masked bool   `json:"masked,omitempty"`
}

// MaskedValue stands for the value of a secret-looking variable in a diff.
const MaskedValue = "********"

// ListChange is what an activation would add to and remove from a list
// (restrictions, allowlist) or a map's keys (overrides: changed keys keep
// their name and get a new target).
type ListChange struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Changed []string `json:"changed,omitempty"`
}

// ActivationDiff answers DryRun (guest → host): what the activation would
// change in the guest as it is now.
type ActivationDiff struct {
	From *PersonaRef `json:"from"` // nil: no persona now
	To   PersonaRef  `json:"to"`
	// Unchanged: the guest holds this persona's revision already.
	Unchanged    bool        `json:"unchanged"`
	Environment  []EnvChange `json:"environment"`
	Restrictions ListChange  `json:"restrictions"`
	Overrides    ListChange  `json:"overrides"`
	Allowlist    ListChange  `json:"allowlist"`
	// Scripts names the scripts the activation would run, in order: "pre",
	// "post".
	Scripts []string `json:"scripts"`
}
