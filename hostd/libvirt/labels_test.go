package libvirt

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/vmpersona/vmpersona/hostd/agents"
)

// Labels written by SetLabels land in the domain's metadata under the
// vmpersona namespace (as the README documents it), discovery reads them
// back, and a domain defined with the element by hand has them too.
func TestInstanceLabelsInDomainMetadata(t *testing.T) {
	c := control(t)
	d := newDiscovery(t, testURI, newManager(t), false)
	define(t, c, "vmp-labels", domOpts{start: true})
	waitState(t, d, "vmp-labels", agents.InstanceRunning)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[string]string{"role": "web", "tier": "frontend"}
	if err := d.SetLabels(ctx, "vmp-labels", want); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Lookup("vmp-labels"); !maps.Equal(got.Labels, want) {
		t.Fatalf("labels after SetLabels: %v, want %v", got.Labels, want)
	}
	dom, err := c.LookupDomainByName("vmp-labels")
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Free()
	for _, flags := range []lv.DomainXMLFlags{0, lv.DOMAIN_XML_INACTIVE} {
		raw, err := dom.GetXMLDesc(flags)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(raw, `xmlns:vmpersona="`+LabelsNamespace+`"`) || !strings.Contains(raw, `<vmpersona:label key="role">web</vmpersona:label>`) {
			t.Errorf("domain XML (flags %d) lacks the labels element:\n%s", flags, raw)
		}
	}
	// Replaced, then removed.
	if err := d.SetLabels(ctx, "vmp-labels", map[string]string{"role": "db"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Lookup("vmp-labels"); !maps.Equal(got.Labels, map[string]string{"role": "db"}) {
		t.Fatalf("labels after the second SetLabels: %v", got.Labels)
	}
	if err := d.SetLabels(ctx, "vmp-labels", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Lookup("vmp-labels"); len(got.Labels) != 0 {
		t.Fatalf("labels after removing them: %v", got.Labels)
	}
	if err := d.SetLabels(ctx, "no-such-domain", want); err == nil {
		t.Fatal("labels set on a domain that does not exist")
	}
}

func TestLabelsOfMetadata(t *testing.T) {
	for _, tc := range []struct {
		xml  string
		want map[string]string
	}{
		{``, nil},
		{`<other:x xmlns:other="urn:other"><label key="a">b</label></other:x>`, nil},
		{`<vmpersona:labels xmlns:vmpersona="https://vmpersona.org/xmlns/labels/1"><vmpersona:label key="role">web</vmpersona:label><vmpersona:label key="rack"> 4 </vmpersona:label></vmpersona:labels>`,
			map[string]string{"role": "web", "rack": "4"}},
		{`<foo xmlns="urn:x"/><labels xmlns="https://vmpersona.org/xmlns/labels/1"><label key="k">v</label></labels>`, map[string]string{"k": "v"}},
	} {
		got := labelsOf(&libvirtxml.DomainMetadata{XML: tc.xml})
		if !maps.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
			t.Errorf("labelsOf(%s) = %v, want %v", tc.xml, got, tc.want)
		}
	}
}
