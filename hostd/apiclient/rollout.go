package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// DryRun asks what activating persona on an instance would change; nothing
// changes. The guest computes it against what it holds.
func (c *Client) DryRun(ctx context.Context, id, persona string) (apitypes.DryRunResult, error) {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	var out apitypes.DryRunResult
	path := "/instances/" + seg(id) + "/personas/" + seg(persona) + "/activate"
	if _, err := c.call(ctx, http.MethodPost, path, url.Values{"dry_run": {"true"}}, nil, nil, &out); err != nil {
		return apitypes.DryRunResult{}, err
	}
	return out, nil
}

// Rollout rolls persona's current revision out (streamed): onResult, when
// set, receives each instance's result as it finishes; the summary is
// returned at the end. The rollout lasts as long as its activations: ctx
// bounds it, the client's timeout does not.
func (c *Client) Rollout(ctx context.Context, persona string, req apitypes.RolloutRequest, onResult func(apitypes.RolloutResult)) (apitypes.RolloutSummary, error) {
	resp, err := c.request(ctx, http.MethodPost, "/personas/"+seg(persona)+"/rollout", url.Values{"stream": {"true"}},
		http.Header{"Accept": {"application/x-ndjson, application/json, application/problem+json"}}, req)
	if err != nil {
		return apitypes.RolloutSummary{}, err
	}
	defer resp.Body.Close()
	ct, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	if isJSON(ct) {
		// A server that does not stream answers everything at once.
		var out apitypes.RolloutAnswer
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&out); err != nil {
			return apitypes.RolloutSummary{}, c.streamErr(err)
		}
		for _, r := range out.Results {
			if onResult != nil {
				onResult(r)
			}
		}
		return out.Summary, nil
	}
	if strings.TrimSpace(ct) != "application/x-ndjson" {
		return apitypes.RolloutSummary{}, fmt.Errorf("%w: rollout stream answered %q", ErrProtocol, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxStreamLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var l apitypes.RolloutLine
		if err := json.Unmarshal(line, &l); err != nil {
			return apitypes.RolloutSummary{}, fmt.Errorf("%w: rollout stream line: %v", ErrProtocol, err)
		}
		switch l.Kind {
		case apitypes.RolloutLineResult:
			if l.RolloutResult != nil && onResult != nil {
				onResult(*l.RolloutResult)
			}
		case apitypes.RolloutLineSummary:
			if l.Summary == nil {
				return apitypes.RolloutSummary{}, fmt.Errorf("%w: rollout summary line without a summary", ErrProtocol)
			}
			return *l.Summary, nil
		case apitypes.RolloutLineError:
			return apitypes.RolloutSummary{}, &apitypes.Problem{Status: l.Status, Title: "Rollout failed", Detail: l.Detail}
		}
	}
	if err := sc.Err(); err != nil {
		return apitypes.RolloutSummary{}, c.streamErr(err)
	}
	return apitypes.RolloutSummary{}, fmt.Errorf("%w: the rollout stream ended without a summary", ErrProtocol)
}
