// Package daemon wires the host daemon together: store, agent connections,
// REST API listeners, systemd readiness and watchdog, and orderly shutdown.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/coreos/go-systemd/v22/journal"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/api"
	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/auditjournal"
	"github.com/vmpersona/vmpersona/hostd/auth"
	"github.com/vmpersona/vmpersona/hostd/fleet"
	"github.com/vmpersona/vmpersona/hostd/libvirt"
	"github.com/vmpersona/vmpersona/hostd/metrics"
	"github.com/vmpersona/vmpersona/hostd/qmp"
	"github.com/vmpersona/vmpersona/hostd/reconcile"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Config is the host daemon's configuration, from its flags.
type Config struct {
	DataDir        string
	Listen         string // TCP address, empty for none
	UnixSocket     string // unix socket path, empty for none
	TLSCert        string
	TLSKey         string
	TokenFile      string
	LibvirtURI     string
	Instances      []string // NAME=ENDPOINT
	QMP            []string // NAME=PATH
	AuditRetention time.Duration
	// MinFreeBytes is the free-space watermark of the data directory:
	// under it writes are answered 507 (0 disables the check).
	MinFreeBytes uint64
	// AuditEventsPerSecond and AuditBytesPerSecond are each instance's
	// guest audit ingestion quota (0 disables it).
	AuditEventsPerSecond float64
	// AuditExec audits every exec, not only overrides and denials, unless
	// the active persona's audit_exec says otherwise.
	AuditExec           bool
	AuditBytesPerSecond float64
	Heartbeat           time.Duration
	ScriptTimeout       time.Duration
	// MaxFileBytes bounds a file pushed into or pulled from a guest
	// (0: api.DefaultMaxFileBytes).
	MaxFileBytes int64
	Logger       *slog.Logger
	// Fleet mode (--fleet-*): on when FleetEtcd is not empty.
	FleetEtcd              string // URL[,URL…]
	FleetCA                string
	FleetCert, FleetKey    string
	FleetHost              string
	FleetPrefix            string
	FleetOfflineActivation string
	FleetHostLabels        []string // KEY=VALUE
}

// SplitLabels takes the labels off an --instance or --qmp value:
// NAME=ENDPOINT[,KEY=VALUE…]. When a part after the first comma is not
// KEY=VALUE, the commas belong to the endpoint and there are no labels.
func SplitLabels(flag, v string) (string, map[string]string, error) {
	parts := strings.Split(v, ",")
	if len(parts) == 1 {
		return v, nil, nil
	}
	for _, p := range parts[1:] {
		if !strings.Contains(p, "=") {
			return v, nil, nil
		}
	}
	labels, err := assignment.ParseLabels(flag, parts[1:])
	if err != nil {
		return "", nil, fmt.Errorf("%s %q: %w", flag, v, err)
	}
	return parts[0], labels, nil
}

// ParseInstance splits a NAME=ENDPOINT flag value.
func ParseInstance(v string) (string, agents.Endpoint, error) {
	name, ep, ok := strings.Cut(v, "=")
	if !ok || name == "" || ep == "" {
		return "", agents.Endpoint{}, fmt.Errorf("--instance %q: want NAME=ENDPOINT, e.g. vm1=unix:/run/vm1.agent", v)
	}
	e, err := agents.ParseEndpoint(ep)
	if err != nil {
		return "", agents.Endpoint{}, fmt.Errorf("--instance %q: %w", v, err)
	}
	return name, e, nil
}

