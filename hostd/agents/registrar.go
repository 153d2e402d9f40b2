package agents

import (
	"errors"
	"fmt"
	"sync"
)

// Registry is the part of Manager a discovery source drives.
type Registry interface {
	Add(name string, ep Endpoint, source string) error
	Remove(name string)
	SetEndpoint(name string, ep Endpoint) error
	// Forget removes the instance of that source and deletes its record:
	// it left the host.
	Forget(name, source string)
}

// Registrar hands the instances one discovery source (libvirt, QMP) finds to
// a Registry, and remembers which it handed over, so that the source moves
// and removes only its own instances, never a static one of the same name.
// It is safe for concurrent use.
type Registrar struct {
	reg    Registry
	source string

	mu    sync.Mutex
	added map[string]string // name → endpoint given
}

// NewRegistrar returns a Registrar adding instances with the given source.
func NewRegistrar(reg Registry, source string) *Registrar {
	return &Registrar{reg: reg, source: source, added: make(map[string]string)}
}

// Manage adds the instance at ep, or moves it there when its endpoint
// changed (a domain restarted with a new socket). An instance of that name
// from another source is refused with an error saying so.
func (r *Registrar) Manage(name string, ep Endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.added[name]
	if ok && cur == ep.String() {
		return nil
	}
	var err error
	if ok {
		err = r.reg.SetEndpoint(name, ep)
	} else {
		err = r.reg.Add(name, ep, r.source)
	}
	if err != nil {
		if errors.Is(err, ErrExists) {
			return fmt.Errorf("instance name %q is already used by an instance that does not come from %s: %w", name, r.source, err)
		}
		return err
	}
	r.added[name] = ep.String()
	return nil
}

// Unmanage removes the instance if this registrar added it.
func (r *Registrar) Unmanage(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.added[name]; ok {
		delete(r.added, name)
		r.reg.Remove(name)
	}
}

// Forget removes the instance and deletes its record: the source reports
// it gone from the host (undefined, migrated away). The record goes even
// when the instance was no longer managed (a domain shut down before it was
// undefined), but never that of another source's instance of the same name.
func (r *Registrar) Forget(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.added, name)
	r.reg.Forget(name, r.source)
}

// UnmanageAll removes every instance this registrar added.
func (r *Registrar) UnmanageAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.added {
		delete(r.added, name)
		r.reg.Remove(name)
	}
}
