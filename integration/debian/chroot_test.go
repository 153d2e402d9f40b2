//go:build integration_full

package debian

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostPackageInChroot installs vmpersona-hostd.deb into a Debian 12
// chroot with apt (which fetches libvirt0 and friends), runs the binaries
// there, and checks what the maintainer scripts did: the group, the enabled
// units, no start without systemd, and remove versus purge.
func TestHostPackageInChroot(t *testing.T) {
	root := extractRoot(t, "host-root")
	mountProc(t, root)
	copyFile(t, "/etc/resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	deb := filepath.Base(env.debs["vmpersona-hostd"])
	copyFile(t, env.debs["vmpersona-hostd"], filepath.Join(root, "tmp", deb))

	t0 := time.Now()
	if _, err := chroot(t, root, 5*time.Minute, "apt-get", "update"); err != nil {
		t.Fatal(err)
	}
	out, err := chroot(t, root, 10*time.Minute, "apt-get", "install", "-y", "--no-install-recommends", "/tmp/"+deb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("apt-get update + install %s in the chroot: %s", deb, time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(out, "libvirt0") {
		t.Errorf("apt did not pull libvirt0 in:\n%s", tail(out, 30))
	}

	out, err = chroot(t, root, time.Minute, "vmpersona-hostd", "--version")
	if err != nil || !strings.HasPrefix(out, "vmpersona-hostd ") {
		t.Errorf("vmpersona-hostd --version in the chroot: %v: %q", err, out)
	}
	t.Logf("chroot: %s", strings.TrimSpace(out))
	out, err = chroot(t, root, time.Minute, "vmpersonactl", "--help")
	if err != nil || !strings.Contains(out, "vmpersonactl") {
		t.Errorf("vmpersonactl --help in the chroot: %v: %q", err, tail(out, 5))
	}
	// The maintainer scripts' work.
	if out, err := chroot(t, root, time.Minute, "getent", "group", "vmpersona"); err != nil || !strings.HasPrefix(out, "vmpersona:") {
		t.Errorf("group vmpersona: %v %q", err, out)
	}
	for _, link := range []string{
		"etc/systemd/system/multi-user.target.wants/vmpersona-hostd.service",
		"etc/systemd/system/sockets.target.wants/vmpersona-hostd.socket",
	} {
		if target, err := os.Readlink(filepath.Join(root, link)); err != nil {
			t.Errorf("postinst did not enable the unit: %v", err)
		} else {
			t.Logf("/%s -> %s", link, target)
		}
	}
	fi, err := os.Stat(filepath.Join(root, "etc/vmpersona/tokens.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("/etc/vmpersona/tokens.csv is %04o, want 0600", fi.Mode().Perm())
	}
	// The installed units verify in a real Debian root.
	if out, err := runOut(t.Context(), nil, "systemd-analyze", "verify", "--man=no", "--root="+root,
		"vmpersona-hostd.service", "vmpersona-hostd.socket"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify in the chroot: %v\n%s", err, out)
	}

	// remove keeps the state, purge removes it.
	state := filepath.Join(root, "var/lib/vmpersona")
	if err := os.MkdirAll(state, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "MANIFEST"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := chroot(t, root, 5*time.Minute, "dpkg", "--remove", "vmpersona-hostd"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "MANIFEST")); err != nil {
		t.Errorf("dpkg --remove removed the state: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/default/vmpersona-hostd")); err != nil {
		t.Errorf("dpkg --remove removed the conffile: %v", err)
	}
	if _, err := chroot(t, root, 5*time.Minute, "dpkg", "--purge", "vmpersona-hostd"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("dpkg --purge left /var/lib/vmpersona: %v", err)
	}
	for _, p := range []string{"etc/default/vmpersona-hostd", "etc/vmpersona/tokens.csv",
		"etc/systemd/system/multi-user.target.wants/vmpersona-hostd.service"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("dpkg --purge left /%s", p)
		}
	}
}
