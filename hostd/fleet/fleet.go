// Package fleet is the host daemon's fleet mode: the persona catalogue and
// the fleet-wide default persona live in etcd v3, shared by every host, and
// each host keeps a local copy of them in its Badger store.
//
// Writes (create, If-Match update, delete) are compare-and-swap
// transactions in etcd; a persona's revision (its ETag) is its key's etcd
// Version. The default persona is claimed in the same transaction as the
// persona write. Each host loads the catalogue at one etcd revision, then
// watches from the next (WithRequireLeader), applying each batch to Badger in
// one transaction with its revision (store.ApplyReplica); after a restart it
// resumes from the stored revision, after a compaction it reads everything
// again. Reads are served from the local copy; a write answers once the copy
// has its revision (a client reads its own write).
//
// While etcd is unreachable or without quorum, writes fail with the
// unavailable class (503) within WriteTimeout, reads serve the copy (Status
// says from which revision and since when it is stale), and nothing is
// written locally instead.
//
// Key layout under the prefix (default /vmpersona/v1/):
//
//	catalog/personas/<name>         persona (JSON envelope: persona, request id, host)
//	catalog/default                 name of the fleet's default persona
//	catalog/assignments/<name>      assignment (JSON envelope: assignment, request id, host)
//	catalog/rollouts/<persona>      the last fleet rollout asked of the persona
//	hosts/<host>/rollouts/<persona> the host's progress in it
//	hosts/<host>/presence           the host's presence, on a lease (JSON)
package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
)

// Offline activation policies (--fleet-offline-activation).
const (
	OfflineCached = "cached" // activations continue from the local copy
	OfflineRefuse = "refuse" // activations are refused while etcd is unreachable
)

// DefaultPrefix is the default key prefix in etcd.
const DefaultPrefix = "/vmpersona/v1/"

// ErrUnavailable: etcd cannot be reached or has no quorum; the local copy
// still answers reads.
var ErrUnavailable = errdefs.New(errdefs.ErrUnavailable, "fleet-unavailable", "the fleet store (etcd) is unavailable")

// ErrForbidden: etcd refused the write to this host's etcd user (its role
// may not write the catalogue).
var ErrForbidden = errdefs.New(errdefs.ErrForbidden, "fleet-forbidden", "this host's etcd user may not write the catalogue")

// Config configures Open.
type Config struct {
	Endpoints []string // etcd client URLs
	CA        string   // PEM file of the CA that signed etcd's certificates
	Cert, Key string   // this host's client certificate and key (mTLS)
	// Host is this host's name in the fleet; empty: the certificate's CN,
	// else the hostname.
	Host   string
	Prefix string // key prefix, DefaultPrefix when empty
	// OfflineActivation is OfflineCached (default) or OfflineRefuse.
	OfflineActivation string
	// APIAddress, Version and HostLabels (--fleet-host-label) are published
	// in the host's presence.
	APIAddress, Version string
	HostLabels          map[string]string

	// Local is the host's Badger store: it holds the local copy.
	Local *store.Store
	// Registerer receives the fleet metrics; nil registers none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger

	// WriteTimeout bounds a write in etcd (default 2 s): past it the write
	// fails with ErrUnavailable and its outcome is unknown.
	WriteTimeout time.Duration
	// ApplyTimeout bounds how long a write waits for the local copy to
	// reach its revision (default 5 s).
	ApplyTimeout time.Duration
	// ProbeInterval is how often the connection is checked (default 1 s).
	ProbeInterval time.Duration
	// LeaseTTL is the presence lease's time to live (default 10 s).
	LeaseTTL time.Duration
}

// Validate checks the flags' values.
func (c *Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("--fleet-etcd: no endpoint")
	}
	for _, e := range c.Endpoints {
		if e == "" {
			return errors.New("--fleet-etcd: empty endpoint in the list")
		}
	}
	switch c.OfflineActivation {
	case "":
		c.OfflineActivation = OfflineCached
	case OfflineCached, OfflineRefuse:
	default:
		return fmt.Errorf("--fleet-offline-activation %q: want cached or refuse", c.OfflineActivation)
	}
	if (c.Cert == "") != (c.Key == "") {
		return errors.New("--fleet-cert and --fleet-key go together")
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.Host != "" && strings.Contains(c.Host, "/") {
		return fmt.Errorf("--fleet-host %q: a host name has no /", c.Host)
	}
	return nil
}

