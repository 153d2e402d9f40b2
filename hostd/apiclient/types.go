package apiclient

import (
	"time"
)

// The requests and answers of the API are the types of package
// hostd/apitypes; this file holds only the client's own options.

// ActivateOptions tune an activation.
type ActivateOptions struct {
	// ScriptTimeout bounds each activation script in the guest (whole
	// seconds, rounded up); 0 leaves the guest's default (5 minutes).
	ScriptTimeout time.Duration
}

// AuditQuery filters the audit log (the query parameters of GET /audit).
// Zero fields do not filter.
type AuditQuery struct {
	Instance string
	Persona  string
	Type     string
	Since    time.Time
	Until    time.Time
	Limit    int
	// After is the cursor: only events after the one with this ID.
	After string
}
