package qmp

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/agents"
)

// PortName is the virtio-serial port name of the vmpersona agent channel.
const PortName = agents.PortName

// Errors of channel discovery.
var (
	// ErrNoChannel: QEMU has no virtserialport named PortName.
	ErrNoChannel = errdefs.New(errdefs.ErrNotFound, "no-channel", "no "+PortName+" virtserialport")
	// ErrNotUnixSocket: the port's chardev is not a unix socket the host
	// can connect to.
	ErrNotUnixSocket = errdefs.New(errdefs.ErrInvalid, "not-unix-socket", "agent chardev is not a unix server socket")
)

// Channel is the agent channel of a QEMU instance.
type Channel struct {
	Device  string // QOM path of the virtserialport
	Chardev string // chardev label
	Path    string // unix socket path of the chardev
	// FrontendOpen: the guest has the port open (query-chardev's
	// frontend-open).
	FrontendOpen bool
}

// qomParents are where QEMU puts -device devices: with an id, and without.
var qomParents = []string{"/machine/peripheral", "/machine/peripheral-anon"}

// FindChannel finds the virtserialport named PortName (qom-list and
// qom-get over the peripheral devices) and the unix socket of the chardev
// behind it (query-chardev).
func FindChannel(ctx context.Context, m *Monitor) (Channel, error) {
	var ch Channel
	for _, parent := range qomParents {
		var props []raw.ObjectPropertyInfo
		if err := m.Execute(ctx, "qom-list", map[string]string{"path": parent}, &props); err != nil {
			var ce *CommandError
			if errors.As(err, &ce) {
				continue // no such container: no devices of that kind
			}
			return Channel{}, err
		}
		for _, p := range props {
			if p.Type != "child<virtserialport>" {
				continue
			}
			dev := parent + "/" + p.Name
			var name string
			if err := m.Execute(ctx, "qom-get", map[string]string{"path": dev, "property": "name"}, &name); err != nil {
				return Channel{}, err
			}
			if name != PortName {
				continue
			}
			var chardev string
			if err := m.Execute(ctx, "qom-get", map[string]string{"path": dev, "property": "chardev"}, &chardev); err != nil {
				return Channel{}, err
			}
			ch = Channel{Device: dev, Chardev: chardev}
			break
		}
		if ch.Device != "" {
			break
		}
	}
	if ch.Device == "" {
		return Channel{}, ErrNoChannel
	}
	if ch.Chardev == "" {
		return Channel{}, fmt.Errorf("%w: %s has no chardev", ErrNotUnixSocket, ch.Device)
	}
	var chardevs []raw.ChardevInfo
	if err := m.Execute(ctx, "query-chardev", nil, &chardevs); err != nil {
		return Channel{}, err
	}
	for _, c := range chardevs {
		if c.Label != ch.Chardev {
			continue
		}
		path, ok := unixServerPath(c.Filename)
		if !ok {
			return Channel{}, fmt.Errorf("%w: chardev %s is %q", ErrNotUnixSocket, c.Label, c.Filename)
		}
		ch.Path = path
		ch.FrontendOpen = c.FrontendOpen
		return ch, nil
	}
	return Channel{}, fmt.Errorf("%w: chardev %s of %s not in query-chardev", ErrNotUnixSocket, ch.Chardev, ch.Device)
}

// PortOpen reports query-chardev's frontend-open for a chardev label: the
// guest has the port open.
func PortOpen(ctx context.Context, m *Monitor, chardev string) (bool, error) {
	var chardevs []raw.ChardevInfo
	if err := m.Execute(ctx, "query-chardev", nil, &chardevs); err != nil {
		return false, err
	}
	for _, c := range chardevs {
		if c.Label == chardev {
			return c.FrontendOpen, nil
		}
	}
	return false, fmt.Errorf("chardev %s not in query-chardev", chardev)
}

// unixServerPath reads the socket path from a socket chardev's filename as
// query-chardev reports it: "unix:PATH,server=on", prefixed with
// "disconnected:" while no client is connected. A client-mode socket
// (no server option) is refused: QEMU connects out, the host cannot dial it.
func unixServerPath(filename string) (string, bool) {
	f := strings.TrimPrefix(filename, "disconnected:")
	rest, ok := strings.CutPrefix(f, "unix:")
	if !ok {
		return "", false
	}
	i := strings.LastIndex(rest, ",server")
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}

// Status is QEMU's run state (query-status).
type runStatus struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus returns QEMU's run state name (running, paused, prelaunch,
// shutdown, …).
func QueryStatus(ctx context.Context, m *Monitor) (string, error) {
	var st runStatus
	if err := m.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	if st.Status == "" {
		if st.Running {
			return "running", nil
		}
		return "paused", nil
	}
	return st.Status, nil
}
