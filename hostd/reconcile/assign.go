package reconcile

// Reassess asks the reconciler to compute every instance's desired state
// from the assignments again (after they changed).
func (r *Reconciler) Reassess() {}
