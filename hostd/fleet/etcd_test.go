package fleet

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// cluster is a set of real etcd members started in the test process
// (embed), on loopback ports, with their data in temporary directories.
type cluster struct {
	t       *testing.T
	members []*member
}

type member struct {
	name               string
	dir                string
	peerURL, clientURL url.URL
	e                  *embed.Etcd
}

// startCluster starts n members and waits until they serve.
func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{t: t}
	for i := range n {
		m := &member{name: fmt.Sprintf("m%d", i), dir: filepath.Join(t.TempDir(), "etcd")}
		m.peerURL = url.URL{Scheme: "http", Host: testproc.FreeTCPAddr(t)}
		m.clientURL = url.URL{Scheme: "http", Host: testproc.FreeTCPAddr(t)}
		c.members = append(c.members, m)
	}
	errc := make(chan error, n)
	for _, m := range c.members {
		go func() { errc <- m.start(c.initial(), "new") }()
	}
	for range n {
		if err := <-errc; err != nil {
			c.stopAll()
			t.Fatal(err)
		}
	}
	t.Cleanup(c.stopAll)
	return c
}

func (m *member) config(initial, state string) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = m.name, m.dir
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{m.peerURL}, []url.URL{m.peerURL}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{m.clientURL}, []url.URL{m.clientURL}
	cfg.InitialCluster, cfg.ClusterState, cfg.InitialClusterToken = initial, state, "vmpersona-test"
	cfg.LogLevel, cfg.LogOutputs = "error", []string{"stderr"}
	cfg.UnsafeNoFsync = true // temporary data: durability is not under test here
	return cfg
}

func (m *member) start(initial, state string) error {
	e, err := embed.StartEtcd(m.config(initial, state))
	if err != nil {
		return fmt.Errorf("etcd member %s: %w", m.name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return fmt.Errorf("etcd member %s: not ready after 60 s", m.name)
	}
	m.e = e
	return nil
}

// stop stops member i (its data stays).
func (c *cluster) stop(i int) {
	if m := c.members[i]; m.e != nil {
		m.e.Close()
		m.e = nil
	}
}

// restart starts member i again on its data.
func (c *cluster) restart(i int) {
	c.t.Helper()
	// A member restarted alone in a cluster without quorum becomes ready
	// only once a quorum is back: start it in the background.
	m := c.members[i]
	e, err := embed.StartEtcd(m.config(c.initial(), "existing"))
	if err != nil {
		c.t.Fatalf("restart etcd member %s: %v", m.name, err)
	}
	m.e = e
}

// initial is the cluster's initial-cluster setting: every member's peer URL.
func (c *cluster) initial() string {
	var initial []string
	for _, m := range c.members {
		initial = append(initial, m.name+"="+m.peerURL.String())
	}
	return strings.Join(initial, ",")
}

func (c *cluster) stopAll() {
	for i := range c.members {
		c.stop(i)
	}
}

func (c *cluster) endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.clientURL.String())
	}
	return out
}
