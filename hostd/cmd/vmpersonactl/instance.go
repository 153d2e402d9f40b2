package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

func instancesCommand() *command {
	return &command{
		name: "instances", summary: "list instances and their agents",
		long: `Lists the instances the daemon knows (libvirt domains, static and QMP
instances) with their state, the state of their guest agent, the persona
each should run (DESIRED, name@revision or "none"), the one its guest
confirms (ACTIVE) and how they compare (SYNC: in_sync, drifted, pending,
unreachable, failed). With --fleet (fleet mode), every host's instances as
the hosts published them to etcd, with a HOST column.`,
		example: `vmpersonactl instances
vmpersonactl instances --fleet
vmpersonactl instances --watch
vmpersonactl instances -o json | jq -r '.instances[] | select(.agent.state=="connected") | .id'`,
		setup: func(fs *flag.FlagSet) runner {
			fleet := fs.Bool("fleet", false, "every host's instances (fleet mode)")
			watch := addWatchFlags(fs, "keep listing: print the list again each time it changes, until interrupted")
			return watch.runner(0, 0, "no arguments", func(ctx context.Context, a *app, c *apiclient.Client, _ []string, w io.Writer, watching bool) error {
				list := c.ListInstances
				if *fleet {
					list = c.ListFleetInstances
				}
				l, err := list(ctx)
				if err != nil {
					return err
				}
				return printInstances(a, w, l, *fleet, watching)
			})
		},
	}
}

// printInstances writes the instance list as a table or, for programs, one
// document (one compact line when watching).
func printInstances(a *app, w io.Writer, list []apitypes.Instance, fleet, watching bool) error {
	if list == nil {
		list = []apitypes.Instance{}
	}
	if a.json() {
		return a.writeDoc(w, map[string]any{"instances": list}, watching)
	}
	if fleet {
		t := newTable(w, a.header("HOST", "ID", "UUID", "STATE", "AGENT", "DESIRED", "ACTIVE", "SYNC")...)
		for _, in := range list {
			t.row(in.Host, in.ID, in.UUID, in.State, in.Agent.State, desiredText(in.Desired), activeText(in.Active), in.Sync)
		}
		return t.flush()
	}
	t := newTable(w, a.header("ID", "SOURCE", "STATE", "AGENT", "DESIRED", "ACTIVE", "SYNC", "ENDPOINT")...)
	for _, in := range list {
		t.row(in.ID, in.Source, in.State, in.Agent.State, desiredText(in.Desired), activeText(in.Active), in.Sync, in.Endpoint)
	}
	return t.flush()
}

// desiredText is a desired state as name@revision, "none" for a deliberate
// none, "" while never set.
func desiredText(d apitypes.DesiredState) string {
	switch {
	case d.Persona != nil:
		return fmt.Sprintf("%s@%d", *d.Persona, d.Revision)
	case d.SetBy != "":
		return "none"
	}
	return ""
}

// activeText is what the guest holds as name@revision, "none" for none.
func activeText(a apitypes.ActualState) string {
	if a.Persona == nil {
		return "none"
	}
	return fmt.Sprintf("%s@%d", *a.Persona, a.Revision)
}

func strOrEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func instanceCommand() *command {
	return &command{
		name: "instance", summary: "show one instance, or give a libvirt domain the agent channel",
		example: `vmpersonactl instance get vm1
vmpersonactl instance enable vm1`,
		subs: []*command{{
			name: "enable", summary: "add the agent channel to a libvirt domain", args: "DOMAIN",
			complete: []argKind{argInstance},
			long: `Adds the virtio-serial channel org.vmpersona.agent.0 to DOMAIN's persistent
libvirt definition, and to the running domain when it runs, so that its
guest agent can be reached. Prints what it did. Needs the admin role.`,
			example: `vmpersonactl instance enable web01`,
			setup: query[apitypes.EnableResult]{args: "DOMAIN", min: 1, max: 1, ask: oneArg((*apiclient.Client).EnableChannel),
				text: func(a *app, res apitypes.EnableResult) error { return a.printf("%s: %s\n", res.Instance, res.Did) }}.setup,
		}, {
			name: "get", summary: "show one instance and its agent", args: "ID",
			complete: []argKind{argInstance},
			long: `Shows an instance: where it comes from, its endpoint, its guest agent
(version, capabilities, boot id, last error) and the active persona. ID is
the instance name (a libvirt domain's UUID is accepted too).`,
			example: `vmpersonactl instance get vm1
vmpersonactl instance get vm1 -o json`,
			setup: query[apitypes.Instance]{args: "ID", min: 1, max: 1, ask: oneArg((*apiclient.Client).GetInstance), text: printInstance}.setup,
		}, instanceLabelCommand()},
	}
}

