package libvirt

import (
	"fmt"
	"strconv"

	"libvirt.org/go/libvirtxml"

	"github.com/vmpersona/vmpersona/hostd/agents"
)

// PortName is the virtio-serial port name of the vmpersona agent channel.
const PortName = agents.PortName

// agentChannel is what a domain's XML says about its agent channel.
type agentChannel struct {
	Endpoint agents.Endpoint // Kind "" when there is none
	// Chardev is the QEMU chardev label of a virtio-serial channel ("" for
	// vsock, or when libvirt gave the channel no alias).
	Chardev string
	// State is the channel target's state attribute in live XML:
	// "connected" when the guest has the port open, "disconnected", or "".
	State string
	// Reason says why there is no endpoint.
	Reason string
}

// findChannel reads the agent channel from domain XML: a unix channel
// whose virtio target is PortName, else a vsock device with a CID (port
// agents.DefaultVsockPort).
func findChannel(dom *libvirtxml.Domain, name string) agentChannel {
	if dom.Devices != nil {
		for _, c := range dom.Devices.Channels {
			if c.Target == nil || c.Target.VirtIO == nil || c.Target.VirtIO.Name != PortName {
				continue
			}
			ch := agentChannel{State: c.Target.VirtIO.State}
			if c.Alias != nil && c.Alias.Name != "" {
				ch.Chardev = "char" + c.Alias.Name
			}
			switch {
			case c.Source == nil || c.Source.UNIX == nil:
				ch.Reason = "the " + PortName + " channel is not a unix socket channel; the host daemon can only reach <channel type='unix'>"
			case c.Source.UNIX.Mode != "" && c.Source.UNIX.Mode != "bind":
				ch.Reason = "the " + PortName + " channel's socket is mode='" + c.Source.UNIX.Mode + "' (QEMU connects out); use mode='bind'"
			case c.Source.UNIX.Path == "":
				ch.Reason = "the " + PortName + " channel has no socket path yet (libvirt assigns one when the domain starts)"
			default:
				ch.Endpoint = agents.Endpoint{Kind: agents.KindUnix, Path: c.Source.UNIX.Path}
			}
			return ch
		}
		if v := dom.Devices.VSock; v != nil && v.CID != nil && v.CID.Address != "" {
			cid, err := strconv.ParseUint(v.CID.Address, 10, 32)
			if err != nil || cid < 3 {
				return agentChannel{Reason: fmt.Sprintf("vsock device with unusable CID %q", v.CID.Address)}
			}
			return agentChannel{Endpoint: agents.Endpoint{Kind: agents.KindVsock, CID: uint32(cid), Port: agents.DefaultVsockPort}}
		}
	}
	return agentChannel{Reason: "no " + PortName + " channel; run: vmpersonactl instance enable " + name}
}

// channelXML is the device EnableChannel adds: a unix socket channel in
// bind mode with no path, so that libvirt picks the path (under its
// channel target directory, with the right security labels) when the
// domain starts or the device is hot-plugged.
func channelXML() (string, error) {
	c := libvirtxml.DomainChannel{
		Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
		Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: PortName}},
	}
	return c.Marshal()
}