// Run starts the daemon and serves until ctx ends, then shuts down in order:
// listeners, agent connections, store.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	var tokens *auth.Tokens
	if cfg.TokenFile != "" {
		t, err := auth.LoadTokenFile(cfg.TokenFile)
		if err != nil {
			return fmt.Errorf("--token-auth-file: %w", err)
		}
		tokens = t
		log.Info("bearer tokens loaded", "file", cfg.TokenFile, "tokens", t.Len())
	}
	type inst struct {
		name string
		ep   agents.Endpoint
	}
	var statics []inst
	flagLabels := map[string]map[string]string{} // --instance and --qmp labels, by instance
	for _, v := range cfg.Instances {
		v, labels, err := SplitLabels("--instance", v)
		if err != nil {
			return err
		}
		name, ep, err := ParseInstance(v)
		if err != nil {
			return err
		}
		statics = append(statics, inst{name, ep})
		flagLabels[name] = labels
	}
	var qmpInstances []qmp.Instance
	for _, v := range cfg.QMP {
		v, labels, err := SplitLabels("--qmp", v)
		if err != nil {
			return err
		}
		in, err := qmp.ParseFlag(v)
		if err != nil {
			return err
		}
		qmpInstances = append(qmpInstances, in)
		flagLabels[in.Name] = labels
	}
	hostLabels, err := assignment.ParseLabels("--fleet-host-label", cfg.FleetHostLabels)
	if err != nil {
		return err
	}

	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return err
	}
	m := metrics.New()
	st, err := store.Open(cfg.DataDir, store.Options{
		Logger: log.With("component", "store"), AuditRetention: cfg.AuditRetention, MinFreeBytes: cfg.MinFreeBytes,
		OnStorageCheck: func(low bool, free uint64) {
			m.StorageFreeBytes.Set(float64(free))
			if low {
				m.StorageLow.Set(1)
			} else {
				m.StorageLow.Set(0)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("open store in %s: %w", cfg.DataDir, err)
	}
	defer st.Close()
	// Under systemd, audit events also go to the journal with their members
	// as fields (stopped before the store closes).
	if ok, _ := journal.StderrIsJournalStream(); ok {
		jctx, stopJournal := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			auditjournal.New(st, nil, log.With("component", "audit-journal")).Run(jctx, time.Second)
		}()
		defer func() { stopJournal(); <-done }()
	}

	// In fleet mode the API's store is the fleet backend: persona writes go
	// to etcd, reads (and everything else) stay on the local store, which
	// holds the copy of the catalogue.
	var backend store.Backend = st
	var fleetLink api.FleetLink
	var fb *fleet.Backend
	if cfg.FleetEtcd != "" {
		fb, err = fleet.Open(fleet.Config{
			Endpoints: fleet.ParseEndpoints(cfg.FleetEtcd), CA: cfg.FleetCA, Cert: cfg.FleetCert, Key: cfg.FleetKey,
			Host: cfg.FleetHost, Prefix: cfg.FleetPrefix, OfflineActivation: cfg.FleetOfflineActivation,
			APIAddress: cfg.Listen, Version: protocol.SoftwareVersion, HostLabels: hostLabels,
			Local: st, Registerer: m.Registry, Logger: log,
		})
		if err != nil {
			return err
		}
		defer fb.Close()
		backend, fleetLink = fb, fb
	}
	acfg := agents.DefaultConfig(st)
	acfg.Metrics, acfg.Logger = m, log.With("component", "agents")
	acfg.AuditEventsPerSecond, acfg.AuditBytesPerSecond = cfg.AuditEventsPerSecond, cfg.AuditBytesPerSecond
	acfg.QuietExec = !cfg.AuditExec
	if cfg.Heartbeat > 0 {
		acfg.Heartbeat = cfg.Heartbeat
	}
	// The reconciler converges every guest to its desired state on each
	// connect; it acts through the manager.
	// It follows the assignments: told when the fleet's catalogue changed.
	rcfg := reconcile.Config{Store: st, Metrics: m, Logger: log.With("component", "reconcile"),
		ScriptTimeout: cfg.ScriptTimeout, DefaultPersona: true, HostLabels: hostLabels}
	if fb != nil {
		rcfg.Host = fb.Host()
	}
	rec := reconcile.New(rcfg)
	if fb != nil {
		fb.SetOnChange(rec.Reassess)
	}
	acfg.Converger = rec
	mgr := agents.NewManager(acfg)
	defer mgr.Close()
	rec.Bind(mgr)
	if fb != nil {
		// Fleet rollouts (vmpersonactl rollout --fleet): this host rolls
		// out its own instances.
		fb.SetRolloutRunner(rec.Rollout)
	}
	defer rec.Close() // before the manager closes: background rollouts end first
	for _, i := range statics {
		if err := mgr.Add(i.name, i.ep, "static"); err != nil {
			return err
		}
	}
	// Discovery feeds mgr; it stops (deferred after mgr.Close, so it runs
	// first) before the manager closes.
	lvd, qw, stopDiscovery, err := startDiscovery(ctx, cfg.LibvirtURI, qmpInstances, mgr, log)
	if err != nil {
		return err
	}
	defer stopDiscovery()
	// Selectors see each instance's UUID and labels: libvirt's domain
	// metadata, else the --instance/--qmp flags.
	instanceFacts := func(name string) reconcile.Facts {
		f := reconcile.Facts{Labels: flagLabels[name]}
		if lvd != nil {
			if d, ok := lvd.Lookup(name); ok {
				f.UUID = d.UUID
				if d.Labels != nil {
					f.Labels = d.Labels
				}
			}
		}
		return f
	}
	rec.SetFacts(instanceFacts)
	rec.Reassess()

	acfgAPI := api.Config{InstanceLabels: func(name string) map[string]string { return instanceFacts(name).Labels }, Store: backend, Fleet: fleetLink, Agents: mgr, Reconciler: rec, Metrics: m, Tokens: tokens, Logger: log, DefaultScriptTimeout: cfg.ScriptTimeout, MaxFileBytes: cfg.MaxFileBytes}
	if lvd != nil {
		acfgAPI.Inventories = append(acfgAPI.Inventories, lvd)
		acfgAPI.Enabler = lvd
		acfgAPI.Labeler = lvd
	}
	if qw != nil {
		acfgAPI.Inventories = append(acfgAPI.Inventories, qw)
	}
	srv := api.New(acfgAPI)
	if fb != nil {
		// This host's instances, published for GET /instances?scope=fleet.
		fb.PublishInstances(ctx, 2*time.Second, srv.InstanceViews)
	}
	listeners, err := listen(cfg, log)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var servers []*http.Server
	errc := make(chan error, len(listeners))
	for _, l := range listeners {
		hs := api.NewHTTPServer(srv, log)
		servers = append(servers, hs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if l.tls {
				err = hs.ServeTLS(l.Listener, cfg.TLSCert, cfg.TLSKey)
			} else {
				err = hs.Serve(l.Listener)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", l.Addr(), err)
			}
		}()
		log.Info("API listening", "addr", l.Addr().String(), "network", l.Addr().Network(), "tls", l.tls)
	}

	sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	stopWatchdog := watchdog(log)
	defer stopWatchdog()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("listener failed", "err", runErr)
	}
	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, hs := range servers {
		hs.Shutdown(shutdownCtx)
	}
	wg.Wait()
	return runErr
}

