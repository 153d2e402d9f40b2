package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/assignment"
)

// appendTo is a repeatable flag's action: each value is added to list.
func appendTo(list *[]string) func(string) error {
	return func(v string) error { *list = append(*list, v); return nil }
}

func assignmentCommand() *command {
	return &command{
		name:    "assignment",
		summary: "assign personas to instances by name, UUID, labels or host",
		long: `An assignment gives the instances its selector selects a persona, with a
priority for overlaps: each host's reconciler gives every one of its
instances the persona of the highest-priority assignment selecting it (at
equal priority, the name sorting first). An instance activated or
deactivated explicitly keeps that choice. In fleet mode the assignments are
the fleet's (etcd) and apply on every host.`,
		example: `vmpersonactl assignment set web-hardened --persona hardened --label role=web --priority 10
vmpersonactl assignment set rack4 --persona staging --host-label rack=4
vmpersonactl assignment list
vmpersonactl assignment delete web-hardened`,
		subs: []*command{assignmentListCommand(), assignmentSetCommand(), assignmentDeleteCommand()},
	}
}

func describeSelector(s apitypes.AssignmentSelector) string {
	var parts []string
	labels := func(prefix string, m map[string]string) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			parts = append(parts, prefix+k+"="+m[k])
		}
	}
	for _, v := range s.Instances {
		parts = append(parts, "instance="+v)
	}
	for _, v := range s.UUIDs {
		parts = append(parts, "uuid="+v)
	}
	labels("label:", s.InstanceLabels)
	for _, v := range s.Hosts {
		parts = append(parts, "host="+v)
	}
	labels("host-label:", s.HostLabels)
	return strings.Join(parts, ",")
}

func assignmentListCommand() *command {
	return &command{
		name: "list", summary: "list the assignments",
		long:    `Lists the assignments: name, persona, priority, selector and revision.`,
		example: `vmpersonactl assignment list -o json`,
		setup: query[[]apitypes.Assignment]{args: "no arguments", ask: noArg((*apiclient.Client).ListAssignments),
			doc: func(l []apitypes.Assignment) any { return apitypes.AssignmentList{Assignments: l} },
			text: func(a *app, list []apitypes.Assignment) error {
				t := newTable(a.io.out, a.header("NAME", "PERSONA", "PRIORITY", "SELECTOR", "REVISION")...)
				for _, x := range list {
					t.row(x.Name, x.Persona, strconv.Itoa(x.Priority), describeSelector(x.Selector), strconv.FormatUint(x.Revision, 10))
				}
				return t.flush()
			}}.setup,
	}
}

func assignmentSetCommand() *command {
	return &command{
		name: "set", args: "NAME", summary: "create or replace an assignment",
		long: `Creates the assignment NAME, or replaces it, with the persona and the
selector given. Every criterion given must hold; a repeated --instance,
--uuid or --host holds when any of its values does; every --label and
--host-label must be carried.`,
		example: `vmpersonactl assignment set web --persona hardened --label role=web --priority 10
vmpersonactl assignment set one-vm --persona staging --instance vm7 --priority 100`,
		setup: func(fs *flag.FlagSet) runner {
			persona := fs.String("persona", "", "`NAME` of the persona to assign (required)")
			priority := fs.Int("priority", 0, "`N`: the highest priority wins where assignments overlap")
			ifMatch := fs.Uint64("if-match", 0, "only replace revision `N` (0: any)")
			var instances, uuids, labels, hosts, hostLabels []string
			fs.Func("instance", "select the instance `NAME` (repeatable)", appendTo(&instances))
			fs.Func("uuid", "select the libvirt domain `UUID` (repeatable)", appendTo(&uuids))
			fs.Func("label", "select instances labelled `KEY=VALUE` (repeatable: all must hold)", appendTo(&labels))
			fs.Func("host", "select instances of the fleet host `NAME` (repeatable)", appendTo(&hosts))
			fs.Func("host-label", "select instances of hosts labelled `KEY=VALUE` (repeatable: all must hold)", appendTo(&hostLabels))
			var asg apitypes.Assignment
			return query[apitypes.Assignment]{args: "NAME", min: 1, max: 1,
				check: func(*app) (err error) {
					if *persona == "" {
						return usageErrorf("--persona is required")
					}
					asg = apitypes.Assignment{Persona: *persona, Priority: *priority,
						Selector: apitypes.AssignmentSelector{Instances: instances, UUIDs: uuids, Hosts: hosts}}
					if len(labels) > 0 {
						if asg.Selector.InstanceLabels, err = assignment.ParseLabels("--label", labels); err != nil {
							return usageErrorf("%v", err)
						}
					}
					if len(hostLabels) > 0 {
						if asg.Selector.HostLabels, err = assignment.ParseLabels("--host-label", hostLabels); err != nil {
							return usageErrorf("%v", err)
						}
					}
					return nil
				},
				ask: func(ctx context.Context, c *apiclient.Client, args []string) (apitypes.Assignment, error) {
					asg.Name = args[0]
					return c.PutAssignment(ctx, asg, *ifMatch, "")
				},
				text: func(a *app, out apitypes.Assignment) error {
					fmt.Fprintf(a.io.out, "assignment %s: persona %s, priority %d, %s (revision %d)\n",
						out.Name, out.Persona, out.Priority, describeSelector(out.Selector), out.Revision)
					return nil
				}}.run
		},
	}
}

