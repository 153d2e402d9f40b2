package activation

// reverter is "revert as a value": each step of a multi-step change registers
// its undo; Success keeps the change; Fail (also deferred) undoes whatever
// was registered, in reverse order, once.
type reverter struct {
	undo []func()
	done bool
}

func (r *reverter) Add(f func()) { r.undo = append(r.undo, f) }

// Success keeps every registered step.
func (r *reverter) Success() { r.done = true }

// Fail undoes the registered steps in reverse order unless Success or Fail
// was already called.
func (r *reverter) Fail() {
	if r.done {
		return
	}
	r.done = true
	for i := len(r.undo) - 1; i >= 0; i-- {
		r.undo[i]()
	}
}
