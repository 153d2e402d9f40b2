package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

func diffCommand() *command {
	return &command{
		name: "diff", summary: "show what activating a persona on an instance would change", args: "INSTANCE PERSONA",
		complete: []argKind{argInstance, argPersona},
		long: `Asks INSTANCE's guest what activating PERSONA (its current revision) would
change, against what the guest holds now, and changes nothing: environment
variables added (+), removed (-) and changed (~), restrictions, overrides
and allowlist entries added and removed, and the scripts that would run.
Values of variables whose names contain PASSWORD, TOKEN, SECRET or KEY are
masked.`,
		example: `vmpersonactl diff vm1 hardened
vmpersonactl diff vm1 hardened -o json`,
		setup: query[apitypes.DryRunResult]{args: "INSTANCE PERSONA", min: 2, max: 2, ask: twoArgs((*apiclient.Client).DryRun),
			text: func(a *app, res apitypes.DryRunResult) error { return writeDiff(a.io.out, res.Instance, res.Diff) }}.setup,
	}
}

func refText(r *protocol.PersonaRef) string {
	if r == nil {
		return "no persona"
	}
	return fmt.Sprintf("%s@%d", r.Name, r.Revision)
}

// writeDiff prints an activation diff as a readable patch.
func writeDiff(w io.Writer, instance string, d apitypes.ActivationDiff) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s → %s@%d\n", instance, refText(d.From), d.To.Name, d.To.Revision)
	if d.Unchanged {
		b.WriteString("  the guest holds this revision already: an activation would run its scripts again and change nothing else\n")
	}
	if len(d.Environment) > 0 {
		b.WriteString("environment:\n")
		for _, e := range d.Environment {
			switch e.Change {
			case protocol.ChangeAdded:
				fmt.Fprintf(&b, "  + %s=%s\n", e.Name, e.New)
			case protocol.ChangeRemoved:
				fmt.Fprintf(&b, "  - %s=%s\n", e.Name, e.Old)
			default:
				fmt.Fprintf(&b, "  ~ %s: %s → %s\n", e.Name, e.Old, e.New)
			}
		}
	}
	list := func(title string, c protocol.ListChange) {
		if len(c.Added)+len(c.Removed)+len(c.Changed) == 0 {
			return
		}
		b.WriteString(title + ":\n")
		for _, v := range c.Added {
			b.WriteString("  + " + v + "\n")
		}
		for _, v := range c.Removed {
			b.WriteString("  - " + v + "\n")
		}
		for _, v := range c.Changed {
			b.WriteString("  ~ " + v + "\n")
		}
	}
	list("restricted commands", d.Restrictions)
	list("overrides", d.Overrides)
	list("allowed commands", d.Allowlist)
	if len(d.Scripts) == 0 {
		b.WriteString("scripts: none would run\n")
	} else {
		fmt.Fprintf(&b, "scripts: %s-activation would run\n", strings.Join(d.Scripts, "-activation, then "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func rolloutCommand() *command {
	return &command{
		name: "rollout", summary: "roll a persona's current revision out to the instances desiring it", args: "PERSONA [INSTANCE...]",
		complete: []argKind{argPersona, argInstance},
		long: `Moves the instances that desire PERSONA (or the INSTANCEs named) to its
current revision, --max-parallel at a time, and starts no new one once
--max-failures have failed: a failing script rolls that guest back to its
previous persona. Prints a line per instance as it finishes, then a
summary; exits 4 when any instance failed. --dry-run changes nothing and
prints each instance's diff. Needs the operator role.

With --fleet (fleet mode) every host rolls the revision out to its own
instances, with these limits each; the lines name HOST/INSTANCE, a line per
host says when it is done, and the command waits (--wait) until every host
present has finished.`,
		example: `vmpersonactl rollout hardened
vmpersonactl rollout hardened --max-parallel 10 --max-failures 2
vmpersonactl rollout hardened --dry-run vm1 vm2
vmpersonactl rollout hardened --fleet --max-parallel 10`,
		setup: func(fs *flag.FlagSet) runner {
			dry := fs.Bool("dry-run", false, "change nothing; print what each instance's activation would change")
			par := fs.Int("max-parallel", 0, "instances activated at once (default: the daemon's, 5)")
			fails := fs.Int("max-failures", 0, "start no new instance once this many have failed (default: the daemon's, 1)")
			fleet := fs.Bool("fleet", false, "fleet mode: every host rolls out its own instances; progress per host")
			wait := fs.Duration("wait", 10*time.Minute, "with --fleet: how long to follow the hosts' progress")
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 1, -1, "PERSONA [INSTANCE...]"); err != nil {
					return err
				}
				if *par < 0 || *fails < 0 {
					return usageErrorf("--max-parallel and --max-failures must not be negative")
				}
				if *fleet && len(args) > 1 {
					return usageErrorf("--fleet rolls out every host's instances desiring the persona; it takes no INSTANCE")
				}
				c, err := a.api()
				if err != nil {
					return err
				}
				if *fleet {
					return fleetRollout(ctx, a, c, args[0], apitypes.FleetRolloutRequest{DryRun: *dry, MaxParallel: *par, MaxFailures: *fails}, *wait)
				}
				req := apitypes.RolloutRequest{DryRun: *dry, MaxParallel: *par, MaxFailures: *fails, Instances: args[1:]}
				var results []apitypes.RolloutResult
				var werr error
				sum, err := c.Rollout(ctx, args[0], req, func(r apitypes.RolloutResult) {
					if a.json() {
						results = append(results, r)
						return
					}
					if werr == nil {
						werr = writeRolloutLine(a.io.out, r)
					}
				})
				if err != nil {
					return err
				}
				if a.json() {
					if results == nil {
						results = []apitypes.RolloutResult{}
					}
					if err := writeJSON(a.io.out, apitypes.RolloutAnswer{Summary: sum, Results: results}); err != nil {
						return err
					}
				} else {
					if werr != nil {
						return werr
					}
					if err := writeRolloutSummary(a.io.out, sum); err != nil {
						return err
					}
				}
				if sum.Failed > 0 {
					return &detailedError{msg: fmt.Sprintf("rollout of %s: %d of %d instances failed", sum.Persona, sum.Failed, sum.Total), err: apiclient.ErrConflict}
				}
				return nil
			}
		},
	}
}

// writeRolloutLine prints one instance's progress line.
func writeRolloutLine(w io.Writer, r apitypes.RolloutResult) error {
	to := fmt.Sprintf("%s@%d", r.To.Name, r.To.Revision)
	var line string
	switch r.Result {
	case apitypes.RolloutDryRun:
		if r.Diff == nil {
			line = fmt.Sprintf("%-20s dry run: no answer", r.Instance)
			break
		}
		return writeDiff(w, r.Instance, *r.Diff)
	case apitypes.RolloutActivated:
		line = fmt.Sprintf("%-20s activated    %s → %s (%s)", r.Instance, refText(r.From), to, millis(r.DurationMillis))
	case apitypes.RolloutInSync:
		line = fmt.Sprintf("%-20s in sync      holds %s already", r.Instance, to)
	case apitypes.RolloutSkipped:
		line = fmt.Sprintf("%-20s skipped      stays on %s: %s", r.Instance, refText(r.From), r.Error)
	case apitypes.RolloutPending:
		line = fmt.Sprintf("%-20s pending      %s", r.Instance, r.Error)
	default:
		line = fmt.Sprintf("%-20s %-12s %s stays on %s", r.Instance, r.Result, to, refText(r.From))
		if r.Phase != "" {
			line += fmt.Sprintf(": %s-activation script", r.Phase)
		}
		if sc := r.Script; sc != nil {
			line += fmt.Sprintf(" exited %d", sc.ExitCode)
			if out := strings.TrimSpace(sc.Stderr + sc.Stdout); out != "" {
				line += ": " + strings.ReplaceAll(out, "\n", " | ")
			}
		}
		if r.Error != "" {
			line += ": " + r.Error
		}
	}
	_, err := fmt.Fprintln(w, line)
	return err
}

func writeRolloutSummary(w io.Writer, s apitypes.RolloutSummary) error {
	what := "rollout"
	if s.DryRun {
		what = "dry run"
	}
	msg := fmt.Sprintf("%s of %s@%d: %d instances, %d activated, %d in sync, %d failed, %d pending, %d skipped (%s)",
		what, s.Persona, s.Revision, s.Total, s.Activated, s.InSync, s.Failed, s.Pending, s.Skipped, millis(s.DurationMillis))
	if s.Stopped {
		msg += fmt.Sprintf("; stopped after %d failures (max %d)", s.Failed, s.MaxFailures)
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}
