package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// Discovered is an instance a discovery source (libvirt, QMP) knows,
// whether or not its agent can be reached.
type Discovered = agents.Discovered

// Inventory is a discovery source the API merges with the agent manager.
type Inventory = agents.Source

// ChannelEnabler adds the agent channel to a domain (libvirt).
type ChannelEnabler interface {
	EnableChannel(ctx context.Context, domain string) (string, error)
}

// instanceState is what the API knows of one instance: its agent session
// (when managed) and what discovery says of it.
type instanceState struct {
	name    string
	agent   agents.AgentStatus
	managed bool
	disc    *Discovered
}

// resolve finds an instance by name or UUID across the agent manager and the
// discovery sources.
func (s *Server) resolve(id string) (instanceState, error) {
	name := id
	for _, inv := range s.cfg.Inventories {
		if n, ok := inv.Resolve(id); ok {
			name = n
			break
		}
	}
	is := instanceState{name: name}
	if st, err := s.cfg.Agents.Get(name); err == nil {
		is.agent, is.managed = st, true
	} else if !errors.Is(err, agents.ErrUnknownInstance) {
		return is, err
	}
	for _, inv := range s.cfg.Inventories {
		if d, ok := inv.Lookup(name); ok {
			is.disc = &d
			break
		}
	}
	if !is.managed && is.disc == nil {
		return is, problem(http.StatusNotFound, "unknown-instance", "Unknown instance",
			fmt.Sprintf("no instance %q; GET /instances lists them", id), "instance_id", id)
	}
	return is, nil
}

// reachable returns the managed agent's name, or a 503 saying why the
// instance's agent cannot be reached.
func (is instanceState) reachable() (string, error) {
	if is.managed {
		return is.name, nil
	}
	reason := "the instance is " + is.disc.State
	if is.disc.Reason != "" {
		reason = is.disc.Reason
	}
	return "", problem(http.StatusServiceUnavailable, "agent-unavailable", "Agent not reachable",
		fmt.Sprintf("instance %s: %s", is.name, reason), "instance_id", is.name, "state", is.disc.State)
}

func (s *Server) allInstances() []instanceState {
	byName := map[string]*instanceState{}
	for _, st := range s.cfg.Agents.List() {
		byName[st.Name] = &instanceState{name: st.Name, agent: st, managed: true}
	}
	for _, inv := range s.cfg.Inventories {
		for _, d := range inv.List() {
			is, ok := byName[d.Name]
			if !ok {
				is = &instanceState{name: d.Name}
				byName[d.Name] = is
			}
			if is.disc == nil {
				d := d
				is.disc = &d
			}
		}
	}
	out := make([]instanceState, 0, len(byName))
	for _, is := range byName {
		out = append(out, *is)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (s *Server) enableChannel(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	if s.cfg.Enabler == nil {
		return problem(http.StatusNotImplemented, "no-libvirt", "libvirt is not enabled",
			"the daemon runs without --libvirt-uri; add the channel to the VM's definition by hand")
	}
	id := ps.ByName("id")
	name := id
	for _, inv := range s.cfg.Inventories {
		if n, ok := inv.Resolve(id); ok {
			name = n
			break
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Minute)
	defer cancel()
	did, err := s.cfg.Enabler.EnableChannel(ctx, name)
	if err != nil {
		return err
	}
	s.appendAudit(auditHost(protocol.AuditChannelEnabled, name, identityOf(r).User, did))
	writeJSON(w, http.StatusOK, apitypes.EnableResult{Instance: name, Did: did})
	return nil
}