// printInstance shows one instance and its agent, a line a field.
func printInstance(a *app, in apitypes.Instance) error {
	kv := &keyValues{w: a.io.out}
	kv.add("ID", in.ID)
	kv.add("Source", in.Source)
	kv.add("Endpoint", in.Endpoint)
	kv.add("State", in.State)
	kv.add("Persona", strOrEmpty(in.ActivePersona))
	kv.add("Desired", desiredText(in.Desired))
	kv.add("Active", activeText(in.Active))
	kv.add("Sync", in.Sync)
	if in.SyncReason != "" {
		kv.add("Sync reason", in.SyncReason)
	}
	if sc := in.SyncScript; sc != nil {
		kv.add("Failed script", fmt.Sprintf("exit code %d: %s", sc.ExitCode, strings.TrimSpace(sc.Stderr+sc.Stdout)))
	}
	kv.add("Agent", in.Agent.State)
	kv.add("Agent version", in.Agent.Version)
	kv.add("Capabilities", strings.Join(in.Agent.Capabilities, ", "))
	kv.add("Boot ID", in.Agent.BootID)
	kv.add("Connected", timeText(in.Agent.ConnectedAt))
	kv.add("Last error", in.Agent.LastError)
	if in.UUID != "" {
		kv.add("UUID", in.UUID)
	}
	if len(in.Labels) > 0 {
		kv.add("Labels", labelText(in.Labels))
	}
	if in.PortOpen != nil {
		kv.add("Port open", yesNo(*in.PortOpen))
	}
	if in.Reason != "" {
		kv.add("Reason", in.Reason)
	}
	return kv.flush()
}

func activateCommand() *command {
	return &command{
		name: "activate", summary: "activate a persona on an instance", args: "INSTANCE PERSONA",
		complete: []argKind{argInstance, argPersona},
		long: `Activates PERSONA on INSTANCE and answers when the guest has finished:
the pre-activation script runs, the environment and routing table change,
then the post-activation script runs. A failing pre-activation script
aborts (nothing changed); a failing post-activation script rolls back to
the previous persona. Either exits 4 and prints the script's exit code and
output.`,
		example: `vmpersonactl activate vm1 hardened
vmpersonactl activate vm1 hardened --script-timeout 2m`,
		setup: func(fs *flag.FlagSet) runner {
			st := fs.Duration("script-timeout", 0, "limit for each activation script in the guest (default: the daemon's, 5m)")
			return query[apitypes.ActivationResult]{args: "INSTANCE PERSONA", min: 2, max: 2,
				check: func(*app) error {
					if *st < 0 {
						return usageErrorf("--script-timeout must not be negative")
					}
					return nil
				},
				ask: func(ctx context.Context, c *apiclient.Client, args []string) (apitypes.ActivationResult, error) {
					res, err := c.Activate(ctx, args[0], args[1], apiclient.ActivateOptions{ScriptTimeout: *st})
					return res, activationError(err)
				},
				text: func(a *app, res apitypes.ActivationResult) error {
					return a.printf("Persona %s (revision %d) active on %s, activation %s, in %s.\n",
						res.Persona, res.Revision, res.Instance, res.ActivationID, millis(res.DurationMillis))
				}}.run
		},
	}
}

// activationError adds a refused activation's script outcome to the error.
func activationError(err error) error {
	var p *apitypes.Problem
	if !errors.As(err, &p) || !errors.Is(err, apiclient.ErrActivationRefused) {
		return err
	}
	var b strings.Builder
	b.WriteString(describe(p))
	phase := map[string]string{"pre": "pre-activation", "post": "post-activation"}[p.Phase]
	if phase == "" {
		phase = p.Phase
	}
	fmt.Fprintf(&b, "\n  result:    %s", p.Result)
	if phase != "" {
		fmt.Fprintf(&b, "\n  script:    %s", phase)
	}
	if p.ExitCode != nil {
		fmt.Fprintf(&b, "\n  exit code: %d", *p.ExitCode)
	}
	if p.Signal != "" {
		fmt.Fprintf(&b, "\n  signal:    %s", p.Signal)
	}
	if p.TimedOut {
		b.WriteString("\n  timed out: yes")
	}
	for _, s := range [][2]string{{"stdout", p.Stdout}, {"stderr", p.Stderr}} {
		if strings.TrimSpace(s[1]) == "" {
			continue
		}
		fmt.Fprintf(&b, "\n  %s:", s[0])
		for _, l := range strings.Split(strings.TrimRight(s[1], "\n"), "\n") {
			b.WriteString("\n    " + l)
		}
	}
	return &detailedError{msg: b.String(), err: err}
}

