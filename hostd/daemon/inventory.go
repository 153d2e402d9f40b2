package daemon

import (
	"github.com/vmpersona/vmpersona/hostd/api"
	"github.com/vmpersona/vmpersona/hostd/libvirt"
	"github.com/vmpersona/vmpersona/hostd/qmp"
)

// libvirtInventory shows libvirt domains to the API.
type libvirtInventory struct{ d *libvirt.Discovery }

func (l libvirtInventory) Resolve(id string) (string, bool) { return l.d.Resolve(id) }

func (l libvirtInventory) Lookup(name string) (api.Discovered, bool) {
	st, ok := l.d.Get(name)
	return fromLibvirt(st), ok
}

func (l libvirtInventory) List() []api.Discovered {
	all := l.d.Instances()
	out := make([]api.Discovered, len(all))
	for i, st := range all {
		out[i] = fromLibvirt(st)
	}
	return out
}

func fromLibvirt(st libvirt.Status) api.Discovered {
	return api.Discovered{Name: st.Name, UUID: st.UUID, Source: "libvirt", State: st.State,
		Endpoint: st.Endpoint, Reason: st.Reason, PortOpen: st.PortOpen}
}

// qmpInventory shows plain QEMU instances to the API.
type qmpInventory struct{ w *qmp.Watcher }

func (q qmpInventory) Resolve(id string) (string, bool) {
	_, ok := q.w.Get(id)
	return id, ok
}

func (q qmpInventory) Lookup(name string) (api.Discovered, bool) {
	st, ok := q.w.Get(name)
	return fromQMP(st), ok
}

func (q qmpInventory) List() []api.Discovered {
	all := q.w.Instances()
	out := make([]api.Discovered, len(all))
	for i, st := range all {
		out[i] = fromQMP(st)
	}
	return out
}

func fromQMP(st qmp.Status) api.Discovered {
	return api.Discovered{Name: st.Name, Source: "qmp", State: st.State, Endpoint: st.Endpoint,
		Reason: st.Reason, PortOpen: st.PortOpen}
}
