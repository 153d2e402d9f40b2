package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeTestPKI writes a CA and a server certificate for 127.0.0.1 signed
// by it; it returns the paths of the CA, the server certificate and key.
func writeTestPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vmpersona test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER, 0o644), write("server.pem", "CERTIFICATE", srvDER, 0o644),
		write("server.key", "EC PRIVATE KEY", keyDER, 0o600)
}

func TestHTTPSWithCACert(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeTestPKI(t, dir)
	d := startDaemons(t, false, "--tls-cert", cert, "--tls-key", key)
	if !strings.HasPrefix(d.url, "https://") {
		t.Fatalf("the daemon does not serve TLS: %s", d.url)
	}

	// Unknown CA: refused, exit 1, saying why.
	r := d.ctlTCP(t, tokViewer, "persona", "list")
	want(t, r, exitGeneral, "https without the CA")
	if !strings.Contains(r.stderr, "certificate") {
		t.Errorf("unknown CA: %q", r.stderr)
	}
	r = runCtl(t, []string{"VMPERSONA_URL=" + d.url, "VMPERSONA_TOKEN=" + tokViewer}, "", "--cacert", ca, "persona", "list")
	want(t, r, 0, "https with --cacert")
	r = runCtl(t, []string{"VMPERSONA_URL=" + d.url, "VMPERSONA_TOKEN=" + tokViewer, "VMPERSONA_CACERT=" + ca}, "", "instances")
	want(t, r, 0, "https with VMPERSONA_CACERT")
	r = runCtl(t, []string{"VMPERSONA_URL=" + d.url}, "", "--cacert", cert+".missing", "persona", "list")
	want(t, r, exitGeneral, "a missing CA file")
	r = runCtl(t, []string{"VMPERSONA_URL=" + d.url}, "", "--cacert", key, "persona", "list")
	want(t, r, exitGeneral, "a CA file without a certificate")
	if !strings.Contains(r.stderr, "holds no PEM certificate") {
		t.Errorf("bad CA file: %q", r.stderr)
	}
}
