package main

import (
	"context"
	"flag"
	"strconv"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

func fleetCommand() *command {
	return &command{
		name:    "fleet",
		summary: "the fleet of hosts sharing personas through etcd",
		long: `In fleet mode (vmpersona-hostd --fleet-etcd) the hosts share their persona
catalogue through etcd. "fleet hosts" lists the hosts present (their
presence in etcd, kept on a lease); "instances --fleet" lists every host's
instances.`,
		example: `vmpersonactl fleet hosts
vmpersonactl instances --fleet`,
		subs: []*command{fleetHostsCommand()},
	}
}

func fleetHostsCommand() *command {
	return &command{
		name: "hosts", summary: "list the hosts present in the fleet",
		long: `Lists the hosts whose vmpersona-hostd is present in the fleet: name,
version, API address, the etcd revision of its copy of the catalogue, and
when it started. A host that stops renewing its lease leaves the list.`,
		example: `vmpersonactl fleet hosts
vmpersonactl fleet hosts -o json`,
		setup: func(fs *flag.FlagSet) runner {
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
					return err
				}
				c, err := a.api()
				if err != nil {
					return err
				}
				hosts, err := c.ListFleetHosts(ctx)
				if err != nil {
					return err
				}
				if a.json() {
					return writeJSON(a.io.out, apitypes.FleetHostList{Hosts: hosts})
				}
				t := newTable(a.io.out, a.header("HOST", "VERSION", "API", "REVISION", "STARTED")...)
				for _, h := range hosts {
					t.row(h.Host, h.Version, h.APIAddress, strconv.FormatInt(h.AppliedRevision, 10), h.StartedAt.Format(time.RFC3339))
				}
				return t.flush()
			}
		},
	}
}
