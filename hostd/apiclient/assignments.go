package apiclient

import (
	"context"
	"net/http"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// ListAssignments lists the assignments (GET /assignments), sorted by name.
func (c *Client) ListAssignments(ctx context.Context) ([]apitypes.Assignment, error) {
	return getAll(ctx, c, "/assignments", nil, func(l apitypes.AssignmentList) ([]apitypes.Assignment, string) { return l.Assignments, "" })
}

// GetAssignment reads one assignment.
func (c *Client) GetAssignment(ctx context.Context, name string) (apitypes.Assignment, error) {
	return do[apitypes.Assignment](ctx, c, 0, http.MethodGet, "/assignments/"+seg(name), nil, nil, nil)
}

// PutAssignment creates or replaces the assignment named a.Name. When
// ifMatchRev is not 0 the server refuses (ErrPreconditionFailed) unless the
// stored revision is that one. requestID, when not empty, is sent as the
// Idempotency-Key: a retry with the same id answers what the first stored.
func (c *Client) PutAssignment(ctx context.Context, a apitypes.Assignment, ifMatchRev uint64, requestID string) (apitypes.Assignment, error) {
	h := ifMatch(ifMatchRev)
	if requestID != "" {
		if h == nil {
			h = http.Header{}
		}
		h.Set("Idempotency-Key", requestID)
	}
	a.Revision, a.CreatedAt, a.UpdatedAt = 0, time.Time{}, time.Time{}
	return do[apitypes.Assignment](ctx, c, 0, http.MethodPut, "/assignments/"+seg(a.Name), nil, h, a)
}

// DeleteAssignment deletes an assignment (ifMatchRev as in PutAssignment).
func (c *Client) DeleteAssignment(ctx context.Context, name string, ifMatchRev uint64) error {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	_, err := c.call(ctx, http.MethodDelete, "/assignments/"+seg(name), nil, ifMatch(ifMatchRev), nil, nil)
	return err
}

// SetInstanceLabels replaces a libvirt domain's labels (PUT
// /instances/{id}/labels), which assignments select by.
func (c *Client) SetInstanceLabels(ctx context.Context, id string, labels map[string]string) (map[string]string, error) {
	if labels == nil {
		labels = map[string]string{}
	}
	out, err := do[apitypes.InstanceLabels](ctx, c, time.Minute, http.MethodPut, "/instances/"+seg(id)+"/labels", nil, nil, apitypes.InstanceLabels{Labels: labels})
	return out.Labels, err
}

// RequestFleetRollout asks every host of the fleet to roll persona's
// current revision out to its own instances (POST /fleet/rollouts/{persona}).
func (c *Client) RequestFleetRollout(ctx context.Context, persona string, q apitypes.FleetRolloutRequest) (apitypes.FleetRollout, error) {
	return do[apitypes.FleetRollout](ctx, c, 0, http.MethodPost, "/fleet/rollouts/"+seg(persona), nil, nil, q)
}

// FleetRollout reads the persona's last fleet rollout and each host's
// progress in it.
func (c *Client) FleetRollout(ctx context.Context, persona string) (apitypes.FleetRolloutStatus, error) {
	return do[apitypes.FleetRolloutStatus](ctx, c, 0, http.MethodGet, "/fleet/rollouts/"+seg(persona), nil, nil, nil)
}
