// Package testetcd runs real etcd members for the fleet tests: Debian's
// etcd-server (installed by make's test dependencies) as processes on
// loopback ports, with their data in a temporary directory. A member is
// ended the way a crash ends it (kill -9); its data stays for a restart.
package testetcd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// Bin is the etcd server the members run.
const Bin = "/usr/bin/etcd"

// TLS makes the members serve their clients over TLS with Cert and Key,
// and accept only clients with a certificate signed by CA.
type TLS struct{ Cert, Key, CA string }

// Cluster is a set of members; they are killed when the test ends.
type Cluster struct {
	t       testing.TB
	tls     *TLS
	members []*member
}

type member struct {
	name, dir          string
	peerURL, clientURL string
	proc               *testproc.Proc
	log                *testproc.Output
}

// Start starts n members and waits until they have elected a leader.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := StartTLS(t, n, nil)
	cli := c.Client(nil)
	defer cli.Close()
	c.WaitLeader(cli)
	return c
}

// StartTLS starts n members serving their clients as tls says (plain HTTP
// when nil); it does not wait for them: WaitLeader does, with a client that
// has a certificate.
func StartTLS(t testing.TB, n int, tls *TLS) *Cluster {
	t.Helper()
	if _, err := os.Stat(Bin); err != nil {
		t.Fatalf("%s is missing: the fleet tests need Debian's etcd-server (make test installs it): %v", Bin, err)
	}
	c := &Cluster{t: t, tls: tls}
	scheme := "http"
	if tls != nil {
		scheme = "https"
	}
	dir := testproc.ShortDir(t)
	for i := range n {
		c.members = append(c.members, &member{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(dir, fmt.Sprintf("m%d", i)),
			peerURL:   "http://" + testproc.FreeTCPAddr(t),
			clientURL: scheme + "://" + testproc.FreeTCPAddr(t),
		})
	}
	for i := range c.members {
		c.start(i, "new")
	}
	return c
}

func (c *Cluster) start(i int, state string) {
	c.t.Helper()
	m := c.members[i]
	var initial []string
	for _, o := range c.members {
		initial = append(initial, o.name+"="+o.peerURL)
	}
	args := []string{"--name", m.name, "--data-dir", m.dir,
		"--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
		"--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", state,
		"--initial-cluster-token", "vmpersona-test", "--log-level", "error", "--logger", "zap"}
	if c.tls != nil {
		args = append(args, "--cert-file", c.tls.Cert, "--key-file", c.tls.Key,
			"--trusted-ca-file", c.tls.CA, "--client-cert-auth")
	}
	m.log = &testproc.Output{Limit: 1 << 20}
	cmd := exec.Command(Bin, args...)
	cmd.Stderr = m.log
	m.proc = testproc.Start(c.t, cmd)
}

// Kill kills member i (kill -9); its data stays.
func (c *Cluster) Kill(i int) { c.members[i].proc.Kill() }

// Restart starts member i again on its data. It does not wait: a member
// restarted in a cluster without quorum serves only once a quorum is back.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.start(i, "existing")
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.clientURL)
	}
	return out
}

// Client is a client of every member; cfg gives its TLS (nil: none). The
// caller closes it.
func (c *Cluster) Client(cfg *clientv3.Config) *clientv3.Client {
	c.t.Helper()
	if cfg == nil {
		cfg = &clientv3.Config{}
	}
	cc := *cfg
	cc.Endpoints, cc.DialTimeout, cc.Logger = c.Endpoints(), 2*time.Second, zap.NewNop()
	cli, err := clientv3.New(cc)
	if err != nil {
		c.t.Fatal(err)
	}
	return cli
}

// Leader is the index of the member that leads, -1 when none says so.
func (c *Cluster) Leader(cli *clientv3.Client) int {
	for i, m := range c.members {
		if m.proc == nil || m.proc.Exited() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cli.Status(ctx, m.clientURL)
		cancel()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// WaitLeader waits until a member leads; if none does within a generous
// bound, the test fails with the members' logs.
func (c *Cluster) WaitLeader(cli *clientv3.Client) {
	c.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for c.Leader(cli) < 0 {
		if time.Now().After(deadline) {
			var logs []string
			for _, m := range c.members {
				logs = append(logs, m.name+": "+m.log.String())
			}
			c.t.Fatalf("no etcd member leads after 90 s:\n%s", strings.Join(logs, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