// ParseEndpoints splits a --fleet-etcd value.
func ParseEndpoints(v string) []string {
	var out []string
	for e := range strings.SplitSeq(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// Backend is the store of a host in a fleet: personas and the default from
// etcd (served from the local copy), everything else (instance records, the
// audit log) from the local Badger store. It implements store.Backend.
type Backend struct {
	*store.Store // the local store: instances, audit, persona reads (the copy)

	cfg  Config
	cli  *clientv3.Client
	log  *slog.Logger
	host string

	keyPersonas, keyDefault, keyCatalog, keyAssignments, keyRollouts string

	// Fleet rollouts seen in the catalogue, and the queue of the runner.
	rolloutMu    sync.Mutex
	seenRollouts []apitypes.FleetRollout
	rollouts     chan apitypes.FleetRollout

	// onChange is called after the copy took a batch that changed
	// personas, the default or assignments (SetOnChange).
	onChange atomic.Pointer[func()]

	// applied is the fleet revision of the local copy; appliedCh is closed
	// (and replaced) whenever it moves.
	appliedMu sync.Mutex
	applied   int64
	appliedCh chan struct{}

	watchUp    atomic.Bool
	probeOK    atomic.Bool
	staleSince atomic.Pointer[time.Time] // nil while connected
	fullReads  atomic.Int64

	m metricSet

	cancel context.CancelFunc
	closed chan struct{} // closed by Close
	wg     sync.WaitGroup
}

var _ store.Backend = (*Backend)(nil)

// Open connects to etcd and starts keeping the local copy. It does not wait
// for etcd: until the first load the copy is what the local store holds.
// Use WaitSynced to wait for it.
func Open(cfg Config) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Local == nil {
		return nil, errors.New("fleet: no local store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 2 * time.Second
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 10 * time.Second
	}
	tlsCfg, cn, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	host := cfg.Host
	if host == "" {
		host = cn
	}
	if host == "" {
		if host, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("--fleet-host: none given and no hostname: %w", err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          cfg.WriteTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("--fleet-etcd: %w", err)
	}
	rev, err := cfg.Local.ReplicaRevision()
	if err != nil {
		cli.Close()
		return nil, err
	}
	b := &Backend{
		Store:          cfg.Local,
		cfg:            cfg,
		cli:            cli,
		log:            cfg.Logger.With("component", "fleet"),
		host:           host,
		keyCatalog:     cfg.Prefix + "catalog/",
		keyPersonas:    cfg.Prefix + "catalog/personas/",
		keyDefault:     cfg.Prefix + "catalog/default",
		keyAssignments: cfg.Prefix + "catalog/assignments/",
		keyRollouts:    cfg.Prefix + "catalog/rollouts/",
		applied:        rev,
		appliedCh:      make(chan struct{}),
		closed:         make(chan struct{}),
	}
	now := time.Now()
	b.staleSince.Store(&now)
	b.m = newMetrics(cfg.Registerer, b)
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	b.wg.Add(3)
	go func() { defer b.wg.Done(); b.replicate(ctx) }()
	go func() { defer b.wg.Done(); b.probe(ctx) }()
	go func() { defer b.wg.Done(); b.presence(ctx) }()
	b.log.Info("fleet mode", "endpoints", strings.Join(cfg.Endpoints, ","), "host", host, "prefix", cfg.Prefix,
		"local_revision", rev, "offline_activation", cfg.OfflineActivation)
	return b, nil
}

// Close stops replication and presence and closes the etcd client. The
// local store stays open: it is its opener's to close.
func (b *Backend) Close() error {
	b.cancel()
	close(b.closed)
	b.wg.Wait()
	b.m.unregister()
	return b.cli.Close()
}

// SetOnChange makes f be called (in the replication goroutine; keep it
// short) after the local copy took a batch that changed the catalogue:
// personas, the default, assignments.
func (b *Backend) SetOnChange(f func()) { b.onChange.Store(&f) }

func (b *Backend) changed() {
	if f := b.onChange.Load(); f != nil {
		(*f)()
	}
}

// Host is this host's name in the fleet.
func (b *Backend) Host() string { return b.host }

// Client is the etcd client (for fleet views and tools).
func (b *Backend) Client() *clientv3.Client { return b.cli }

// Prefix is the key prefix in etcd.
func (b *Backend) Prefix() string { return b.cfg.Prefix }

// Status is what the host knows of its link to the fleet.
type Status struct {
	Connected bool
	// Revision is the fleet revision of the local copy.
	Revision int64
	// StaleSince is when the copy stopped following etcd (zero while
	// connected).
	StaleSince time.Time
	// FullReads counts complete re-reads of the catalogue (first load,
	// compaction).
	FullReads int64
}

// Status reports the link to the fleet.
func (b *Backend) Status() Status {
	st := Status{Connected: b.connected(), Revision: b.Applied(), FullReads: b.fullReads.Load()}
	if p := b.staleSince.Load(); p != nil && !st.Connected {
		st.StaleSince = *p
	}
	return st
}

// ActivationAllowed is nil unless etcd is unreachable and the policy is
// OfflineRefuse.
func (b *Backend) ActivationAllowed() error {
	if b.cfg.OfflineActivation != OfflineRefuse || b.connected() {
		return nil
	}
	return errdefs.WithMessage(ErrUnavailable, "the fleet store (etcd) is unreachable and this host refuses activations while it is (--fleet-offline-activation=refuse)")
}

func (b *Backend) connected() bool { return b.watchUp.Load() && b.probeOK.Load() }

// setLink records a change of the watch's or the probe's state.
func (b *Backend) setLink(flag *atomic.Bool, up bool) {
	was := b.connected()
	flag.Store(up)
	now := b.connected()
	switch {
	case was && !now:
		t := time.Now()
		b.staleSince.Store(&t)
		b.log.Warn("fleet store unreachable: serving the local copy", "revision", b.Applied())
	case !was && now:
		b.staleSince.Store(nil)
		b.log.Info("fleet store connected", "revision", b.Applied())
	}
}

// Applied is the fleet revision of the local copy.
func (b *Backend) Applied() int64 {
	b.appliedMu.Lock()
	defer b.appliedMu.Unlock()
	return b.applied
}

func (b *Backend) setApplied(rev int64) {
	b.appliedMu.Lock()
	defer b.appliedMu.Unlock()
	if rev > b.applied || rev < b.applied { // a full re-read may go anywhere; it is the truth
		b.applied = rev
		close(b.appliedCh)
		b.appliedCh = make(chan struct{})
	}
}

// waitApplied waits until the local copy has revision rev.
func (b *Backend) waitApplied(ctx context.Context, rev int64) error {
	for {
		b.appliedMu.Lock()
		cur, ch := b.applied, b.appliedCh
		b.appliedMu.Unlock()
		if cur >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// probe checks the link with a linearizable read (it needs a leader and a
// quorum) every ProbeInterval.
func (b *Backend) probe(ctx context.Context) {
	t := time.NewTicker(b.cfg.ProbeInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
		_, err := b.cli.Get(pctx, b.keyDefault, clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		b.setLink(&b.probeOK, err == nil)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// backoff sleeps for an exponentially growing, jittered delay; false when
// ctx ended.
func backoff(ctx context.Context, attempt int) bool {
	d := 100 * time.Millisecond << min(attempt, 5) // up to 3.2 s
	d = d/2 + rand.N(d/2+1)
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// clientTLS builds the mTLS configuration and returns the certificate's CN.
func clientTLS(cfg Config) (*tls.Config, string, error) {
	if cfg.CA == "" && cfg.Cert == "" {
		return nil, "", nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CA != "" {
		pem, err := os.ReadFile(cfg.CA)
		if err != nil {
			return nil, "", fmt.Errorf("--fleet-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("--fleet-ca %s: no PEM certificate in it", cfg.CA)
		}
		tc.RootCAs = pool
	}
	var cn string
	if cfg.Cert != "" {
		kp, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, "", fmt.Errorf("--fleet-cert/--fleet-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{kp}
		if leaf, err := x509.ParseCertificate(kp.Certificate[0]); err == nil {
			cn = leaf.Subject.CommonName
		}
	}
	return tc, cn, nil
}

// unavailable wraps an etcd failure in the unavailable class. The cause is
// kept as text only, so that a deadline does not make it a timeout (504).
func unavailable(op string, err error) error {
	return errdefs.WithMessage(fmt.Errorf("%w: %s: %v", ErrUnavailable, op, err),
		fmt.Sprintf("the fleet store (etcd) did not accept the %s: %v; a write that timed out may still have been applied: retry it with the same Idempotency-Key header", op, err))
}

// FleetState is the revision of the local copy and since when it is stale
// (zero while connected): the API's fleet headers.
func (b *Backend) FleetState() (int64, time.Time) {
	st := b.Status()
	return st.Revision, st.StaleSince
}
