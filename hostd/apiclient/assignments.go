package apiclient

import (
	"context"
	"net/http"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// ListAssignments lists the assignments (GET /assignments), sorted by name.
func (c *Client) ListAssignments(ctx context.Context) ([]apitypes.Assignment, error) {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	var out apitypes.AssignmentList
	if _, err := c.call(ctx, http.MethodGet, "/assignments", nil, nil, nil, &out); err != nil {
		return nil, err
	}
	if out.Assignments == nil {
		out.Assignments = []apitypes.Assignment{}
	}
	return out.Assignments, nil
}

// GetAssignment reads one assignment.
func (c *Client) GetAssignment(ctx context.Context, name string) (apitypes.Assignment, error) {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	var out apitypes.Assignment
	_, err := c.call(ctx, http.MethodGet, "/assignments/"+seg(name), nil, nil, nil, &out)
	return out, err
}

// PutAssignment creates or replaces the assignment named a.Name. When
// ifMatchRev is not 0 the server refuses (ErrPreconditionFailed) unless the
// stored revision is that one. requestID, when not empty, is sent as the
// Idempotency-Key: a retry with the same id answers what the first stored.
func (c *Client) PutAssignment(ctx context.Context, a apitypes.Assignment, ifMatchRev uint64, requestID string) (apitypes.Assignment, error) {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	h := ifMatch(ifMatchRev)
	if requestID != "" {
		if h == nil {
			h = http.Header{}
		}
		h.Set("Idempotency-Key", requestID)
	}
	a.Revision, a.CreatedAt, a.UpdatedAt = 0, time.Time{}, time.Time{}
	var out apitypes.Assignment
	_, err := c.call(ctx, http.MethodPut, "/assignments/"+seg(a.Name), nil, h, a, &out)
	return out, err
}

// DeleteAssignment deletes an assignment (ifMatchRev as in PutAssignment).
func (c *Client) DeleteAssignment(ctx context.Context, name string, ifMatchRev uint64) error {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	_, err := c.call(ctx, http.MethodDelete, "/assignments/"+seg(name), nil, ifMatch(ifMatchRev), nil, nil)
	return err
}
