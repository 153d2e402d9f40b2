// Package libvirt finds and follows libvirt domains for the host daemon:
// it reads each domain's agent channel from its XML, keeps the agent
// manager in step with domain lifecycle events (and a periodic full
// resync), reconnects to libvirt with backoff when the daemon goes away,
// answers UUID look-ups, reports each domain's run state and whether the
// guest has the agent port open, and adds the channel to a domain that
// lacks it (EnableChannel).
package libvirt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/agents"
)

// Source is the agents.Manager source of domains found here.
const Source = "libvirt"

// Errors of the package.
var (
	// ErrNotConnected: libvirt is not reachable right now.
	ErrNotConnected = errdefs.New(errdefs.ErrUnavailable, "libvirt-unavailable", "libvirt not connected")
	// ErrNoDomain: no domain has that name or UUID.
	ErrNoDomain = errdefs.New(errdefs.ErrNotFound, "unknown-domain", "no such libvirt domain")
)

// Agents is the part of agents.Manager discovery drives.
type Agents = agents.Registry

// Config configures a Discovery. Zero durations take their defaults.
type Config struct {
	URI    string // e.g. qemu:///system
	Agents Agents
	Logger *slog.Logger
	// Resync is the period of the full resync (default 30 s).
	Resync time.Duration
	// PortPoll is how often running domains with a channel are re-read
	// for the agent port's state (default 10 s).
	PortPoll time.Duration
	// BackoffMin and BackoffMax bound the wait between connection attempts
	// (defaults 1 s and 30 s).
	BackoffMin, BackoffMax time.Duration
}

// Discovery follows the domains of one libvirt connection. Its methods are
// safe for concurrent use; the read methods answer from a snapshot.
type Discovery struct {
	cfg Config
	log *slog.Logger

	domains *agents.Snapshots // by name and UUID
	reg     *agents.Registrar // what discovery gave the agent manager

	mu        sync.Mutex
	conn      *lv.Connect // nil while disconnected
	connErr   string
	lostEvent bool

	events chan domainEvent
}

type domainEvent struct {
	name, uuid string
	kind       lv.DomainEventType
	resync     bool // not a domain event: resync everything
}

