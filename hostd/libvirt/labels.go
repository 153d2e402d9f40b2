package libvirt

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"maps"
	"slices"
	"strings"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// An instance's labels (which assignments select by) are kept in its
// domain's metadata, in one element under the vmpersona namespace:
//
//	<metadata>
//	  <vmpersona:labels xmlns:vmpersona="https://vmpersona.org/xmlns/labels/1">
//	    <vmpersona:label key="role">web</vmpersona:label>
//	    <vmpersona:label key="tier">frontend</vmpersona:label>
//	  </vmpersona:labels>
//	</metadata>
//
// virsh edit, virt-install --metadata or SetLabels (PUT
// /instances/{id}/labels, vmpersonactl instance label) write it.

// LabelsNamespace is the XML namespace of the labels element.
const LabelsNamespace = "https://vmpersona.org/xmlns/labels/1"

// labelsPrefix is the namespace prefix libvirt writes.
const labelsPrefix = "vmpersona"

type xmlLabels struct {
	XMLName xml.Name   `xml:"labels"`
	Labels  []xmlLabel `xml:"label"`
}

type xmlLabel struct {
	Key   string `xml:"key,attr"`
	Value string `xml:",chardata"`
}

// labelsOf reads the labels from a domain's metadata; nil when it has none.
func labelsOf(m *libvirtxml.DomainMetadata) map[string]string {
	if m == nil || !strings.Contains(m.XML, LabelsNamespace) {
		return nil
	}
	dec := xml.NewDecoder(strings.NewReader(m.XML))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Space != LabelsNamespace || se.Name.Local != "labels" {
			continue
		}
		var x xmlLabels
		if err := dec.DecodeElement(&x, &se); err != nil {
			return nil
		}
		out := map[string]string{}
		for _, l := range x.Labels {
			if l.Key != "" {
				out[l.Key] = strings.TrimSpace(l.Value)
			}
		}
		return out
	}
}

// labelsXML is the labels element as libvirt's SetMetadata takes it.
func labelsXML(labels map[string]string) (string, error) {
	x := xmlLabels{}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		x.Labels = append(x.Labels, xmlLabel{Key: k, Value: labels[k]})
	}
	var b bytes.Buffer
	if err := xml.NewEncoder(&b).Encode(x); err != nil {
		return "", err
	}
	return b.String(), nil
}

// SetLabels replaces a domain's labels (its metadata element): in its live
// definition when it runs and in its persistent one when it has one. The
// domain's snapshot has the new labels when it returns.
func (d *Discovery) SetLabels(ctx context.Context, domain string, labels map[string]string) error {
	d.mu.Lock()
	conn := d.conn
	d.mu.Unlock()
	if conn == nil {
		return ErrNotConnected
	}
	res := make(chan error, 1)
	go func() { res <- d.setLabels(conn, domain, labels) }()
	select {
	case err := <-res:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *Discovery) setLabels(conn *lv.Connect, domain string, labels map[string]string) error {
	dom, err := lookup(conn, domain)
	if err != nil {
		return err
	}
	defer dom.Free()
	name, _ := dom.GetName()
	active, err := dom.IsActive()
	if err != nil {
		return fmt.Errorf("domain %s: %s", name, lvMessage(err))
	}
	persistent, err := dom.IsPersistent()
	if err != nil {
		return fmt.Errorf("domain %s: %s", name, lvMessage(err))
	}
	var flags lv.DomainModificationImpact
	if active {
		flags |= lv.DOMAIN_AFFECT_LIVE
	}
	if persistent {
		flags |= lv.DOMAIN_AFFECT_CONFIG
	}
	body := ""
	if len(labels) > 0 {
		if body, err = labelsXML(labels); err != nil {
			return err
		}
	}
	// An empty body removes the element.
	if err := dom.SetMetadata(lv.DOMAIN_METADATA_ELEMENT, body, labelsPrefix, LabelsNamespace, flags); err != nil {
		return fmt.Errorf("domain %s: set labels: %s", name, lvMessage(err))
	}
	st, err := d.read(dom)
	if err != nil {
		return fmt.Errorf("domain %s: read it back: %s", name, lvMessage(err))
	}
	d.apply(st)
	d.log.Info("domain labels set", "domain", name, "labels", labels)
	return nil
}
