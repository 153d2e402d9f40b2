package api

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Assignments (selector → persona, with a priority) are kept by the store:
// on one host in Badger, in fleet mode in etcd (the fleet backend), read
// from the host's copy. These routes are an addition to the contract's
// table: the issue of fleet mode asks for assignments and names no routes.

// AssignmentStore is what the assignment routes ask of the store; both the
// Badger store and the fleet backend have it.
type AssignmentStore interface {
	GetAssignment(name string) (assignment.Assignment, error)
	ListAssignments() ([]assignment.Assignment, error)
	PutAssignment(a assignment.Assignment, ifMatch uint64, requestID string) (assignment.Assignment, bool, error)
	DeleteAssignment(name string, ifMatch uint64) error
}

var errNoAssignments = errdefs.New(errdefs.ErrNotImplemented, "no-assignments", "this store keeps no assignments")

func (s *Server) assignments() (AssignmentStore, error) {
	as, ok := s.cfg.Store.(AssignmentStore)
	if !ok {
		return nil, errNoAssignments
	}
	return as, nil
}

// assignmentNamed is the assignment name in the path, checked, and the
// store that keeps assignments.
func (s *Server) assignmentNamed(ps httprouter.Params) (string, AssignmentStore, error) {
	name := ps.ByName("name")
	if err := assignment.CheckName(name); err != nil {
		return "", nil, err
	}
	as, err := s.assignments()
	return name, as, err
}

// assignmentChange is the assignment a change names in its path (checked),
// the store that keeps assignments, and the change's If-Match.
func (s *Server) assignmentChange(r *http.Request, ps httprouter.Params) (string, AssignmentStore, tagList, error) {
	name, as, err := s.assignmentNamed(ps)
	if err != nil {
		return "", nil, tagList{}, err
	}
	ifMatch, err := parseTagList(r, "If-Match")
	return name, as, ifMatch, err
}

// assignmentToMatch is the revision a change of the assignment must find
// under the request's If-Match (0: any).
func assignmentToMatch(ifMatch tagList, as AssignmentStore, name string) (uint64, error) {
	return ifMatch.revisionToMatch("assignment", name, func() (uint64, error) {
		cur, err := as.GetAssignment(name)
		return cur.Revision, assignmentErr(name, err)
	})
}

// assignmentsChanged tells the reconciler to look at every instance again.
func (s *Server) assignmentsChanged() {
	if s.cfg.Reconciler != nil {
		s.cfg.Reconciler.Reassess()
	}
}

func assignmentErr(name string, err error) error {
	if errors.Is(err, errdefs.ErrNotFound) {
		return errdefs.WithDetails(errdefs.WithMessage(err, fmt.Sprintf("no assignment named %q", name)), "assignment", name)
	}
	if errors.Is(err, errdefs.ErrPreconditionFailed) {
		return errdefs.WithDetails(err, "field", "If-Match", "assignment", name)
	}
	return err
}

func (s *Server) listAssignments(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	as, err := s.assignments()
	if err != nil {
		return err
	}
	list, err := as.ListAssignments()
	if err != nil {
		return err
	}
	if list == nil {
		list = []assignment.Assignment{}
	}
	writeJSON(w, http.StatusOK, apitypes.AssignmentList{Assignments: list})
	return nil
}

func (s *Server) getAssignment(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, as, err := s.assignmentNamed(ps)
	if err != nil {
		return err
	}
	a, err := as.GetAssignment(name)
	if err != nil {
		return assignmentErr(name, err)
	}
	w.Header().Set("ETag", etag(a.Revision))
	writeJSON(w, http.StatusOK, a)
	return nil
}

func (s *Server) putAssignment(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, as, ifMatch, err := s.assignmentChange(r, ps)
	if err != nil {
		return err
	}
	var a assignment.Assignment
	if err := decodeJSON(r, &a); err != nil {
		return err
	}
	if err := nameFromPath(&a.Name, name); err != nil {
		return err
	}
	if err := assignment.Validate(&a); err != nil {
		return err
	}
	// The store checks that the persona exists, in the write's own
	// transaction (in fleet mode: in etcd, not in this host's copy).
	want, err := assignmentToMatch(ifMatch, as, name)
	if err != nil {
		return err
	}
	out, created, err := as.PutAssignment(a, want, r.Header.Get(HeaderIdempotencyKey))
	if err != nil {
		return assignmentErr(name, err)
	}
	s.appendAudit(store.AuditEvent{Type: protocol.AuditAssignmentSet, Actor: identityOf(r).User, Persona: out.Persona,
		Detail: fmt.Sprintf("assignment %s revision %d, priority %d, selector %s", out.Name, out.Revision, out.Priority, bytes.TrimSpace(encodeJSON(out.Selector)))})
	s.assignmentsChanged()
	w.Header().Set("ETag", etag(out.Revision))
	status := http.StatusOK
	if created {
		w.Header().Set("Location", "/assignments/"+url.PathEscape(name))
		status = http.StatusCreated
	}
	writeJSON(w, status, out)
	return nil
}

func (s *Server) deleteAssignment(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, as, ifMatch, err := s.assignmentChange(r, ps)
	if err != nil {
		return err
	}
	want, err := assignmentToMatch(ifMatch, as, name)
	if err != nil {
		return err
	}
	if err := as.DeleteAssignment(name, want); err != nil {
		return assignmentErr(name, err)
	}
	s.appendAudit(store.AuditEvent{Type: protocol.AuditAssignmentDeleted, Actor: identityOf(r).User, Detail: "assignment " + name})
	s.assignmentsChanged()
	w.WriteHeader(http.StatusNoContent)
	return nil
}
