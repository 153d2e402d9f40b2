package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// Fleet mode: the persona catalogue lives in etcd and this host serves a
// local copy of it. FleetLink is what the API asks of the fleet backend.
type FleetLink interface {
	// FleetState is the etcd revision of the local copy and, while etcd is
	// unreachable, since when the copy is stale (zero while connected).
	FleetState() (revision int64, staleSince time.Time)
	// ActivationAllowed is nil unless activations are refused while etcd
	// is unreachable (--fleet-offline-activation=refuse).
	ActivationAllowed() error
	// FleetInstances is every host's instances as the hosts published them.
	FleetInstances(ctx context.Context) ([]apitypes.Instance, error)
	// FleetHosts is the hosts present in the fleet.
	FleetHosts(ctx context.Context) ([]apitypes.FleetHost, error)
	// RequestRollout asks every host to roll persona's current revision
	// out to its instances; FleetRollout reads each host's progress.
	RequestRollout(persona string, q apitypes.FleetRolloutRequest, actor string) (apitypes.FleetRollout, error)
	FleetRollout(ctx context.Context, persona string) (apitypes.FleetRolloutStatus, error)
}

// Response headers of every authenticated answer in fleet mode.
const (
	HeaderFleetRevision   = "Vmpersona-Fleet-Revision"
	HeaderFleetStaleSince = "Vmpersona-Fleet-Stale-Since"
	// HeaderIdempotencyKey on a persona create or update names the request:
	// a retry with the same key after an answer was lost (a timeout, a 503
	// whose outcome is unknown) answers what the first attempt stored
	// instead of writing twice.
	HeaderIdempotencyKey = "Idempotency-Key"
)

// setFleetHeaders says which fleet revision the answer comes from and, when
// the copy is stale, since when.
func (s *Server) setFleetHeaders(w http.ResponseWriter) {
	if s.cfg.Fleet == nil {
		return
	}
	rev, stale := s.cfg.Fleet.FleetState()
	w.Header().Set(HeaderFleetRevision, strconv.FormatInt(rev, 10))
	if !stale.IsZero() {
		w.Header().Set(HeaderFleetStaleSince, stale.UTC().Format(time.RFC3339Nano))
	}
}

// fleetActivation refuses an activation when the fleet policy says so.
func (s *Server) fleetActivation() error {
	if s.cfg.Fleet == nil {
		return nil
	}
	return s.cfg.Fleet.ActivationAllowed()
}

// requestPersonas is a store whose persona writes take a request id.
type requestPersonas interface {
	CreatePersonaRequest(p protocol.Persona, requestID string) (protocol.Persona, error)
	UpdatePersonaRequest(p protocol.Persona, ifMatch uint64, requestID string) (protocol.Persona, error)
}

func (s *Server) storeCreatePersona(r *http.Request, p protocol.Persona) (protocol.Persona, error) {
	if rp, ok := s.cfg.Store.(requestPersonas); ok {
		if id := r.Header.Get(HeaderIdempotencyKey); id != "" {
			return rp.CreatePersonaRequest(p, id)
		}
	}
	return s.cfg.Store.CreatePersona(p)
}

func (s *Server) storeUpdatePersona(r *http.Request, p protocol.Persona, ifMatch uint64) (protocol.Persona, error) {
	if rp, ok := s.cfg.Store.(requestPersonas); ok {
		if id := r.Header.Get(HeaderIdempotencyKey); id != "" {
			return rp.UpdatePersonaRequest(p, ifMatch, id)
		}
	}
	return s.cfg.Store.UpdatePersona(p, ifMatch)
}

// errNoFleet answers ?scope=fleet outside fleet mode.
var errNoFleet = errdefs.New(errdefs.ErrNotImplemented, "no-fleet", "not in fleet mode")

// listFleetInstances answers GET /instances?scope=fleet.
func (s *Server) listFleetInstances(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Fleet == nil {
		return errdefs.WithMessage(errNoFleet, "scope=fleet needs fleet mode (vmpersona-hostd --fleet-etcd)")
	}
	list, err := s.cfg.Fleet.FleetInstances(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, apitypes.InstanceList{Instances: list})
	return nil
}

// InstanceViews is this host's instances as GET /instances shows them (what
// a fleet host publishes).
func (s *Server) InstanceViews() ([]apitypes.Instance, error) {
	all := s.allInstances()
	out := make([]apitypes.Instance, 0, len(all))
	for _, is := range all {
		v, err := s.view(is)
		if err != nil {
			if errors.Is(err, errdefs.ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// fleetHosts answers GET /fleet/hosts.
func (s *Server) fleetHosts(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	if s.cfg.Fleet == nil {
		return errdefs.WithMessage(errNoFleet, "GET /fleet/hosts needs fleet mode (vmpersona-hostd --fleet-etcd)")
	}
	hosts, err := s.cfg.Fleet.FleetHosts(r.Context())
	if err != nil {
		return err
	}
	if hosts == nil {
		hosts = []apitypes.FleetHost{}
	}
	writeJSON(w, http.StatusOK, apitypes.FleetHostList{Hosts: hosts})
	return nil
}

// requestFleetRollout answers POST /fleet/rollouts/{persona}: the request
// is in etcd when it answers (202); each host then rolls the revision out
// to its own instances. The route is an addition to the contract's table,
// behind vmpersonactl rollout --fleet.
func (s *Server) requestFleetRollout(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, err := s.fleetPersona(ps, "a fleet rollout needs fleet mode (vmpersona-hostd --fleet-etcd); without it use POST /personas/{name}/rollout")
	if err != nil {
		return err
	}
	var q apitypes.FleetRolloutRequest
	if err := decodeJSON(r, &q); err != nil {
		return err
	}
	if q.MaxParallel < 0 || q.MaxParallel > reconcile.MaxParallelLimit {
		return errdefs.InvalidField("max_parallel", fmt.Sprintf("max_parallel %d: want 0 (the default, 5) to %d", q.MaxParallel, reconcile.MaxParallelLimit))
	}
	if q.MaxFailures < 0 {
		return errdefs.InvalidField("max_failures", fmt.Sprintf("max_failures %d: want 0 (the default, 1) or more", q.MaxFailures))
	}
	ro, err := s.cfg.Fleet.RequestRollout(name, q, identityOf(r).User)
	if err != nil {
		return personaErr(name, err)
	}
	w.Header().Set("Location", "/fleet/rollouts/"+url.PathEscape(name))
	writeJSON(w, http.StatusAccepted, ro)
	return nil
}

// fleetRollout answers GET /fleet/rollouts/{persona}.
func (s *Server) fleetRollout(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, err := s.fleetPersona(ps, "GET /fleet/rollouts needs fleet mode (vmpersona-hostd --fleet-etcd)")
	if err != nil {
		return err
	}
	st, err := s.cfg.Fleet.FleetRollout(r.Context(), name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// fleetPersona is the persona a fleet route names in its path, checked;
// without fleet mode the request is refused, saying why (msg).
func (s *Server) fleetPersona(ps httprouter.Params, msg string) (string, error) {
	if s.cfg.Fleet == nil {
		return "", errdefs.WithMessage(errNoFleet, msg)
	}
	name := ps.ByName("persona")
	return name, validate.Name(name)
}