func assignmentDeleteCommand() *command {
	return &command{
		name: "delete", args: "NAME", summary: "delete an assignment",
		long: `Deletes the assignment NAME. The instances it selected keep their desired
persona (nothing is deactivated); another assignment that selects them
applies from then on.`,
		example: `vmpersonactl assignment delete web`,
		setup: func(fs *flag.FlagSet) runner {
			ifMatch := fs.Uint64("if-match", 0, "only delete revision `N` (0: any)")
			return func(ctx context.Context, a *app, args []string) error {
				c, err := a.connect(args, 1, 1, "NAME")
				if err != nil {
					return err
				}
				if err := c.DeleteAssignment(ctx, args[0], *ifMatch); err != nil {
					return err
				}
				if !a.json() {
					fmt.Fprintf(a.io.out, "assignment %s deleted\n", args[0])
				}
				return nil
			}
		},
	}
}

func instanceLabelCommand() *command {
	return &command{
		name: "label", summary: "set or remove a libvirt domain's labels", args: "INSTANCE KEY=VALUE|KEY-…",
		complete: []argKind{argInstance},
		long: `Sets (KEY=VALUE) or removes (KEY-) labels of INSTANCE, a libvirt domain; the
others stay. Labels are kept in the domain's metadata and are what
assignments select by (--label). A static or QMP instance's labels come
from its --instance/--qmp flag. Needs the admin role.`,
		example: `vmpersonactl instance label web01 role=web tier=frontend
vmpersonactl instance label web01 tier-`,
		setup: query[instanceLabels]{args: "INSTANCE KEY=VALUE|KEY-…", min: 2, max: -1, ask: setLabels,
			doc: func(l instanceLabels) any { return apitypes.InstanceLabels{Labels: l.labels} },
			text: func(a *app, l instanceLabels) error {
				fmt.Fprintf(a.io.out, "%s: labels %s\n", l.id, labelText(l.labels))
				return nil
			}}.setup,
	}
}

// instanceLabels are an instance's labels as the daemon answered them.
type instanceLabels struct {
	id     string
	labels map[string]string
}

// setLabels sets (KEY=VALUE) and removes (KEY-) labels of instance args[0],
// keeping its others.
func setLabels(ctx context.Context, c *apiclient.Client, args []string) (instanceLabels, error) {
	in, err := c.GetInstance(ctx, args[0])
	if err != nil {
		return instanceLabels{}, err
	}
	labels := maps.Clone(in.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	var set []string
	for _, arg := range args[1:] {
		if k, ok := strings.CutSuffix(arg, "-"); ok && !strings.Contains(arg, "=") {
			delete(labels, k)
			continue
		}
		set = append(set, arg)
	}
	add, err := assignment.ParseLabels("labels", set)
	if err != nil {
		return instanceLabels{}, usageErrorf("%v", err)
	}
	maps.Copy(labels, add)
	out, err := c.SetInstanceLabels(ctx, in.ID, labels)
	return instanceLabels{id: in.ID, labels: out}, err
}

// labelText is labels as k=v,k=v, sorted.
func labelText(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}