// New returns a Discovery; Run starts it.
func New(cfg Config) (*Discovery, error) {
	if cfg.URI == "" {
		return nil, errors.New("libvirt: empty URI")
	}
	if cfg.Agents == nil {
		return nil, errors.New("libvirt: no agent manager")
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.PortPoll <= 0 {
		cfg.PortPoll = 10 * time.Second
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Discovery{
		cfg: cfg, log: log.With("component", "libvirt", "uri", cfg.URI),
		domains: agents.NewSnapshots(Source), reg: agents.NewRegistrar(cfg.Agents, Source),
		events: make(chan domainEvent, 256),
	}, nil
}

var (
	eventLoopOnce sync.Once
	eventLoopErr  error
)

// startEventLoop registers libvirt's default event loop implementation
// (before any connection is opened, as libvirt requires) and runs it in a
// goroutine for the life of the process: libvirt offers no way to stop it.
func startEventLoop(log *slog.Logger) error {
	eventLoopOnce.Do(func() {
		if eventLoopErr = lv.EventRegisterDefaultImpl(); eventLoopErr != nil {
			return
		}
		go func() {
			for {
				if err := lv.EventRunDefaultImpl(); err != nil {
					log.Error("libvirt event loop", "err", err)
					time.Sleep(time.Second)
				}
			}
		}()
	})
	return eventLoopErr
}

// Run connects and follows domains until ctx ends, reconnecting with
// backoff when libvirt goes away. Domains already known stay listed and
// managed while disconnected (their QEMUs keep running without libvirtd);
// the first resync after reconnecting brings everything up to date. When
// ctx ends, every domain Run added is removed from the agent manager.
func (d *Discovery) Run(ctx context.Context) error {
	if err := startEventLoop(d.log); err != nil {
		return fmt.Errorf("libvirt event loop: %w", err)
	}
	defer d.unmanageAll()
	backoff := d.cfg.BackoffMin
	for {
		conn, err := lv.NewConnect(d.cfg.URI)
		if err != nil {
			msg := lvMessage(err)
			d.mu.Lock()
			changed := d.connErr != msg
			d.connErr = msg
			d.mu.Unlock()
			if changed {
				d.log.Warn("libvirt not reachable; retrying", "err", msg, "backoff", backoff)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(agents.Jitter(backoff)):
			}
			backoff = min(2*backoff, d.cfg.BackoffMax)
			continue
		}
		backoff = d.cfg.BackoffMin
		d.log.Info("libvirt connected")
		err = d.session(ctx, conn)
		if ctx.Err() != nil {
			return nil
		}
		d.mu.Lock()
		d.connErr = "connection lost: " + err.Error()
		d.mu.Unlock()
		d.log.Warn("libvirt connection lost; reconnecting", "err", err)
	}
}

// session follows one connection until it is lost or ctx ends.
func (d *Discovery) session(ctx context.Context, conn *lv.Connect) error {
	closed := make(chan struct{})
	var closeOnce sync.Once
	if err := conn.RegisterCloseCallback(func(_ *lv.Connect, reason lv.ConnectCloseReason) {
		closeOnce.Do(func() { close(closed) })
	}); err != nil {
		d.log.Debug("no close callback on this connection", "err", lvMessage(err))
	}
	// Keepalive makes a libvirtd that hangs or vanishes without closing
	// the socket look like a closed connection (remote drivers only).
	if err := conn.SetKeepAlive(5, 3); err != nil {
		d.log.Debug("no keepalive on this connection", "err", lvMessage(err))
	}
	cbID, err := conn.DomainEventLifecycleRegister(nil, func(_ *lv.Connect, dom *lv.Domain, ev *lv.DomainEventLifecycle) {
		name, _ := dom.GetName()
		uuid, _ := dom.GetUUIDString()
		d.queue(domainEvent{name: name, uuid: uuid, kind: ev.Event})
	})
	if err != nil {
		conn.UnregisterCloseCallback()
		conn.Close()
		return fmt.Errorf("register lifecycle events: %s", lvMessage(err))
	}
	d.mu.Lock()
	d.conn = conn
	d.connErr = ""
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.conn = nil
		d.mu.Unlock()
		conn.DomainEventDeregister(cbID)
		conn.UnregisterCloseCallback()
		conn.Close()
	}()

	if err := d.resync(conn); err != nil {
		return err
	}
	resync := time.NewTicker(d.cfg.Resync)
	defer resync.Stop()
	poll := time.NewTicker(d.cfg.PortPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-closed:
			return errors.New("libvirt closed the connection")
		case ev := <-d.events:
			d.mu.Lock()
			lost := d.lostEvent
			d.lostEvent = false
			d.mu.Unlock()
			var err error
			if ev.resync || lost {
				err = d.resync(conn)
			} else {
				d.log.Debug("domain event", "domain", ev.name, "event", eventName(ev.kind))
				err = d.refreshDomain(conn, ev.name, ev.uuid)
			}
			if err != nil {
				return err
			}
		case <-resync.C:
			if err := d.resync(conn); err != nil {
				return err
			}
		case <-poll.C:
			if err := d.pollPorts(conn); err != nil {
				return err
			}
		}
	}
}

// queue hands an event to the session loop without blocking libvirt's
// event loop; when the queue is full the next event triggers a resync.
func (d *Discovery) queue(ev domainEvent) {
	select {
	case d.events <- ev:
	default:
		d.mu.Lock()
		d.lostEvent = true
		d.mu.Unlock()
	}
}

// connLost reports whether err means the connection is unusable.
func connLost(conn *lv.Connect, err error) bool {
	if err == nil {
		return false
	}
	alive, aerr := conn.IsAlive()
	return aerr != nil || !alive
}

// resync reads every domain and brings the snapshot and the agent manager
// in step; domains that no longer exist are dropped.
func (d *Discovery) resync(conn *lv.Connect) error {
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		if connLost(conn, err) {
			return fmt.Errorf("list domains: %s", lvMessage(err))
		}
		d.log.Warn("list domains", "err", lvMessage(err))
		return nil
	}
	seen := make(map[string]bool, len(doms))
	for i := range doms {
		st, err := d.read(&doms[i])
		doms[i].Free()
		if errors.Is(err, errMigrated) {
			d.forget(st.Name) // not seen: settled here
			continue
		}
		if err != nil {
			if connLost(conn, err) {
				return err
			}
			continue // gone between list and read: the next event or resync settles it
		}
		seen[st.Name] = true
		d.apply(st)
	}
	for _, name := range d.domains.Names() {
		if !seen[name] {
			d.forget(name)
		}
	}
	return nil
}

// refreshDomain re-reads one domain after an event; one that no longer
// exists (undefined, or a transient domain that stopped) is dropped.
func (d *Discovery) refreshDomain(conn *lv.Connect, name, uuid string) error {
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		if isCode(err, lv.ERR_NO_DOMAIN) {
			d.forget(name)
			return nil
		}
		if connLost(conn, err) {
			return fmt.Errorf("look up %s: %s", name, lvMessage(err))
		}
		d.log.Warn("look up domain", "domain", name, "err", lvMessage(err))
		return nil
	}
	defer dom.Free()
	st, err := d.read(dom)
	if err != nil {
		if isCode(err, lv.ERR_NO_DOMAIN) {
			d.forget(name)
			return nil
		}
		if errors.Is(err, errMigrated) {
			if st.Name != name && name != "" {
				d.drop(name) // renamed, then migrated
			}
			d.forget(st.Name)
			return nil
		}
		if connLost(conn, err) {
			return err
		}
		return nil
	}
	if st.Name != name && name != "" {
		d.drop(name) // renamed
	}
	d.apply(st)
	return nil
}

