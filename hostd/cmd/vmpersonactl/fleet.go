package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/protocol"

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
vmpersonactl instances --fleet
vmpersonactl --socket /run/vmpersona/hostd.sock fleet import --from-socket /run/vmpersona-old/hostd.sock`,
		subs: []*command{fleetHostsCommand(), fleetImportCommand()},
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
		setup: query[[]apitypes.FleetHost]{args: "no arguments", ask: noArg((*apiclient.Client).ListFleetHosts),
			doc: func(hosts []apitypes.FleetHost) any { return apitypes.FleetHostList{Hosts: hosts} },
			text: func(a *app, hosts []apitypes.FleetHost) error {
				t := newTable(a.io.out, a.header("HOST", "VERSION", "API", "REVISION", "STARTED", "LABELS")...)
				for _, h := range hosts {
					labels := labelText(h.Labels)
					if labels == "" {
						labels = "-"
					}
					t.row(h.Host, h.Version, h.APIAddress, strconv.FormatInt(h.AppliedRevision, 10), h.StartedAt.Format(time.RFC3339), labels)
				}
				return t.flush()
			}}.setup,
	}
}

func fleetImportCommand() *command {
	return &command{
		name: "import", summary: "copy a host's personas into the fleet, once",
		long: `Reads every persona of a host daemon that is not (yet) in fleet mode, given
by --from-socket or --from-url, and creates each in the fleet through the
daemon vmpersonactl talks to (a host in fleet mode). A name the fleet has
already is left alone: "same" when its content is equal, "conflict" when it
differs (exit 4). Run it before starting that host with --fleet-etcd: its
first start in fleet mode replaces its personas with the fleet's.`,
		example: `vmpersonactl fleet import --from-socket /run/vmpersona-old/hostd.sock
vmpersonactl --url https://fleet-host:7443 --token-file t fleet import --from-url https://old:7443 --from-token-file t2`,
		setup: func(fs *flag.FlagSet) runner {
			fromSocket := fs.String("from-socket", "", "`PATH` of the source daemon's unix socket")
			fromURL := fs.String("from-url", "", "`URL` of the source daemon")
			fromToken := fs.String("from-token-file", "", "`FILE` holding the source daemon's bearer token")
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
					return err
				}
				cfg := apiclient.Config{Timeout: a.g.timeout, UserAgent: progName + "/" + protocol.SoftwareVersion}
				switch {
				case (*fromSocket == "") == (*fromURL == ""):
					return usageErrorf("give the source as --from-socket or --from-url (one of them)")
				case *fromSocket != "":
					cfg.URL = "unix:" + *fromSocket
				default:
					cfg.URL = *fromURL
				}
				if *fromToken != "" {
					b, err := os.ReadFile(*fromToken)
					if err != nil {
						return fmt.Errorf("read --from-token-file: %w", err)
					}
					cfg.Token = strings.TrimSpace(string(b))
				}
				src, err := apiclient.New(cfg)
				if err != nil {
					return err
				}
				dst, err := a.api()
				if err != nil {
					return err
				}
				ps, err := src.ListPersonas(ctx)
				if err != nil {
					return fmt.Errorf("source: %w", err)
				}
				t := newTable(a.io.out, a.header("PERSONA", "RESULT", "REVISION")...)
				conflicts := 0
				for _, p := range ps {
					created, err := dst.CreatePersona(ctx, p)
					switch {
					case err == nil:
						t.row(p.Name, "created", strconv.FormatUint(created.Revision, 10))
						continue
					case !errors.Is(err, apiclient.ErrConflict):
						t.flush()
						return fmt.Errorf("persona %s: %w", p.Name, err)
					}
					cur, err := dst.GetPersona(ctx, p.Name)
					if err != nil {
						t.flush()
						return fmt.Errorf("persona %s: %w", p.Name, err)
					}
					result := "same"
					if !samePersona(p, cur) {
						result = "conflict"
						conflicts++
					}
					t.row(p.Name, result, strconv.FormatUint(cur.Revision, 10))
				}
				if err := t.flush(); err != nil {
					return err
				}
				if conflicts > 0 {
					return fmt.Errorf("%d persona(s) differ in the fleet; compare and resolve them by hand: %w", conflicts, apiclient.ErrConflict)
				}
				return nil
			}
		},
	}
}
