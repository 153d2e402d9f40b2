package apiclient

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// ListPersonas returns every persona.
func (c *Client) ListPersonas(ctx context.Context) ([]protocol.Persona, error) {
	return getAll(ctx, c, "/personas", nil, func(l apitypes.PersonaList) ([]protocol.Persona, string) { return l.Personas, l.Next })
}

// GetPersona returns one persona; its Revision is the one to send as
// If-Match when updating it.
func (c *Client) GetPersona(ctx context.Context, name string) (protocol.Persona, error) {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	var p protocol.Persona
	h, err := c.call(ctx, http.MethodGet, "/personas/"+seg(name), nil, nil, nil, &p)
	if err != nil {
		return protocol.Persona{}, err
	}
	if rev, ok := parseETag(h.Get("ETag")); ok && p.Revision == 0 {
		p.Revision = rev
	}
	return p, nil
}

// CreatePersona creates a persona and returns it as stored.
func (c *Client) CreatePersona(ctx context.Context, p protocol.Persona) (protocol.Persona, error) {
	return do[protocol.Persona](ctx, c, 0, http.MethodPost, "/personas", nil, nil, inputPersona(p))
}

// UpdatePersona replaces the persona named p.Name. When ifMatch is not 0 the
// server refuses the update (ErrPreconditionFailed) unless the stored
// revision is ifMatch.
func (c *Client) UpdatePersona(ctx context.Context, p protocol.Persona, ifMatchRev uint64) (protocol.Persona, error) {
	if p.Name == "" {
		return protocol.Persona{}, fmt.Errorf("apiclient: update persona: %w: no name", ErrBadRequest)
	}
	return do[protocol.Persona](ctx, c, 0, http.MethodPut, "/personas/"+seg(p.Name), nil, ifMatch(ifMatchRev), inputPersona(p))
}

// DeleteOptions tune a persona deletion.
type DeleteOptions struct {
	// Force deletes a persona even while it is active on instances.
	Force bool
	// IfMatch, when not 0, deletes only if the stored revision is this one.
	IfMatch uint64
}

// DeletePersona deletes a persona.
func (c *Client) DeletePersona(ctx context.Context, name string, opts DeleteOptions) error {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	var q url.Values
	if opts.Force {
		q = url.Values{"force": {"true"}}
	}
	_, err := c.call(ctx, http.MethodDelete, "/personas/"+seg(name), q, ifMatch(opts.IfMatch), nil, nil)
	return err
}

// inputPersona drops the server-kept fields, which the server ignores.
func inputPersona(p protocol.Persona) protocol.Persona {
	p.Revision = 0
	p.CreatedAt, p.UpdatedAt = time.Time{}, time.Time{}
	return p
}

// parseETag reads the revision of an ETag `"N"` (or W/"N").
func parseETag(s string) (uint64, bool) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "W/")
	s = strings.Trim(s, `"`)
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// ListInstances returns every instance the daemon knows.
// ListFleetHosts lists the hosts present in the fleet (GET /fleet/hosts).
func (c *Client) ListFleetHosts(ctx context.Context) ([]apitypes.FleetHost, error) {
	return getAll(ctx, c, "/fleet/hosts", nil, func(l apitypes.FleetHostList) ([]apitypes.FleetHost, string) { return l.Hosts, "" })
}

// ListFleetInstances lists every host's instances (GET /instances?scope=fleet,
// fleet mode).
func (c *Client) ListFleetInstances(ctx context.Context) ([]apitypes.Instance, error) {
	return getAll(ctx, c, "/instances", url.Values{"scope": {"fleet"}}, instancePage)
}

func (c *Client) ListInstances(ctx context.Context) ([]apitypes.Instance, error) {
	return getAll(ctx, c, "/instances", nil, instancePage)
}

func instancePage(l apitypes.InstanceList) ([]apitypes.Instance, string) { return l.Instances, l.Next }

// GetInstance returns one instance by name (or libvirt UUID).
func (c *Client) GetInstance(ctx context.Context, id string) (apitypes.Instance, error) {
	return do[apitypes.Instance](ctx, c, 0, http.MethodGet, "/instances/"+seg(id), nil, nil, nil)
}

// EnableChannel adds the agent channel to a libvirt domain's definition (and
// to the running domain when it runs).
func (c *Client) EnableChannel(ctx context.Context, id string) (apitypes.EnableResult, error) {
	return do[apitypes.EnableResult](ctx, c, 3*time.Minute, http.MethodPost, "/instances/"+seg(id)+"/enable", nil, nil, nil)
}

// ActivePersona returns the persona an instance holds.
func (c *Client) ActivePersona(ctx context.Context, id string) (apitypes.ActivePersona, error) {
	return do[apitypes.ActivePersona](ctx, c, 0, http.MethodGet, "/instances/"+seg(id)+"/active_persona", nil, nil, nil)
}

// Activate activates a persona on an instance and answers when the guest has
// finished. A failing script answers a *Problem wrapping ErrConflict and
// ErrActivationRefused, with Result, Phase, ExitCode and output set.
func (c *Client) Activate(ctx context.Context, id, persona string, opts ActivateOptions) (apitypes.ActivationResult, error) {
	script := guestScriptDefault
	var body any
	if opts.ScriptTimeout > 0 {
		secs := int(math.Ceil(opts.ScriptTimeout.Seconds()))
		body = apitypes.ActivateRequest{ScriptTimeoutSeconds: float64(secs)}
		script = time.Duration(secs) * time.Second
	}
	// Pre and post scripts, and on rollback the previous persona's.
	path := "/instances/" + seg(id) + "/personas/" + seg(persona) + "/activate"
	return do[apitypes.ActivationResult](ctx, c, 3*script, http.MethodPost, path, nil, nil, body)
}

// Deactivate returns an instance to no persona.
func (c *Client) Deactivate(ctx context.Context, id string) (apitypes.ActivationResult, error) {
	return do[apitypes.ActivationResult](ctx, c, 2*guestScriptDefault, http.MethodPost, "/instances/"+seg(id)+"/deactivate", nil, nil, nil)
}

// Audit returns one page of the audit log, oldest first.
func (c *Client) Audit(ctx context.Context, q AuditQuery) (apitypes.AuditPage, error) {
	v := url.Values{}
	set := func(k, val string) {
		if val != "" {
			v.Set(k, val)
		}
	}
	set("instance", q.Instance)
	set("persona", q.Persona)
	set("type", q.Type)
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	set("after", q.After)
	return do[apitypes.AuditPage](ctx, c, 0, http.MethodGet, "/audit", v, nil, nil)
}