// pollPorts re-reads running domains that have an agent channel, for the
// port's state.
func (d *Discovery) pollPorts(conn *lv.Connect) error {
	var todo []agents.Discovered
	for _, s := range d.domains.List() {
		if s.State != agents.InstanceShutoff && s.Endpoint != "" {
			todo = append(todo, s)
		}
	}
	for _, s := range todo {
		if err := d.refreshDomain(conn, s.Name, s.UUID); err != nil {
			return err
		}
	}
	return nil
}

// read builds a domain's status from its state and XML (live XML when it
// runs, so that libvirt-assigned socket paths are there).
func (d *Discovery) read(dom *lv.Domain) (agents.Discovered, error) {
	name, err := dom.GetName()
	if err != nil {
		return agents.Discovered{}, err
	}
	uuid, err := dom.GetUUIDString()
	if err != nil {
		return agents.Discovered{}, err
	}
	state, reason, err := dom.GetState()
	if err != nil {
		return agents.Discovered{}, err
	}
	if leftHost(true, state, reason) {
		// Still defined here, but the VM runs on another host now.
		return agents.Discovered{Name: name, UUID: uuid}, errMigrated
	}
	persistent, _ := dom.IsPersistent()
	st := agents.Discovered{Name: name, UUID: uuid, State: runState(state), Persistent: persistent}
	raw, err := dom.GetXMLDesc(0)
	if err != nil {
		return agents.Discovered{}, err
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(raw); err != nil {
		st.Reason = "domain XML not understood: " + err.Error()
		return st, nil
	}
	st.Labels = labelsOf(x.Metadata)
	ch := findChannel(&x, name)
	switch {
	case st.State == agents.InstanceShutoff:
		st.Reason = "domain is not running"
		if state == lv.DOMAIN_CRASHED || (state == lv.DOMAIN_SHUTOFF && lv.DomainShutoffReason(reason) == lv.DOMAIN_SHUTOFF_CRASHED) {
			st.Reason = "domain crashed"
		}
		if ch.Endpoint.Kind == "" && strings.HasPrefix(ch.Reason, "no ") {
			st.Reason += "; " + ch.Reason
		}
	case ch.Endpoint.Kind == "":
		st.Reason = ch.Reason
	default:
		st.Endpoint = ch.Endpoint.String()
		st.PortOpen = portOpen(dom, ch)
	}
	return st, nil
}

// portOpen says whether the guest has the agent port open, without
// traffic: the channel state libvirt reports in live XML (from QEMU's
// VSERPORT_CHANGE events), or else query-chardev's frontend-open through
// the QEMU monitor passthrough (qemu driver only; libvirt marks a domain
// that gets monitor commands as tainted, hence the XML first).
func portOpen(dom *lv.Domain, ch agentChannel) *bool {
	switch ch.State {
	case "connected":
		return ptr(true)
	case "disconnected":
		return ptr(false)
	}
	if ch.Chardev == "" {
		return nil
	}
	out, err := dom.QemuMonitorCommand(`{"execute":"query-chardev"}`, lv.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
	if err != nil {
		return nil // not the qemu driver, or no monitor
	}
	return frontendOpen(out, ch.Chardev)
}

// frontendOpen reads a query-chardev answer for one chardev label.
func frontendOpen(answer, label string) *bool {
	var r struct {
		Return []struct {
			Label        string `json:"label"`
			FrontendOpen bool   `json:"frontend-open"`
		} `json:"return"`
	}
	if json.Unmarshal([]byte(answer), &r) != nil {
		return nil
	}
	for _, c := range r.Return {
		if c.Label == label {
			return ptr(c.FrontendOpen)
		}
	}
	return nil
}

func eventName(t lv.DomainEventType) string {
	switch t {
	case lv.DOMAIN_EVENT_DEFINED:
		return "defined"
	case lv.DOMAIN_EVENT_UNDEFINED:
		return "undefined"
	case lv.DOMAIN_EVENT_STARTED:
		return "started"
	case lv.DOMAIN_EVENT_SUSPENDED:
		return "suspended"
	case lv.DOMAIN_EVENT_RESUMED:
		return "resumed"
	case lv.DOMAIN_EVENT_STOPPED:
		return "stopped"
	case lv.DOMAIN_EVENT_SHUTDOWN:
		return "shutdown"
	case lv.DOMAIN_EVENT_PMSUSPENDED:
		return "pmsuspended"
	case lv.DOMAIN_EVENT_CRASHED:
		return "crashed"
	default:
		return fmt.Sprintf("event-%d", int(t))
	}
}

func ptr[T any](v T) *T { return &v }

// runState maps libvirt's domain states onto the instance states.
func runState(s lv.DomainState) string {
	switch s {
	case lv.DOMAIN_RUNNING, lv.DOMAIN_BLOCKED, lv.DOMAIN_SHUTDOWN:
		return agents.InstanceRunning // DOMAIN_SHUTDOWN: shutting down, still running
	case lv.DOMAIN_PAUSED, lv.DOMAIN_PMSUSPENDED:
		return agents.InstancePaused
	case lv.DOMAIN_SHUTOFF, lv.DOMAIN_CRASHED:
		return agents.InstanceShutoff
	default:
		return agents.InstanceUnknown
	}
}

// apply records a domain's status and brings the agent manager in step:
// a running or paused domain with an endpoint is managed; any other is not
// (no connection attempts) but stays listed.
func (d *Discovery) apply(st agents.Discovered) {
	if st.Endpoint != "" && st.State != agents.InstanceShutoff {
		ep, err := agents.ParseEndpoint(st.Endpoint)
		if err == nil {
			err = d.manage(st.Name, ep)
		}
		if err != nil {
			st.Reason = err.Error()
			st.Endpoint = ""
			st.PortOpen = nil
		}
	}
	if st.Endpoint == "" || st.State == agents.InstanceShutoff {
		d.unmanage(st.Name)
	}
	prev, known := d.domains.Set(st)
	if !known || prev.State != st.State || prev.Endpoint != st.Endpoint || prev.Reason != st.Reason {
		d.log.Info("domain", "domain", st.Name, "uuid", st.UUID, "state", st.State, "endpoint", st.Endpoint, "reason", st.Reason)
	}
}

// errMigrated is read's answer for a domain stopped because it migrated
// to another host.
var errMigrated = errors.New("domain migrated to another host")

// leftHost decides whether a domain has left this host, so that the host
// drops its instance record (and with it the instance from its published
// fleet records): libvirt no longer has it (undefined, or a transient
// domain that stopped), or it stopped because it migrated away. A domain
// that merely shut down or crashed has not left: its record and desired
// state stay, they are the user's deliberate choice.
func leftHost(exists bool, state lv.DomainState, reason int) bool {
	if !exists {
		return true
	}
	return state == lv.DOMAIN_SHUTOFF && lv.DomainShutoffReason(reason) == lv.DOMAIN_SHUTOFF_MIGRATED
}

// forget drops a domain that left the host (leftHost), and its record.
func (d *Discovery) forget(name string) {
	if name == "" {
		return
	}
	d.reg.Forget(name)
	d.drop(name)
}

// drop removes a domain from the listing and the agent manager, keeping
// the instance's record (a renamed domain).
func (d *Discovery) drop(name string) {
	d.unmanage(name)
	st, ok := d.domains.Delete(name)
	if ok {
		d.log.Info("domain gone", "domain", name, "uuid", st.UUID)
	}
}

// manage gives the agent manager the domain at ep.
func (d *Discovery) manage(name string, ep agents.Endpoint) error { return d.reg.Manage(name, ep) }

// unmanage removes a domain from the agent manager if discovery added it.
func (d *Discovery) unmanage(name string) { d.reg.Unmanage(name) }

func (d *Discovery) unmanageAll() { d.reg.UnmanageAll() }

// List returns every known domain's snapshot, sorted by name.
func (d *Discovery) List() []agents.Discovered { return d.domains.List() }

// Lookup returns one domain's snapshot by name or UUID.
func (d *Discovery) Lookup(idOrUUID string) (agents.Discovered, bool) {
	return d.domains.Lookup(idOrUUID)
}

// Resolve returns the domain name for a domain name or UUID (with or
// without dashes, any case).
func (d *Discovery) Resolve(idOrUUID string) (string, bool) { return d.domains.Resolve(idOrUUID) }

var _ agents.Source = (*Discovery)(nil)

// Connected reports whether libvirt is connected, and the last connection
// error when it is not.
func (d *Discovery) Connected() (bool, string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn != nil, d.connErr
}

func isCode(err error, code lv.ErrorNumber) bool {
	var e lv.Error
	return errors.As(err, &e) && e.Code == code
}

// lvMessage is libvirt's own message for an error, without the binding's
// virError(Code=…) wrapping.
func lvMessage(err error) string {
	var e lv.Error
	if errors.As(err, &e) && e.Message != "" {
		return e.Message
	}
	return err.Error()
}