// detailedError replaces an error's message but keeps what it wraps.
type detailedError struct {
	msg string
	err error
}

func (e *detailedError) Error() string       { return e.msg }
func (e *detailedError) userMessage() string { return e.msg }
func (e *detailedError) Unwrap() error       { return e.err }

func activeCommand() *command {
	return &command{
		name: "active", summary: "show the persona active on an instance", args: "INSTANCE",
		complete: []argKind{argInstance},
		long: `Shows the persona active on INSTANCE as the guest last confirmed it, with
its revision and activation. "Stale" is yes whenever the instance is not
in sync with its desired state: no connected agent confirms it, the guest
holds something else, or the persona changed since (see "instances").`,
		example: `vmpersonactl active vm1
vmpersonactl active vm1 -o json | jq -r '.persona.name // "none"'
vmpersonactl active vm1 --watch`,
		setup: func(fs *flag.FlagSet) runner {
			watch := addWatchFlags(fs, "keep showing: print it again each time it changes, until interrupted")
			return watch.runner(1, 1, "INSTANCE", func(ctx context.Context, a *app, c *apiclient.Client, args []string, w io.Writer, watching bool) error {
				ap, err := c.ActivePersona(ctx, args[0])
				if err != nil {
					return err
				}
				return printActive(a, w, ap, watching)
			})
		},
	}
}

// printActive writes an instance's active persona for people or programs
// (one compact JSON line when watching).
func printActive(a *app, w io.Writer, ap apitypes.ActivePersona, watching bool) error {
	if a.json() {
		return a.writeDoc(w, ap, watching)
	}
	kv := &keyValues{w: w}
	kv.add("Instance", ap.Instance)
	if ap.Persona == nil {
		kv.add("Persona", "(none)")
	} else {
		kv.add("Persona", ap.Persona.Name)
		kv.add("Revision", fmt.Sprint(ap.Revision))
		kv.add("Activation", ap.ActivationID)
		if ap.ActivatedAt != nil {
			kv.add("Activated", timeText(*ap.ActivatedAt))
		}
	}
	kv.add("Stale", yesNo(ap.Stale))
	return kv.flush()
}

func deactivateCommand() *command {
	return &command{
		name: "deactivate", summary: "return an instance to no persona", args: "INSTANCE",
		complete: []argKind{argInstance},
		long: `Removes the active persona from INSTANCE: its environment, overrides and
restrictions no longer apply.`,
		example: `vmpersonactl deactivate vm1`,
		setup: query[apitypes.ActivationResult]{args: "INSTANCE", min: 1, max: 1,
			ask: func(ctx context.Context, c *apiclient.Client, args []string) (apitypes.ActivationResult, error) {
				res, err := c.Deactivate(ctx, args[0])
				return res, activationError(err)
			},
			text: func(a *app, res apitypes.ActivationResult) error {
				return a.printf("No persona active on %s (%s).\n", res.Instance, millis(res.DurationMillis))
			}}.setup,
	}
}

func versionCommand() *command {
	return &command{
		name: "version", summary: "print the client's version",
		example: `vmpersonactl version`,
		setup: func(fs *flag.FlagSet) runner {
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
					return err
				}
				if a.json() {
					return writeJSON(a.io.out, map[string]any{"client": protocol.SoftwareVersion, "protocol": protocol.Version})
				}
				_, err := fmt.Fprintf(a.io.out, "%s %s (protocol %d)\n", progName, protocol.SoftwareVersion, protocol.Version)
				return err
			}
		},
	}
}

// parseWhen reads a point in time: RFC 3339, or a duration back from now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (15m, 2h) nor a time (2026-11-26T09:00:00Z, 2026-11-26)", s)
}