// startDiscovery starts libvirt discovery (when uri is not empty) and the
// QMP watcher (when there are --qmp instances), feeding mgr. stop ends
// both and waits for them.
func startDiscovery(ctx context.Context, uri string, qmps []qmp.Instance, mgr *agents.Manager, log *slog.Logger) (lvd *libvirt.Discovery, qw *qmp.Watcher, stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	if uri != "" {
		lvd, err = libvirt.New(libvirt.Config{URI: uri, Agents: mgr, Logger: log})
		if err != nil {
			cancel()
			return nil, nil, nil, fmt.Errorf("--libvirt-uri: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := lvd.Run(ctx); err != nil {
				log.Error("libvirt discovery stopped", "err", err)
			}
		}()
	}
	if len(qmps) > 0 {
		qw, err = qmp.New(qmp.Config{Instances: qmps, Agents: mgr, Logger: log})
		if err != nil {
			stop()
			return nil, nil, nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			qw.Run(ctx)
		}()
	}
	return lvd, qw, stop, nil
}

type listener struct {
	net.Listener
	tls bool
}

// listen opens the API listeners: a systemd-activated socket wins over
// --unix-socket; --listen adds a TCP listener.
func listen(cfg Config, log *slog.Logger) ([]listener, error) {
	var out []listener
	activated, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("systemd socket activation: %w", err)
	}
	for _, l := range activated {
		if l != nil {
			out = append(out, listener{Listener: l})
		}
	}
	if len(out) > 0 {
		log.Info("using sockets from systemd socket activation", "count", len(out))
	} else if cfg.UnixSocket != "" {
		l, err := listenUnix(cfg.UnixSocket)
		if err != nil {
			return nil, err
		}
		out = append(out, listener{Listener: l})
	}
	if cfg.Listen != "" {
		if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
			return nil, errors.New("--tls-cert and --tls-key go together")
		}
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("--listen: %w", err)
		}
		out = append(out, listener{Listener: l, tls: cfg.TLSCert != ""})
	}
	if len(out) == 0 {
		return nil, errors.New("no API listener: give --unix-socket or --listen")
	}
	return out, nil
}

// listenUnix listens on path, replacing a stale socket left by a previous
// run, and makes it reachable by the vmpersona group: mode 0660, group
// vmpersona when that group exists (root:vmpersona, as a systemd socket
// unit with SocketGroup= would make it).
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("--unix-socket %s: another daemon is serving it", path)
		}
		os.Remove(path)
	}
	// The socket is made under a temporary name, given its mode and group,
	// and renamed into place: nobody sees it at path with other rights.
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("--unix-socket: %w", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("--unix-socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o660); err != nil {
		return fail(err)
	}
	if g, err := user.LookupGroup(auth.AdminGroup); err == nil {
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fail(fmt.Errorf("give it to group %s: %w", auth.AdminGroup, err))
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	return &unixListener{Listener: l, path: path}, nil
}

// unixListener removes its socket file when closed.
type unixListener struct {
	net.Listener
	path string
	once sync.Once
}

func (u *unixListener) Close() error {
	err := u.Listener.Close()
	u.once.Do(func() { os.Remove(u.path) })
	return err
}

// watchdog pings systemd's watchdog at half its interval when enabled.
func watchdog(log *slog.Logger) func() {
	interval, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return func() {}
	}
	log.Info("systemd watchdog enabled", "interval", interval)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog)
			case <-done:
				return
			}
		}
	}()
	return func() { close(done) }
}
