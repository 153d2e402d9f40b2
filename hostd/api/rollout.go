package api

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// MaxRolloutBody bounds a rollout request (its instance list).
const MaxRolloutBody = 4 << 20

func (s *Server) rollout(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name := ps.ByName("name")
	if err := validate.Name(name); err != nil {
		return err
	}
	stream, err := boolQuery(r, "stream")
	if err != nil {
		return err
	}
	var req apitypes.RolloutRequest
	if err := readOptionalJSON(r, &req); err != nil {
		return err
	}
	if _, err := s.cfg.Store.GetPersona(name); err != nil {
		return personaErr(name, err)
	}
	for i, id := range req.Instances {
		if id == "" {
			continue // the reconciler names the field
		}
		is, err := s.resolve(id)
		if err != nil {
			return invalid("instances", "instance %d: %v", i, toProblem(err).Detail)
		}
		if !is.managed {
			return invalid("instances", "instance %q has no managed agent", id)
		}
		req.Instances[i] = is.name
	}
	actor := identityOf(r).User
	// A rollout lasts as long as its instances' activations; it ends with
	// the request.
	ctx := r.Context()

	if !stream {
		var results []apitypes.RolloutResult
		sum, err := s.cfg.Reconciler.Rollout(ctx, name, req, actor, func(res apitypes.RolloutResult) {
			results = append(results, res)
		})
		if err != nil {
			return rolloutErr(name, err)
		}
		if results == nil {
			results = []apitypes.RolloutResult{}
		}
		writeJSON(w, http.StatusOK, apitypes.RolloutAnswer{Summary: sum, Results: results})
		return nil
	}

	out := newNDJSON(w)
	var mu sync.Mutex
	sum, err := s.cfg.Reconciler.Rollout(ctx, name, req, actor, func(res apitypes.RolloutResult) {
		mu.Lock()
		defer mu.Unlock()
		out.line(apitypes.RolloutLine{Kind: apitypes.RolloutLineResult, RolloutResult: &res})
		out.flush()
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		if !out.started {
			return rolloutErr(name, err)
		}
		p := toProblem(err)
		out.line(apitypes.RolloutLine{Kind: apitypes.RolloutLineError, Status: p.Status, Detail: p.Detail})
		return nil
	}
	out.line(apitypes.RolloutLine{Kind: apitypes.RolloutLineSummary, Summary: &sum})
	out.flush()
	return nil
}

func rolloutErr(name string, err error) error {
	var re *reconcile.RequestError
	if errors.As(err, &re) {
		return invalid(re.Field, "%s", re.Reason)
	}
	return personaErr(name, err)
}

// dryRun answers what activating p on the instance would change, computed
// by the guest against what it holds now; nothing changes.
func (s *Server) dryRun(w http.ResponseWriter, r *http.Request, inst string, p protocol.Persona) error {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	d, err := s.cfg.Reconciler.DryRun(ctx, inst, p)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Code == protocol.CodeUnsupportedType {
			return problem(http.StatusNotImplemented, "dry-run-unsupported", "The guest cannot compute a dry run",
				"the guest agent on "+inst+" predates dry runs; upgrade vmpersona-guestd", "instance_id", inst)
		}
		return err
	}
	writeJSON(w, http.StatusOK, apitypes.DryRunResult{Instance: inst, DryRun: true, Diff: d})
	return nil
}
