package main

import (
	"context"
	"fmt"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// fleetRollout asks every host to roll persona out to its own instances and
// follows each host's progress: a line per instance as hosts report them
// (HOST/INSTANCE), a line per host when it is done, until every host
// present is done or skipped, or wait has passed.
func fleetRollout(ctx context.Context, a *app, c *apiclient.Client, persona string, q apitypes.FleetRolloutRequest, wait time.Duration) error {
	ro, err := c.RequestFleetRollout(ctx, persona, q)
	if err != nil {
		return err
	}
	if !a.json() {
		a.printf("fleet rollout %s of %s@%d asked; following each host\n", ro.ID, ro.Persona, ro.Revision)
	}
	printed := map[string]int{}
	finished := map[string]bool{}
	deadline := time.Now().Add(wait)
	var st apitypes.FleetRolloutStatus
	for {
		st, err = c.FleetRollout(ctx, persona)
		if err != nil {
			return err
		}
		if st.Rollout.ID != ro.ID {
			return &detailedError{msg: fmt.Sprintf("another fleet rollout of %s (%s) was asked since; follow it with vmpersonactl rollout --fleet again", persona, st.Rollout.ID), err: apiclient.ErrConflict}
		}
		all := true
		for _, h := range st.Hosts {
			if !a.json() {
				for _, r := range h.Results[min(printed[h.Host], len(h.Results)):] {
					r.Instance = h.Host + "/" + r.Instance
					if err := writeRolloutLine(a.io.out, r); err != nil {
						return err
					}
				}
				printed[h.Host] = len(h.Results)
			}
			done := h.State == apitypes.FleetRolloutDone || h.State == apitypes.FleetRolloutSkipped
			if done && !finished[h.Host] && !a.json() {
				switch {
				case h.State == apitypes.FleetRolloutSkipped:
					a.printf("host %s: skipped: %s\n", h.Host, h.Reason)
				case h.Summary != nil:
					s := *h.Summary
					a.printf("host %s: %d instances, %d activated, %d in sync, %d failed, %d pending, %d skipped\n",
						h.Host, s.Total, s.Activated, s.InSync, s.Failed, s.Pending, s.Skipped)
				default:
					a.printf("host %s: failed: %s\n", h.Host, h.Reason)
				}
			}
			finished[h.Host] = finished[h.Host] || done
			all = all && done
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			var waiting []string
			for _, h := range st.Hosts {
				if !finished[h.Host] {
					waiting = append(waiting, h.Host+" ("+h.State+")")
				}
			}
			return fmt.Errorf("fleet rollout %s: still waiting after %s for %v; follow it with GET /fleet/rollouts/%s", ro.ID, wait, waiting, persona)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	if a.json() {
		if err := writeJSON(a.io.out, st); err != nil {
			return err
		}
	}
	failed, total := 0, 0
	for _, h := range st.Hosts {
		if h.Summary != nil {
			failed += h.Summary.Failed
			total += h.Summary.Total
		} else if h.State == apitypes.FleetRolloutDone {
			failed++
		}
	}
	if failed > 0 {
		return &detailedError{msg: fmt.Sprintf("fleet rollout of %s: %d of %d instances failed", persona, failed, total), err: apiclient.ErrConflict}
	}
	return nil
}
