package apiclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// DryRun asks what activating persona on an instance would change; nothing
// changes. The guest computes it against what it holds.
func (c *Client) DryRun(ctx context.Context, id, persona string) (apitypes.DryRunResult, error) {
	path := "/instances/" + seg(id) + "/personas/" + seg(persona) + "/activate"
	return do[apitypes.DryRunResult](ctx, c, 0, http.MethodPost, path, url.Values{"dry_run": {"true"}}, nil, nil)
}

// Rollout rolls persona's current revision out (streamed): onResult, when
// set, receives each instance's result as it finishes; the summary is
// returned at the end. The rollout lasts as long as its activations: ctx
// bounds it, the client's timeout does not.
func (c *Client) Rollout(ctx context.Context, persona string, req apitypes.RolloutRequest, onResult func(apitypes.RolloutResult)) (apitypes.RolloutSummary, error) {
	resp, whole, err := c.openStream(ctx, "rollout", "/personas/"+seg(persona)+"/rollout", url.Values{"stream": {"true"}}, req)
	if err != nil {
		return apitypes.RolloutSummary{}, err
	}
	defer resp.Body.Close()
	if whole {
		// A server that does not stream answers everything at once.
		out, err := decodeWhole[apitypes.RolloutAnswer](c, resp.Body)
		if err != nil {
			return apitypes.RolloutSummary{}, err
		}
		for _, r := range out.Results {
			if onResult != nil {
				onResult(r)
			}
		}
		return out.Summary, nil
	}
	var sum apitypes.RolloutSummary
	done, err := eachLine(resp.Body, func(line []byte) (bool, error) {
		var l apitypes.RolloutLine
		if err := json.Unmarshal(line, &l); err != nil {
			return false, fmt.Errorf("%w: rollout stream line: %v", ErrProtocol, err)
		}
		switch l.Kind {
		case apitypes.RolloutLineResult:
			if l.RolloutResult != nil && onResult != nil {
				onResult(*l.RolloutResult)
			}
		case apitypes.RolloutLineSummary:
			if l.Summary == nil {
				return false, fmt.Errorf("%w: rollout summary line without a summary", ErrProtocol)
			}
			sum = *l.Summary
			return true, nil
		case apitypes.RolloutLineError:
			return false, &apitypes.Problem{Status: l.Status, Title: "Rollout failed", Detail: l.Detail}
		}
		return false, nil
	})
	switch {
	case err != nil:
		return apitypes.RolloutSummary{}, c.streamErr(err)
	case !done:
		return apitypes.RolloutSummary{}, fmt.Errorf("%w: the rollout stream ended without a summary", ErrProtocol)
	}
	return sum, nil
}
