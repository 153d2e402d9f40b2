package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	lv "libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/internal/testproc"
)

// These tests run against libvirt's built-in test driver (test:///default,
// and test:///FILE for a private node): real libvirt, no daemon. The
// default test node is shared by every connection to it in this process
// while one is open, so each test uses its own domain names and removes
// them. qemu:///system is exercised by the integration tier.

const testURI = "test:///default"

func TestMain(m *testing.M) {
	if err := startEventLoop(slog.Default()); err != nil {
		fmt.Fprintln(os.Stderr, "libvirt event loop:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// control opens the test's own connection to the test driver, through
// which it defines and starts domains as an administrator would.
func control(t *testing.T) *lv.Connect {
	t.Helper()
	c, err := lv.NewConnect(testURI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type domOpts struct {
	channelPath string // unix channel at this path
	vsockCID    string // vsock device with this CID
	start       bool
}

func domainXML(name string, o domOpts) string {
	var dev strings.Builder
	if o.channelPath != "" {
		fmt.Fprintf(&dev, "<channel type='unix'><source mode='bind' path='%s'/><target type='virtio' name='%s'/></channel>", o.channelPath, PortName)
	}
	// Another channel, so that discovery has to pick the right one.
	dev.WriteString("<channel type='unix'><source mode='bind' path='/tmp/other.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
	if o.vsockCID != "" {
		fmt.Fprintf(&dev, "<vsock model='virtio'><cid auto='no' address='%s'/></vsock>", o.vsockCID)
	}
	return fmt.Sprintf("<domain type='test'><name>%s</name><memory>8192</memory><os><type>hvm</type></os><devices>%s</devices></domain>", name, dev.String())
}

// define defines (and with o.start, starts) a persistent domain, removed
// at the end of the test.
func define(t *testing.T, c *lv.Connect, name string, o domOpts) *lv.Domain {
	t.Helper()
	dom, err := c.DomainDefineXML(domainXML(name, o))
	if err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	t.Cleanup(func() {
		if d, err := c.LookupDomainByName(name); err == nil {
			if on, _ := d.IsActive(); on {
				d.Destroy()
			}
			d.Undefine()
			d.Free()
		}
		dom.Free()
	})
	if o.start {
		if err := dom.Create(); err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
	}
	return dom
}

func newDiscovery(t *testing.T, uri string, mgr Agents, quiet bool) *Discovery {
	t.Helper()
	cfg := Config{URI: uri, Agents: mgr, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond}
	if quiet {
		// Only events can bring changes: no resync, no polling.
		cfg.Resync, cfg.PortPoll = time.Hour, time.Hour
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d
}

func newManager(t *testing.T) *agents.Manager {
	mgr := agents.NewManager(agents.Config{})
	t.Cleanup(mgr.Close)
	return mgr
}

func waitState(t *testing.T, d *Discovery, name, state string) agents.Discovered {
	t.Helper()
	var s agents.Discovered
	testproc.WaitFor(t, name+" "+state, func() bool {
		var ok bool
		s, ok = d.Lookup(name)
		return ok && s.State == state
	})
	return s
}

func TestDiscoveryListsDomains(t *testing.T) {
	c := control(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "with.sock")
	define(t, c, "vmp-with", domOpts{channelPath: sock, start: true})
	define(t, c, "vmp-without", domOpts{start: true})
	define(t, c, "vmp-vsock", domOpts{vsockCID: "42", start: true})
	off := define(t, c, "vmp-off", domOpts{channelPath: filepath.Join(dir, "off.sock")})
	mgr := newManager(t)
	d := newDiscovery(t, testURI, mgr, false)

	with := waitState(t, d, "vmp-with", agents.InstanceRunning)
	if with.Endpoint != "unix:"+sock || with.Reason != "" || !with.Persistent {
		t.Errorf("vmp-with = %+v; want endpoint unix:%s, no reason", with, sock)
	}
	if st, err := mgr.Get("vmp-with"); err != nil || st.Source != Source || st.Endpoint != "unix:"+sock {
		t.Errorf("manager vmp-with = %+v, %v", st, err)
	}

	without := waitState(t, d, "vmp-without", agents.InstanceRunning)
	wantReason := "no org.vmpersona.agent.0 channel; run: vmpersonactl instance enable vmp-without"
	if without.Endpoint != "" || without.Reason != wantReason {
		t.Errorf("vmp-without = %+v; want reason %q", without, wantReason)
	}
	if _, err := mgr.Get("vmp-without"); !errors.Is(err, agents.ErrUnknownInstance) {
		t.Errorf("a domain without channel is managed (%v)", err)
	}

	vs := waitState(t, d, "vmp-vsock", agents.InstanceRunning)
	if vs.Endpoint != "vsock:42:7070" {
		t.Errorf("vmp-vsock endpoint %q, want vsock:42:7070", vs.Endpoint)
	}
	if st, err := mgr.Get("vmp-vsock"); err != nil || st.Endpoint != "vsock:42:7070" {
		t.Errorf("manager vmp-vsock = %+v, %v", st, err)
	}

	o := waitState(t, d, "vmp-off", agents.InstanceShutoff)
	if o.Endpoint != "" || o.Reason != "domain is not running" {
		t.Errorf("vmp-off = %+v; want no endpoint, not running", o)
	}
	if _, err := mgr.Get("vmp-off"); err == nil {
		t.Error("a shut off domain is managed")
	}

	// The test driver's own running domain has no channel.
	if s, ok := d.Lookup("test"); !ok || s.State != agents.InstanceRunning || !strings.Contains(s.Reason, "instance enable test") {
		t.Errorf("the test driver's domain: %+v, %v", s, ok)
	}

	// UUIDs resolve to names, in any case, with or without dashes.
	uuid, _ := off.GetUUIDString()
	for _, id := range []string{uuid, strings.ToUpper(uuid), strings.ReplaceAll(uuid, "-", ""), "vmp-off"} {
		if name, ok := d.Resolve(id); !ok || name != "vmp-off" {
			t.Errorf("Resolve(%q) = %q, %v; want vmp-off", id, name, ok)
		}
	}
	if _, ok := d.Resolve("00000000-0000-0000-0000-000000000000"); ok {
		t.Error("Resolve of an unknown UUID succeeded")
	}
	if s, ok := d.Lookup(uuid); !ok || s.Name != "vmp-off" || s.UUID != uuid {
		t.Errorf("Get(uuid) = %+v, %v", s, ok)
	}

	names := map[string]bool{}
	for _, s := range d.List() {
		names[s.Name] = true
	}
	for _, n := range []string{"vmp-with", "vmp-without", "vmp-vsock", "vmp-off", "test"} {
		if !names[n] {
			t.Errorf("Instances lacks %s", n)
		}
	}
	if ok, errMsg := d.Connected(); !ok || errMsg != "" {
		t.Errorf("Connected = %v, %q", ok, errMsg)
	}
}

func TestLifecycleEvents(t *testing.T) {
	c := control(t)
	mgr := newManager(t)
	// No resync and no polling: every change below must come from an event.
	d := newDiscovery(t, testURI, mgr, true)
	testproc.WaitFor(t, "the first resync", func() bool { _, ok := d.Lookup("test"); return ok })

	sock := filepath.Join(t.TempDir(), "ev.sock")
	dom := define(t, c, "vmp-events", domOpts{channelPath: sock})
	s := waitState(t, d, "vmp-events", agents.InstanceShutoff) // defined
	uuid := s.UUID

	if err := dom.Create(); err != nil {
		t.Fatal(err)
	}
	s = waitState(t, d, "vmp-events", agents.InstanceRunning) // started
	if s.Endpoint != "unix:"+sock {
		t.Errorf("after start: %+v", s)
	}
	testproc.WaitFor(t, "vmp-events managed", func() bool { _, err := mgr.Get("vmp-events"); return err == nil })

	if err := dom.Suspend(); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, "vmp-events", agents.InstancePaused)
	if _, err := mgr.Get("vmp-events"); err != nil {
		t.Errorf("a paused domain left the manager: %v", err)
	}
	if err := dom.Resume(); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, "vmp-events", agents.InstanceRunning)

	if err := dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	s = waitState(t, d, "vmp-events", agents.InstanceShutoff) // stopped: listed, not managed
	if s.Endpoint != "" {
		t.Errorf("stopped domain keeps an endpoint: %+v", s)
	}
	testproc.WaitFor(t, "vmp-events out of the manager", func() bool {
		_, err := mgr.Get("vmp-events")
		return errors.Is(err, agents.ErrUnknownInstance)
	})

	if err := dom.Undefine(); err != nil {
		t.Fatal(err)
	}
	testproc.WaitFor(t, "vmp-events gone", func() bool { _, ok := d.Lookup("vmp-events"); return !ok })
	if _, ok := d.Resolve(uuid); ok {
		t.Error("the UUID of an undefined domain still resolves")
	}
}

func TestEnableChannel(t *testing.T) {
	c := control(t)
	mgr := newManager(t)
	d := newDiscovery(t, testURI, mgr, false)
	define(t, c, "vmp-enable", domOpts{})
	waitState(t, d, "vmp-enable", agents.InstanceShutoff)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	desc, err := d.EnableChannel(ctx, "vmp-enable")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "persistent definition") || !strings.Contains(desc, "when the domain starts") {
		t.Errorf("description %q", desc)
	}
	dom, err := c.LookupDomainByName("vmp-enable")
	if err != nil {
		t.Fatal(err)
	}
	defer dom.Free()
	def, err := dom.GetXMLDesc(lv.DOMAIN_XML_INACTIVE)
	if err != nil {
		t.Fatal(err)
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(def); err != nil {
		t.Fatal(err)
	}
	var found *libvirtxml.DomainChannel
	for i, ch := range x.Devices.Channels {
		if ch.Target != nil && ch.Target.VirtIO != nil && ch.Target.VirtIO.Name == PortName {
			found = &x.Devices.Channels[i]
		}
	}
	// libvirt leaves <source> out of a bind-mode channel with no path yet:
	// the path is assigned when the domain starts.
	if found == nil || found.Source == nil || found.Source.UNIX == nil || (found.Source.UNIX.Mode != "" && found.Source.UNIX.Mode != "bind") {
		t.Fatalf("definition after EnableChannel has no bind-mode unix %s channel:\n%s", PortName, def)
	}
	if len(x.Devices.Channels) != 2 {
		t.Errorf("definition has %d channels, want the old one kept and the new one added", len(x.Devices.Channels))
	}

	// A second time: already there.
	if _, err := d.EnableChannel(ctx, "vmp-enable"); !errors.Is(err, ErrAlreadyEnabled) {
		t.Errorf("second EnableChannel: %v, want ErrAlreadyEnabled", err)
	}
	// By UUID: the same domain.
	uuid, _ := dom.GetUUIDString()
	if _, err := d.EnableChannel(ctx, uuid); !errors.Is(err, ErrAlreadyEnabled) {
		t.Errorf("EnableChannel by UUID: %v, want ErrAlreadyEnabled", err)
	}
	if _, err := d.EnableChannel(ctx, "vmp-no-such-domain"); !errors.Is(err, ErrNoDomain) {
		t.Errorf("unknown domain: %v, want ErrNoDomain", err)
	}

	// A running domain without the channel: the definition gains it; the
	// live attach either works or the description says it did not.
	define(t, c, "vmp-enable-live", domOpts{start: true})
	waitState(t, d, "vmp-enable-live", agents.InstanceRunning)
	desc, err = d.EnableChannel(ctx, "vmp-enable-live")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(desc, "persistent definition") || !strings.Contains(desc, "running domain") {
		t.Errorf("live description %q", desc)
	}
	t.Logf("running domain: %s", desc)
}

func TestNameTakenByAnotherSource(t *testing.T) {
	c := control(t)
	mgr := newManager(t)
	static := agents.Endpoint{Kind: agents.KindUnix, Path: "/nonexistent/static.sock"}
	if err := mgr.Add("vmp-clash", static, "static"); err != nil {
		t.Fatal(err)
	}
	define(t, c, "vmp-clash", domOpts{channelPath: "/tmp/clash.sock", start: true})
	d := newDiscovery(t, testURI, mgr, false)
	s := waitState(t, d, "vmp-clash", agents.InstanceRunning)
	if !strings.Contains(s.Reason, "already used") || s.Endpoint != "" {
		t.Errorf("clash status %+v", s)
	}
	if st, _ := mgr.Get("vmp-clash"); st.Source != "static" || st.Endpoint != static.String() {
		t.Errorf("the static instance was changed: %+v", st)
	}
}

// TestReconnect: libvirt is unreachable at first (the test driver's node
// file does not exist yet); Run keeps trying with backoff and finds the
// domains once it can connect.
func TestReconnect(t *testing.T) {
	dir := t.TempDir()
	node := filepath.Join(dir, "node.xml")
	mgr := newManager(t)
	d := newDiscovery(t, "test://"+node, mgr, false)
	testproc.WaitFor(t, "a connection error", func() bool { _, e := d.Connected(); return e != "" })
	if ok, _ := d.Connected(); ok {
		t.Fatal("connected to a missing node file")
	}
	sock := filepath.Join(dir, "agent.sock")
	x := fmt.Sprintf("<node>%s</node>", strings.Replace(domainXML("vmp-node", domOpts{channelPath: sock}), "<domain type='test'>", "<domain type='test'><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>", 1))
	if err := os.WriteFile(node, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	// Domains in a test driver node file start running.
	s := waitState(t, d, "vmp-node", agents.InstanceRunning)
	if s.Endpoint != "unix:"+sock {
		t.Errorf("vmp-node = %+v", s)
	}
	if name, ok := d.Resolve("6695EB01-F6A4-8304-79AA-97F2502E193F"); !ok || name != "vmp-node" {
		t.Errorf("Resolve = %q, %v", name, ok)
	}
	if ok, e := d.Connected(); !ok || e != "" {
		t.Errorf("Connected = %v, %q", ok, e)
	}
}

func TestFindChannel(t *testing.T) {
	for _, tc := range []struct {
		name, devices string
		endpoint      string
		chardev       string
		reason        string
	}{
		{"unix", `<channel type='unix'><source mode='bind' path='/run/a.sock'/><target type='virtio' name='org.vmpersona.agent.0' state='connected'/><alias name='channel1'/></channel>`,
			"unix:/run/a.sock", "charchannel1", ""},
		{"other port only", `<channel type='unix'><source mode='bind' path='/run/a.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
			"", "", "no org.vmpersona.agent.0 channel; run: vmpersonactl instance enable vm"},
		{"no path yet", `<channel type='unix'><source mode='bind'/><target type='virtio' name='org.vmpersona.agent.0'/></channel>`,
			"", "", "no socket path yet"},
		{"client mode", `<channel type='unix'><source mode='connect' path='/run/a.sock'/><target type='virtio' name='org.vmpersona.agent.0'/></channel>`,
			"", "", "mode='connect'"},
		{"pty", `<channel type='pty'><target type='virtio' name='org.vmpersona.agent.0'/></channel>`,
			"", "", "not a unix socket channel"},
		{"vsock", `<vsock model='virtio'><cid auto='yes' address='3'/></vsock>`, "vsock:3:7070", "", ""},
		{"vsock without address", `<vsock model='virtio'><cid auto='yes'/></vsock>`, "", "", "no org.vmpersona.agent.0 channel"},
		{"vsock reserved cid", `<vsock model='virtio'><cid address='2'/></vsock>`, "", "", "unusable CID"},
		{"channel wins over vsock", `<vsock model='virtio'><cid address='5'/></vsock><channel type='unix'><source mode='bind' path='/run/b.sock'/><target type='virtio' name='org.vmpersona.agent.0'/></channel>`,
			"unix:/run/b.sock", "", ""},
		{"no devices", ``, "", "", "no org.vmpersona.agent.0 channel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var x libvirtxml.Domain
			if err := x.Unmarshal("<domain type='kvm'><name>vm</name><devices>" + tc.devices + "</devices></domain>"); err != nil {
				t.Fatal(err)
			}
			ch := findChannel(&x, "vm")
			ep := ""
			if ch.Endpoint.Kind != "" {
				ep = ch.Endpoint.String()
			}
			if ep != tc.endpoint || ch.Chardev != tc.chardev || !strings.Contains(ch.Reason, tc.reason) || (tc.reason == "") != (ch.Reason == "") {
				t.Errorf("findChannel = %+v (endpoint %q); want endpoint %q, chardev %q, reason containing %q", ch, ep, tc.endpoint, tc.chardev, tc.reason)
			}
		})
	}
}

func TestPortOpenFromXMLState(t *testing.T) {
	if p := portOpen(nil, agentChannel{State: "connected"}); p == nil || !*p {
		t.Errorf("connected: %v", p)
	}
	if p := portOpen(nil, agentChannel{State: "disconnected"}); p == nil || *p {
		t.Errorf("disconnected: %v", p)
	}
	if p := portOpen(nil, agentChannel{}); p != nil {
		t.Errorf("no state, no chardev: %v, want unknown", *p)
	}
}

func TestFrontendOpen(t *testing.T) {
	ans := `{"return":[{"frontend-open":false,"filename":"disconnected:unix:/x,server=on","label":"charchannel0"},{"frontend-open":true,"filename":"unix:/y,server=on","label":"charchannel1"}],"id":"libvirt-12"}`
	if p := frontendOpen(ans, "charchannel1"); p == nil || !*p {
		t.Errorf("charchannel1: %v", p)
	}
	if p := frontendOpen(ans, "charchannel0"); p == nil || *p {
		t.Errorf("charchannel0: %v", p)
	}
	for _, bad := range []string{"", "not json", `{"return":{}}`} {
		if p := frontendOpen(bad, "charchannel0"); p != nil {
			t.Errorf("frontendOpen(%q) = %v, want unknown", bad, *p)
		}
	}
	if p := frontendOpen(ans, "charchannel9"); p != nil {
		t.Errorf("missing label: %v", *p)
	}
}

func TestInsertDevice(t *testing.T) {
	in := "<domain type='kvm'>\n  <name>vm</name>\n  <devices>\n    <emulator>/usr/bin/qemu</emulator>\n  </devices>\n  <seclabel type='dynamic'/>\n</domain>\n"
	out, err := insertDevice(in, "<channel/>")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "<emulator>/usr/bin/qemu</emulator>\n    <channel/>\n  </devices>") || !strings.HasSuffix(out, "<seclabel type='dynamic'/>\n</domain>\n") {
		t.Errorf("insertDevice:\n%s", out)
	}
	out, err = insertDevice("<domain><name>vm</name></domain>", "<channel/>")
	if err != nil || !strings.Contains(out, "<devices>\n<channel/>\n</devices>") {
		t.Errorf("without <devices>: %q, %v", out, err)
	}
	if _, err := insertDevice("garbage", "<channel/>"); err == nil {
		t.Error("insertDevice into garbage succeeded")
	}
}

func TestNew(t *testing.T) {
	if _, err := New(Config{Agents: newManager(t)}); err == nil {
		t.Error("New without URI succeeded")
	}
	if _, err := New(Config{URI: testURI}); err == nil {
		t.Error("New without agent manager succeeded")
	}
}
