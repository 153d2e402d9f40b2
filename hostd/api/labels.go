package api

import (
	"bytes"
	"context"
	"net/http"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Instance labels are what assignments select by. A libvirt domain's are
// kept in its metadata (PUT /instances/{id}/labels writes them there); a
// static or QMP instance's come from its --instance/--qmp flag. The route
// is an addition to the contract's table: assignments select by instance
// labels, and the issue asks that vmpersonactl can set them.

// Labeler writes a libvirt domain's labels (its metadata).
type Labeler interface {
	SetLabels(ctx context.Context, domain string, labels map[string]string) error
}

func (s *Server) setInstanceLabels(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	is, err := s.resolve(ps.ByName("id"))
	if err != nil {
		return err
	}
	var body apitypes.InstanceLabels
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if err := assignment.CheckLabels("labels", body.Labels); err != nil {
		return err
	}
	if is.disc == nil || is.disc.Source != apitypes.SourceLibvirt {
		return problem(http.StatusConflict, "labels-from-flags", "Labels come from the flags",
			"instance "+is.name+" is not a libvirt domain: its labels come from its --instance or --qmp flag (NAME=ENDPOINT,KEY=VALUE…)", "instance_id", is.name)
	}
	if s.cfg.Labeler == nil {
		return problem(http.StatusNotImplemented, "no-libvirt", "libvirt is not enabled", "the daemon runs without --libvirt-uri")
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	if err := s.cfg.Labeler.SetLabels(ctx, is.name, body.Labels); err != nil {
		return err
	}
	s.appendAudit(store.AuditEvent{Type: protocol.AuditLabelsSet, Instance: is.name, Actor: identityOf(r).User, Detail: string(bytes.TrimSpace(encodeJSON(body.Labels)))})
	s.assignmentsChanged()
	if body.Labels == nil {
		body.Labels = map[string]string{}
	}
	writeJSON(w, http.StatusOK, body)
	return nil
}
