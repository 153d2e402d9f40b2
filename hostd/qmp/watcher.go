package qmp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/agents"
)

// Source is the agents.Manager source of instances found here.
const Source = "qmp"

// Agents is the part of agents.Manager the watcher drives.
type Agents = agents.Registry

// Instance is one --qmp NAME=PATH.
type Instance struct {
	Name string
	Path string // QMP unix socket
}

// ParseFlag reads a --qmp NAME=PATH value.
func ParseFlag(v string) (Instance, error) {
	name, path, ok := strings.Cut(v, "=")
	if !ok || name == "" || path == "" {
		return Instance{}, fmt.Errorf("--qmp %q: want NAME=PATH, e.g. vm1=/run/vm1.qmp", v)
	}
	return Instance{Name: name, Path: path}, nil
}

// Config configures a Watcher. Zero durations take their defaults.
type Config struct {
	Instances []Instance
	Agents    Agents
	Logger    *slog.Logger
	// BackoffMin and BackoffMax bound the wait between QMP connection
	// attempts (defaults 1 s and 30 s).
	BackoffMin, BackoffMax time.Duration
	// Poll is how often a connected instance's state and agent port are
	// re-read, besides events (default 10 s).
	Poll time.Duration
	// Timeout bounds each QMP exchange (default 5 s).
	Timeout time.Duration
}

// Watcher follows QMP instances and keeps the agent manager in step: an
// instance whose QEMU is up with an agent channel is managed at the
// channel's socket; one whose QEMU is gone, or that has no channel, is not
// (no connection attempts) but stays listed with a reason.
type Watcher struct {
	cfg Config
	log *slog.Logger

	status *agents.Snapshots
	reg    *agents.Registrar        // what the watcher gave the agent manager
	wake   map[string]chan struct{} // set up by New, read only after
}

// New returns a watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Agents == nil {
		return nil, errors.New("qmp: no agent manager")
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 10 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{
		cfg: cfg, log: log.With("component", "qmp"),
		status: agents.NewSnapshots(Source), wake: make(map[string]chan struct{}),
		reg: agents.NewRegistrar(cfg.Agents, Source),
	}
	for _, in := range cfg.Instances {
		if _, dup := w.wake[in.Name]; dup {
			return nil, fmt.Errorf("--qmp: instance %q given twice", in.Name)
		}
		w.status.Set(agents.Discovered{Name: in.Name, State: agents.InstanceUnknown, Reason: "not reached yet"})
		w.wake[in.Name] = make(chan struct{}, 1)
	}
	return w, nil
}

// Run follows every instance until ctx ends, then removes them from the
// agent manager and returns.
func (w *Watcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, in := range w.cfg.Instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.follow(ctx, in)
		}()
	}
	wg.Wait()
	for _, in := range w.cfg.Instances {
		w.unmanage(in.Name)
	}
}

// List returns every instance's snapshot, sorted by name.
func (w *Watcher) List() []agents.Discovered { return w.status.List() }

// Lookup returns one instance's snapshot.
func (w *Watcher) Lookup(name string) (agents.Discovered, bool) { return w.status.Lookup(name) }

// Resolve returns name when it is one of the watcher's instances.
func (w *Watcher) Resolve(name string) (string, bool) { return w.status.Resolve(name) }

var _ agents.Source = (*Watcher)(nil)

// Refresh asks an instance's loop to re-read its state now (after
// something outside QMP's events changed it); unknown names are ignored.
func (w *Watcher) Refresh(name string) {
	if ch := w.wake[name]; ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// follow is one instance's loop: connect, follow, reconnect with backoff.
func (w *Watcher) follow(ctx context.Context, in Instance) {
	log := w.log.With("instance", in.Name, "qmp", in.Path)
	backoff := w.cfg.BackoffMin
	lastErr := ""
	for ctx.Err() == nil {
		dctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		m, err := Dial(dctx, in.Path, w.cfg.Timeout)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.unmanage(in.Name)
			w.update(in.Name, func(s *agents.Discovered) {
				s.State, s.RunState, s.Endpoint, s.PortOpen = agents.InstanceShutoff, "", "", nil
				s.Reason = "QEMU not reachable on its QMP socket: " + err.Error()
			})
			if msg := err.Error(); msg != lastErr {
				log.Warn("QMP not reachable; retrying", "err", err, "backoff", backoff)
				lastErr = msg
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(agents.Jitter(backoff)):
			}
			backoff = min(2*backoff, w.cfg.BackoffMax)
			continue
		}
		log.Info("QMP connected", "qemu", m.Version.String())
		lastErr = ""
		backoff = w.cfg.BackoffMin
		err = w.session(ctx, in, m, log)
		m.Disconnect()
		if ctx.Err() != nil {
			return
		}
		log.Info("QMP connection ended", "err", err)
		w.unmanage(in.Name)
		w.update(in.Name, func(s *agents.Discovered) {
			s.State, s.RunState, s.Endpoint, s.PortOpen = agents.InstanceShutoff, "", "", nil
			s.Reason = "QEMU exited (QMP connection closed)"
		})
	}
}

