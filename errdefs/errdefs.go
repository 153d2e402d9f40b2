// Package errdefs holds the classes of errors both daemons share. A backend
// (the store, the agent sessions, libvirt, QMP, the wire protocol,
// validation) defines its errors as members of a class; callers test the
// class with errors.Is, and the HTTP edge turns each class into one status
// from one table. The package imports nothing but the standard library, so
// the guest daemon may use it too.
//
// A class says what kind of failure it is, not where it happened:
//
//	ErrNoDomain = errdefs.New(errdefs.ErrNotFound, "unknown-domain", "no such libvirt domain")
//
// errors.Is(err, errdefs.ErrNotFound) then holds for ErrNoDomain and for
// anything that wraps it; Kind(err) is "unknown-domain".
package errdefs

import (
	"context"
	"errors"
)

// The classes. Each is a sentinel; errors of a class wrap it.
var (
	// ErrInvalidArgument: the request is malformed (bad JSON, a bad query
	// parameter, a key the store cannot use).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrInvalid: the request is well formed but a value in it is not
	// acceptable (a persona field, a command that cannot be started). Errors
	// of this class usually name the field (see Field).
	ErrInvalid = errors.New("invalid")
	// ErrUnauthorized: the caller is not recognised.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: the caller is recognised but may not do this, or the
	// active persona refuses the command.
	ErrForbidden = errors.New("forbidden")
	// ErrNotFound: the thing named does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the thing to create exists already.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the request contradicts the current state (a second
	// default persona, deleting a persona in use, a refused activation).
	ErrConflict = errors.New("conflict")
	// ErrPreconditionFailed: a condition of the request (a revision) does
	// not hold.
	ErrPreconditionFailed = errors.New("precondition failed")
	// ErrTooLarge: the request exceeds a size limit.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable: a part needed for the request cannot be reached now
	// (the guest agent, libvirt); trying again later may work.
	ErrUnavailable = errors.New("unavailable")
	// ErrTimeout: a part did not answer in time.
	ErrTimeout = errors.New("timeout")
	// ErrCanceled: the caller gave up.
	ErrCanceled = errors.New("canceled")
	// ErrNotImplemented: this daemon is not set up to do that (libvirt
	// disabled, say).
	ErrNotImplemented = errors.New("not implemented")
	// ErrUpstream: a part the request went through (the guest agent)
	// failed in a way that is neither of the above.
	ErrUpstream = errors.New("upstream failure")
	// ErrInsufficientStorage: the host has too little free disk space to
	// take the write; reads still work, and writes do again once space
	// is freed.
	ErrInsufficientStorage = errors.New("insufficient storage")
)

// Classes lists every class, most specific first: Class answers the first
// one an error belongs to.
var Classes = []error{
	ErrInvalidArgument, ErrInvalid, ErrUnauthorized, ErrForbidden, ErrNotFound,
	ErrAlreadyExists, ErrConflict, ErrPreconditionFailed, ErrTooLarge,
	ErrUnavailable, ErrTimeout, ErrCanceled, ErrNotImplemented, ErrUpstream,
	ErrInsufficientStorage,
}

// Class returns the class err belongs to, or nil when it belongs to none.
// The context package's errors count as ErrTimeout and ErrCanceled.
func Class(err error) error {
	if err == nil {
		return nil
	}
	for _, c := range Classes {
		if errors.Is(err, c) {
			return c
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return ErrTimeout
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	}
	return nil
}

// kinded is a sentinel error of a class with a kind naming it precisely.
type kinded struct {
	class error
	kind  string
	msg   string
}

func (e *kinded) Error() string { return e.msg }
func (e *kinded) Unwrap() error { return e.class }
func (e *kinded) Kind() string  { return e.kind }

// New returns a sentinel error of class with message msg. kind is a short
// slug naming the error precisely ("unknown-domain"); it may be empty.
func New(class error, kind, msg string) error {
	return &kinded{class: class, kind: kind, msg: msg}
}

// Kind returns the kind of the first error in err's chain that has one, or
// "" when none has.
func Kind(err error) string {
	var k interface{ Kind() string }
	if errors.As(err, &k) {
		return k.Kind()
	}
	return ""
}

// Detailer is an error that carries structured facts beside its message
// (the field at fault, the instances holding a persona): an HTTP edge shows
// them as members of its problem document.
type Detailer interface {
	Details() map[string]any
}

// Details merges the details of every error in err's chain that has some;
// outer errors win over inner ones.
func Details(err error) map[string]any {
	var out map[string]any
	walk(err, func(e error) {
		d, ok := e.(Detailer)
		if !ok {
			return
		}
		for k, v := range d.Details() {
			if out == nil {
				out = map[string]any{}
			}
			if _, seen := out[k]; !seen {
				out[k] = v
			}
		}
	})
	return out
}

// Field returns the "field" detail of err: the request field at fault.
func Field(err error) string {
	f, _ := Details(err)["field"].(string)
	return f
}

// walk visits err and everything it wraps, depth first, outer first.
func walk(err error, f func(error)) {
	if err == nil {
		return
	}
	f(err)
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		walk(u.Unwrap(), f)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			walk(e, f)
		}
	}
}

// detailed adds details to an error.
type detailed struct {
	err     error
	details map[string]any
}

func (e *detailed) Error() string           { return e.err.Error() }
func (e *detailed) Unwrap() error           { return e.err }
func (e *detailed) Details() map[string]any { return e.details }

// WithDetails returns err with the key/value pairs kv (key, value, key,
// value…) as details. A nil err stays nil.
func WithDetails(err error, kv ...any) error {
	if err == nil {
		return nil
	}
	d := make(map[string]any, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		if k, ok := kv[i].(string); ok {
			d[k] = kv[i+1]
		}
	}
	return &detailed{err: err, details: d}
}

// InvalidField returns an error of class ErrInvalid naming the request field
// at fault.
func InvalidField(field, msg string) error {
	return WithDetails(New(ErrInvalid, "invalid-field", msg), "field", field)
}

// Explainer is an error whose message for users differs from Error(), which
// is meant for logs (a guest's refusal: users see the refusal's own text).
type Explainer interface {
	Explain() string
}

// Message returns what to tell users about err: the explanation of the
// outermost error in its chain that has one, else err.Error().
func Message(err error) string {
	var e Explainer
	if errors.As(err, &e) {
		return e.Explain()
	}
	return err.Error()
}

// withMessage replaces an error's message, keeping what it wraps.
type withMessage struct {
	err error
	msg string
}

func (e *withMessage) Error() string { return e.msg }
func (e *withMessage) Unwrap() error { return e.err }

// WithMessage returns err with message msg: its class, kind and details
// stay those of err. A nil err stays nil.
func WithMessage(err error, msg string) error {
	if err == nil {
		return nil
	}
	return &withMessage{err: err, msg: msg}
}
