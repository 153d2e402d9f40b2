// Command vmpersona-hostd is the vmpersona host daemon: it keeps persona
// definitions and the audit log, serves the REST API, and drives the guest
// agents of the host's VMs.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/api"
	"github.com/vmpersona/vmpersona/hostd/daemon"
	"github.com/vmpersona/vmpersona/hostd/logging"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// appendTo is a repeatable flag's action: each value is added to list.
func appendTo(list *[]string) func(string) error {
	return func(v string) error { *list = append(*list, v); return nil }
}

const usage = `vmpersona-hostd — the vmpersona host daemon

Keeps persona definitions and the audit log (Badger, --data-dir), serves the
REST API (unix socket and/or TCP), and keeps one session with the guest agent
(vmpersona-guestd) of every VM it knows.

Usage:
  vmpersona-hostd [flags]

Examples:
  vmpersona-hostd --data-dir /var/lib/vmpersona --unix-socket /run/vmpersona/hostd.sock
  vmpersona-hostd --data-dir /tmp/vp --listen 127.0.0.1:7080 --token-auth-file /etc/vmpersona/tokens.csv \
      --libvirt-uri "" --instance vm1=unix:/var/lib/libvirt/qemu/channel/target/vm1.agent

Access: on the unix socket, root and members of group vmpersona are admin.
Bearer tokens (--token-auth-file) are CSV lines token,user,uid,"groups" with
groups admin, operator or viewer; the file must not be world-readable.

Flags:
`

func main() {
	fs := flag.NewFlagSet("vmpersona-hostd", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	var cfg daemon.Config
	var instances, qmp, hostLabels []string
	var logLevel, logFormat string
	var memLimit int64
	var version bool
	fs.StringVar(&cfg.DataDir, "data-dir", "/var/lib/vmpersona", "Badger directory: personas, instance records, audit log")
	fs.StringVar(&cfg.Listen, "listen", "", "TCP address of the REST API, e.g. 127.0.0.1:7080 (TLS with --tls-cert/--tls-key)")
	fs.StringVar(&cfg.UnixSocket, "unix-socket", "/run/vmpersona/hostd.sock", "REST API unix socket (a systemd-activated socket wins; empty disables)")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate for --listen")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "TLS key for --listen")
	fs.StringVar(&cfg.TokenFile, "token-auth-file", "", `bearer tokens, CSV: token,user,uid,"group1,group2"`)
	fs.StringVar(&cfg.LibvirtURI, "libvirt-uri", "qemu:///system", "libvirt connection (empty disables libvirt)")
	fs.Func("instance", "NAME=ENDPOINT[,KEY=VALUE…] of an instance not managed by libvirt (repeatable); ENDPOINT is unix:PATH or vsock:CID:PORT; KEY=VALUE are the instance's labels", appendTo(&instances))
	fs.Func("qmp", "NAME=PATH[,KEY=VALUE…] of a plain QEMU instance's QMP socket (repeatable); KEY=VALUE are the instance's labels", appendTo(&qmp))
	fs.DurationVar(&cfg.AuditRetention, "audit-retention", 90*24*time.Hour, "how long audit events are kept (0 keeps them forever)")
	fs.Uint64Var(&cfg.MinFreeBytes, "min-free-space", store.DefaultMinFreeBytes, "free bytes the data directory's file system must keep: under it writes are answered 507 until space is freed (0 disables)")
	fs.BoolVar(&cfg.AuditExec, "audit-exec", true, "audit every exec (actor, command, argument count and a redacted preview, route, exit code, duration), not only overrides and denials; a persona's audit_exec overrides it")
	fs.Float64Var(&cfg.AuditEventsPerSecond, "audit-guest-events", agents.DefaultAuditEventsPerSecond, "audit events per second each guest may have stored; past it the host answers later and the guest keeps them spooled (0: no limit)")
	fs.Float64Var(&cfg.AuditBytesPerSecond, "audit-guest-bytes", agents.DefaultAuditBytesPerSecond, "audit bytes per second each guest may have stored (0: no limit)")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", 2*time.Second, "ping interval towards guest agents; a session silent for three intervals is probed and dropped when the probe goes unanswered for three more")
	fs.Int64Var(&cfg.MaxFileBytes, "max-file-size", api.DefaultMaxFileBytes, "largest file, in bytes, vmpersonactl file push/pull moves into or out of a guest; beyond it the API answers 413")
	fs.DurationVar(&cfg.ScriptTimeout, "script-timeout", 5*time.Minute, "default timeout of activation scripts")
	fs.StringVar(&cfg.FleetEtcd, "fleet-etcd", "", "fleet mode: etcd client URLs, comma-separated; personas, the default and assignments are shared through etcd (absent: single host)")
	fs.StringVar(&cfg.FleetCA, "fleet-ca", "", "CA certificate (PEM) of the etcd cluster")
	fs.StringVar(&cfg.FleetCert, "fleet-cert", "", "this host's client certificate for etcd (mTLS)")
	fs.StringVar(&cfg.FleetKey, "fleet-key", "", "this host's client key for etcd (mTLS)")
	fs.StringVar(&cfg.FleetHost, "fleet-host", "", "this host's name in the fleet (default: the certificate's CN, else the hostname)")
	fs.Func("fleet-host-label", "KEY=VALUE: a label of this host in the fleet, which assignments select by (repeatable)", appendTo(&hostLabels))
	fs.StringVar(&cfg.FleetPrefix, "fleet-prefix", "/vmpersona/v1/", "key prefix in etcd")
	fs.StringVar(&cfg.FleetOfflineActivation, "fleet-offline-activation", "cached", "activations while etcd is unreachable: cached (from the local copy) or refuse")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "auto", "auto (journal under systemd, else text), text or json")
	fs.Int64Var(&memLimit, "memory-limit", 256<<20, "soft limit in bytes for the daemon's Go heap: past it the garbage collector works harder instead of growing (GOMEMLIMIT wins when set; 0 disables)")
	fs.BoolVar(&version, "version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if version {
		fmt.Printf("vmpersona-hostd %s (protocol %d)\n", protocol.SoftwareVersion, protocol.Version)
		return
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vmpersona-hostd: unexpected argument %q; see --help\n", fs.Arg(0))
		os.Exit(2)
	}
	logger, err := logging.New(logFormat, logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmpersona-hostd:", err)
		os.Exit(2)
	}
	slog.SetDefault(logger)
	if os.Getenv("GOMEMLIMIT") == "" && memLimit > 0 {
		debug.SetMemoryLimit(memLimit)
	}
	cfg.Logger = logger
	cfg.Instances, cfg.QMP, cfg.FleetHostLabels = instances, qmp, hostLabels

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		logger.Error("vmpersona-hostd stopped", "err", err)
		os.Exit(1)
	}
}
