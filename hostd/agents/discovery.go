package agents

import (
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// What discovery sources (libvirt, QMP) share: the agent port's name, the
// instance states, the snapshot of one instance, the Source interface the
// API reads them through, and the store of snapshots both keep.

// PortName is the virtio-serial port name of the vmpersona agent channel.
const PortName = "org.vmpersona.agent.0"

// Instance states (Discovered.State), whatever the source calls them.
// They are the API's (apitypes.InstanceStates).
const (
	InstanceRunning = apitypes.StateRunning
	InstancePaused  = apitypes.StatePaused  // vCPUs stopped: paused, suspended, prelaunch, migrating, …
	InstanceShutoff = apitypes.StateShutoff // not running, crashed, or its hypervisor is gone
	InstanceUnknown = apitypes.StateUnknown // not reached yet
)

// Discovered is a snapshot of one instance a discovery source follows,
// whether or not its agent can be reached.
type Discovered struct {
	Name   string
	UUID   string // libvirt's domain UUID; "" for sources without one
	Source string // the source's name: "libvirt", "qmp"
	// State is InstanceRunning, InstancePaused, InstanceShutoff or
	// InstanceUnknown; RunState is the hypervisor's own name for it, when
	// the source has one (QEMU's query-status).
	State    string
	RunState string
	// Endpoint is where the agent is reached ("" when it cannot be).
	Endpoint string
	// Reason says why the instance has no usable agent endpoint, or why it
	// is not reachable.
	Reason string
	// PortOpen: the guest has the agent port open; nil when unknown.
	PortOpen *bool
	// Persistent: the instance has a persistent definition (libvirt).
	Persistent bool
	// Labels are the instance's labels (libvirt domain metadata), which
	// assignments select by; nil when the source has none.
	Labels    map[string]string
	UpdatedAt time.Time
}

// Source is a discovery source as readers (the REST API) see it.
type Source interface {
	// Resolve maps an id (a name, or a source's own id such as a UUID) to
	// the instance name.
	Resolve(id string) (string, bool)
	// Lookup returns one instance's snapshot by any id Resolve takes.
	Lookup(id string) (Discovered, bool)
	// List returns every instance's snapshot, sorted by name.
	List() []Discovered
}

// Snapshots keeps a discovery source's snapshots by name (and UUID, any
// case, with or without dashes) and implements Source. Its methods are safe
// for concurrent use.
type Snapshots struct {
	source string

	mu     sync.Mutex
	byName map[string]Discovered
	byUUID map[string]string // normalised UUID → name
}

var _ Source = (*Snapshots)(nil)

// NewSnapshots returns an empty set for the named source.
func NewSnapshots(source string) *Snapshots {
	return &Snapshots{source: source, byName: make(map[string]Discovered), byUUID: make(map[string]string)}
}

// Set records d (its Source and UpdatedAt set here) and returns what it
// replaced.
func (s *Snapshots) Set(d Discovered) (prev Discovered, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setLocked(d)
}

func (s *Snapshots) setLocked(d Discovered) (prev Discovered, known bool) {
	d.Source, d.UpdatedAt = s.source, time.Now()
	prev, known = s.byName[d.Name]
	if known && prev.UUID != "" && normUUID(prev.UUID) != normUUID(d.UUID) {
		delete(s.byUUID, normUUID(prev.UUID))
	}
	s.byName[d.Name] = d
	if d.UUID != "" {
		s.byUUID[normUUID(d.UUID)] = d.Name
	}
	return prev, known
}

// Update changes one instance's snapshot in place (a new one starts from
// its name) and returns it as it was.
func (s *Snapshots) Update(name string, f func(*Discovered)) (prev Discovered) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.byName[name]
	if !ok {
		d = Discovered{Name: name}
	}
	prev = d
	f(&d)
	d.Name = name
	s.setLocked(d)
	return prev
}

// Delete drops an instance and returns what it held.
func (s *Snapshots) Delete(name string) (Discovered, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.byName[name]
	if !ok {
		return d, false
	}
	delete(s.byName, name)
	if u := normUUID(d.UUID); u != "" && s.byUUID[u] == name {
		delete(s.byUUID, u)
	}
	return d, true
}

// Resolve returns the instance name for a name or UUID.
func (s *Snapshots) Resolve(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resolveLocked(id)
}

func (s *Snapshots) resolveLocked(id string) (string, bool) {
	if _, ok := s.byName[id]; ok {
		return id, true
	}
	name, ok := s.byUUID[normUUID(id)]
	return name, ok
}

// Lookup returns one instance's snapshot by name or UUID.
func (s *Snapshots) Lookup(id string) (Discovered, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name, ok := s.resolveLocked(id)
	if !ok {
		return Discovered{}, false
	}
	return s.byName[name], true
}

// List returns every snapshot, sorted by name.
func (s *Snapshots) List() []Discovered {
	s.mu.Lock()
	out := make([]Discovered, 0, len(s.byName))
	for _, d := range s.byName {
		out = append(out, d)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Names returns the names of every instance, unsorted.
func (s *Snapshots) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.byName))
	for n := range s.byName {
		out = append(out, n)
	}
	return out
}

func normUUID(s string) string {
	return strings.ToLower(strings.ReplaceAll(s, "-", ""))
}

// Jitter spreads a backoff over [d/2, d], so that clients retrying the same
// peer (agent sessions, libvirt, QMP) do not retry in step.
func Jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}