// session follows one QMP connection until it ends.
func (w *Watcher) session(ctx context.Context, in Instance, m *Monitor, log *slog.Logger) error {
	events, _ := m.Events(ctx)
	refresh := func() error {
		rctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		defer cancel()
		return w.refresh(rctx, in, m, log)
	}
	if err := refresh(); err != nil {
		return err
	}
	lost := m.LostEvents()
	tick := time.NewTicker(w.cfg.Poll)
	defer tick.Stop()
	wake := w.wake[in.Name]
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok {
				return ErrClosed
			}
			switch ev.Event {
			case "STOP":
				w.setRunState(in.Name, "paused")
			case "RESUME":
				w.setRunState(in.Name, "running")
			case "SHUTDOWN":
				// QEMU exits unless run with -no-shutdown; either way the
				// guest is gone, so stop dialling its agent.
				w.unmanage(in.Name)
				w.update(in.Name, func(s *agents.Discovered) {
					s.State, s.RunState, s.Endpoint, s.PortOpen = agents.InstanceShutoff, "shutdown", "", nil
					s.Reason = "guest shut down"
				})
			case "VSERPORT_CHANGE", "RESET":
				if err := refresh(); err != nil {
					return err
				}
			}
			if n := m.LostEvents(); n != lost {
				lost = n
				if err := refresh(); err != nil {
					return err
				}
			}
		case <-tick.C:
			if err := refresh(); err != nil {
				return err
			}
		case <-wake:
			if err := refresh(); err != nil {
				return err
			}
		case <-m.Done():
			return ErrClosed
		}
	}
}

// refresh re-reads run state and channel and brings the agent manager in
// step; an error means the QMP connection is no longer usable.
func (w *Watcher) refresh(ctx context.Context, in Instance, m *Monitor, log *slog.Logger) error {
	rs, err := QueryStatus(ctx, m)
	if err != nil {
		return err
	}
	ch, chErr := FindChannel(ctx, m)
	if chErr != nil {
		var ce *CommandError
		if !errors.Is(chErr, ErrNoChannel) && !errors.Is(chErr, ErrNotUnixSocket) && !errors.As(chErr, &ce) {
			return chErr // transport trouble
		}
	}
	state := runState(rs)
	var reason, ep string
	var open *bool
	switch {
	case chErr != nil && errors.Is(chErr, ErrNoChannel):
		reason = "no " + PortName + " channel; start QEMU with: -device virtio-serial -chardev socket,id=vmpersona0,path=PATH,server=on,wait=off -device virtserialport,chardev=vmpersona0,name=" + PortName
	case chErr != nil:
		reason = chErr.Error()
	case state == agents.InstanceShutoff:
		reason = "guest shut down"
	default:
		e := agents.Endpoint{Kind: agents.KindUnix, Path: ch.Path}
		ep = e.String()
		o := ch.FrontendOpen
		open = &o
		if err := w.manage(in.Name, e); err != nil {
			reason = err.Error()
			ep = ""
		}
	}
	if ep == "" {
		w.unmanage(in.Name)
	}
	prev := w.update(in.Name, func(s *agents.Discovered) {
		s.State, s.RunState, s.Endpoint, s.Reason, s.PortOpen = state, rs, ep, reason, open
	})
	if prev.State != state || prev.Endpoint != ep || prev.Reason != reason {
		log.Info("QMP instance state", "state", state, "run_state", rs, "endpoint", ep, "reason", reason)
	}
	return nil
}

// runState maps QEMU's run state names onto the instance states.
func runState(rs string) string {
	switch rs {
	case "running":
		return agents.InstanceRunning
	case "shutdown", "guest-panicked":
		return agents.InstanceShutoff
	default:
		return agents.InstancePaused
	}
}

func (w *Watcher) setRunState(name, rs string) {
	w.update(name, func(s *agents.Discovered) {
		if s.State == agents.InstanceShutoff {
			return
		}
		s.State, s.RunState = runState(rs), rs
	})
}

// update changes an instance's snapshot and returns it as it was.
func (w *Watcher) update(name string, f func(*agents.Discovered)) agents.Discovered {
	return w.status.Update(name, f)
}

// manage gives the agent manager the instance at ep (Add, or SetEndpoint
// when the socket moved).
func (w *Watcher) manage(name string, ep agents.Endpoint) error { return w.reg.Manage(name, ep) }

// unmanage removes the instance from the agent manager if this watcher
// added it.
func (w *Watcher) unmanage(name string) { w.reg.Unmanage(name) }
