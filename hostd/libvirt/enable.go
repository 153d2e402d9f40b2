package libvirt

import (
	"context"
	"errors"
	"fmt"
	"strings"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/vmpersona/vmpersona/errdefs"
)

// ErrAlreadyEnabled is wrapped when a domain has the agent channel already.
var ErrAlreadyEnabled = errdefs.New(errdefs.ErrConflict, "already-enabled", "agent channel already present")

// EnableChannel adds the agent channel (a unix socket channel in bind mode
// whose path libvirt picks, virtio target PortName) to a domain, named by
// name or UUID: to its persistent definition (DomainDefineXML of the
// definition with the channel added, everything else untouched), and to
// the running domain when it runs (AttachDeviceFlags LIVE). It returns a
// description of what it did. A failed live attach is not an error: the
// description says the channel appears at the next start. libvirt calls
// cannot be cancelled; when ctx ends first, EnableChannel returns ctx's
// error and the change may still complete.
func (d *Discovery) EnableChannel(ctx context.Context, domain string) (string, error) {
	d.mu.Lock()
	conn := d.conn
	d.mu.Unlock()
	if conn == nil {
		return "", ErrNotConnected
	}
	type result struct {
		desc string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		desc, err := enableChannel(conn, domain)
		res <- result{desc, err}
	}()
	select {
	case r := <-res:
		if r.err == nil {
			// Follow the change now rather than at the next resync.
			d.queue(domainEvent{resync: true})
			d.log.Info("agent channel enabled", "domain", domain, "did", r.desc)
		}
		return r.desc, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func enableChannel(conn *lv.Connect, domain string) (string, error) {
	dom, err := lookup(conn, domain)
	if err != nil {
		return "", err
	}
	defer dom.Free()
	name, _ := dom.GetName()
	active, err := dom.IsActive()
	if err != nil {
		return "", fmt.Errorf("domain %s: %s", name, lvMessage(err))
	}
	persistent, err := dom.IsPersistent()
	if err != nil {
		return "", fmt.Errorf("domain %s: %s", name, lvMessage(err))
	}
	chXML, err := channelXML()
	if err != nil {
		return "", err
	}

	var did []string
	if persistent {
		// SECURE keeps secrets (graphics passwords) that a plain dump
		// leaves out and a redefinition would otherwise drop.
		def, err := dom.GetXMLDesc(lv.DOMAIN_XML_INACTIVE | lv.DOMAIN_XML_SECURE)
		if err != nil {
			return "", fmt.Errorf("domain %s: read definition: %s", name, lvMessage(err))
		}
		has, err := hasChannel(def)
		if err != nil {
			return "", fmt.Errorf("domain %s: %w", name, err)
		}
		if has {
			if !active {
				return "", fmt.Errorf("domain %s: %w in its definition", name, ErrAlreadyEnabled)
			}
		} else {
			newDef, err := insertDevice(def, chXML)
			if err != nil {
				return "", fmt.Errorf("domain %s: %w", name, err)
			}
			nd, err := conn.DomainDefineXML(newDef)
			if err != nil {
				return "", fmt.Errorf("domain %s: define with the channel: %s", name, lvMessage(err))
			}
			nd.Free()
			did = append(did, "added the "+PortName+" channel to the persistent definition")
		}
	}
	if active {
		live, err := dom.GetXMLDesc(0)
		if err != nil {
			return "", fmt.Errorf("domain %s: read live XML: %s", name, lvMessage(err))
		}
		has, err := hasChannel(live)
		if err != nil {
			return "", fmt.Errorf("domain %s: %w", name, err)
		}
		switch {
		case has && len(did) == 0:
			return "", fmt.Errorf("domain %s: %w", name, ErrAlreadyEnabled)
		case has:
			did = append(did, "the running domain has it already")
		default:
			err := dom.AttachDeviceFlags(chXML, lv.DOMAIN_DEVICE_MODIFY_LIVE)
			if err != nil && strings.Contains(lvMessage(err), "no virtio-serial controllers") {
				// libvirt adds a virtio-serial controller to a definition
				// but cannot hot-plug one (libvirt 9.0: "'virtio-serial'
				// controller cannot be hot plugged").
				err = errors.New("the running domain has no virtio-serial controller and libvirt cannot hot-plug one")
			}
			if err != nil {
				if len(did) == 0 {
					return "", fmt.Errorf("domain %s: attach the channel to the running domain: %s", name, lvMessage(err))
				}
				did = append(did, "could not attach it to the running domain ("+lvMessage(err)+"); it appears at the next start")
			} else {
				did = append(did, "attached it to the running domain")
			}
		}
	} else {
		did = append(did, "it appears when the domain starts")
	}
	return name + ": " + strings.Join(did, "; "), nil
}

// lookup finds a domain by name, then by UUID.
func lookup(conn *lv.Connect, domain string) (*lv.Domain, error) {
	dom, err := conn.LookupDomainByName(domain)
	if err == nil {
		return dom, nil
	}
	if !isCode(err, lv.ERR_NO_DOMAIN) {
		return nil, fmt.Errorf("look up %s: %s", domain, lvMessage(err))
	}
	if dom, err := conn.LookupDomainByUUIDString(domain); err == nil {
		return dom, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrNoDomain, domain)
}

// hasChannel reports whether domain XML has a channel targeting PortName.
func hasChannel(domXML string) (bool, error) {
	var x libvirtxml.Domain
	if err := x.Unmarshal(domXML); err != nil {
		return false, fmt.Errorf("domain XML not understood: %w", err)
	}
	if x.Devices == nil {
		return false, nil
	}
	for _, c := range x.Devices.Channels {
		if c.Target != nil && c.Target.VirtIO != nil && c.Target.VirtIO.Name == PortName {
			return true, nil
		}
	}
	return false, nil
}

// insertDevice adds a device element at the end of <devices>, leaving
// the rest of the document byte for byte as libvirt wrote it (a decode and
// encode round trip could drop what the XML library does not model).
func insertDevice(domXML, device string) (string, error) {
	i := strings.LastIndex(domXML, "</devices>")
	if i < 0 {
		if j := strings.LastIndex(domXML, "</domain>"); j >= 0 {
			return domXML[:j] + "<devices>\n" + device + "\n</devices>\n" + domXML[j:], nil
		}
		return "", errors.New("domain XML has no </domain>")
	}
	return domXML[:i] + "  " + device + "\n  " + domXML[i:], nil
}
