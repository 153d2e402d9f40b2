package fleet

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/internal/testetcd"
)

// pki writes a CA and certificates signed by it into dir.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caFile string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), ca: ca, caKey: k}
	p.caFile = filepath.Join(p.dir, "ca.pem")
	os.WriteFile(p.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return p
}

// issue writes a certificate for cn (a server one with 127.0.0.1 when
// server) and returns its cert and key files.
func (p *pki) issue(t *testing.T, cn string, server bool) (string, string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	if server {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	cert, key := filepath.Join(p.dir, cn+".pem"), filepath.Join(p.dir, cn+"-key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key
}

// TestMutualTLSAndRoles runs one member with client certificates and auth:
// the host's name defaults to its certificate's CN, a host whose role may
// only read the catalogue and write its own hosts/<host>/ keys follows the
// catalogue, and its persona writes are refused as forbidden (403), not as
// unavailable.
func TestMutualTLSAndRoles(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srvCert, srvKey := p.issue(t, "etcd", true)
	c := testetcd.StartTLS(t, 1, &testetcd.TLS{Cert: srvCert, Key: srvKey, CA: p.caFile})

	// The role setup of the README, through the root user.
	rootCert, rootKey := p.issue(t, "root", false)
	writerCert, writerKey := p.issue(t, "writer", false)
	hostCert, hostKey := p.issue(t, "h1", false)
	tlsCfg, _, err := clientTLS(Config{CA: p.caFile, Cert: rootCert, Key: rootKey})
	if err != nil {
		t.Fatal(err)
	}
	root := c.Client(&clientv3.Config{TLS: tlsCfg})
	defer root.Close()
	c.WaitLeader(root)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	steps := []func() error{
		func() error {
			_, err := root.UserAddWithOptions(ctx, "root", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.RoleAdd(ctx, "vmpersona-writer"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "vmpersona-writer", "/test/", clientv3.GetPrefixRangeEnd("/test/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.RoleAdd(ctx, "vmpersona-host-h1"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "vmpersona-host-h1", "/test/catalog/", clientv3.GetPrefixRangeEnd("/test/catalog/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error {
			_, err := root.RoleGrantPermission(ctx, "vmpersona-host-h1", "/test/hosts/h1/", clientv3.GetPrefixRangeEnd("/test/hosts/h1/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error {
			_, err := root.UserAddWithOptions(ctx, "writer", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(ctx, "writer", "vmpersona-writer"); return err },
		func() error {
			_, err := root.UserAddWithOptions(ctx, "h1", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		},
		func() error { _, err := root.UserGrantRole(ctx, "h1", "vmpersona-host-h1"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("role setup step %d: %v", i, err)
		}
	}

	w := &host{t: t, dir: t.TempDir(), cfg: Config{Endpoints: c.Endpoints(), CA: p.caFile, Cert: writerCert, Key: writerKey, Prefix: "/test/"}}
	w.open()
	t.Cleanup(w.close)
	h := &host{t: t, dir: t.TempDir(), cfg: Config{Endpoints: c.Endpoints(), CA: p.caFile, Cert: hostCert, Key: hostKey, Prefix: "/test/"}}
	h.open()
	t.Cleanup(h.close)
	if h.b.Host() != "h1" {
		t.Fatalf("host name %q, want the certificate's CN h1", h.b.Host())
	}
	w.waitConnected()
	h.waitConnected()
	if _, err := w.b.CreatePersona(persona("fleetwide", false)); err != nil {
		t.Fatalf("write with the writer role: %v", err)
	}
	waitFor(t, "h1 to follow the catalogue", func() bool { _, err := h.b.GetPersona("fleetwide"); return err == nil })
	_, err = h.b.CreatePersona(persona("mine", false))
	if !errors.Is(err, ErrForbidden) || errdefs.Class(err) != errdefs.ErrForbidden {
		t.Fatalf("write with a host role: %v, want the forbidden class", err)
	}
	waitFor(t, "h1's presence", func() bool {
		hs, err := w.b.Hosts(context.Background())
		if err != nil {
			return false
		}
		for _, p := range hs {
			if p.Host == "h1" {
				return true
			}
		}
		return false
	})
}
