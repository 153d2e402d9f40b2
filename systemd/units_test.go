package systemd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// maxHostdExposure is the highest `systemd-analyze security` exposure the
// host daemon's unit may have.
const maxHostdExposure = 3.0

var units = []string{"vmpersona-hostd.service", "vmpersona-hostd.socket", "vmpersona-guestd.service", "vmpersona-guestd-environment.service"}

// binaries are the ExecStart= programs of the units.
var binaries = map[string]string{
	"vmpersona-hostd":  "/usr/sbin/vmpersona-hostd",
	"vmpersona-guestd": "/usr/sbin/vmpersona-guestd",
}

func needAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd; `make test` installs it): units not verified")
	}
	return p
}

// stageRoot builds a root directory for `systemd-analyze --root`: the
// system's own units (for sysinit.target and friends), our units, and an
// executable at every ExecStart= path (a copy of /bin/true: verify checks
// only that the program exists and is executable).
func stageRoot(t *testing.T, mutate func(name string, unit []byte) []byte) string {
	t.Helper()
	root := t.TempDir()
	sysUnits := filepath.Join(root, "lib/systemd/system")
	if err := os.MkdirAll(sysUnits, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"/lib/systemd/system", "/usr/lib/systemd/system"} {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			if out, err := exec.Command("cp", "-a", dir+"/.", sysUnits).CombinedOutput(); err != nil {
				t.Fatalf("copying %s: %v\n%s", dir, err, out)
			}
			break
		}
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if mutate != nil {
			b = mutate(u, b)
		}
		if err := os.WriteFile(filepath.Join(sysUnits, u), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	trueBin, err := os.ReadFile(truePath)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range binaries {
		dst := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, trueBin, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func analyze(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, needAnalyze(t), args...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// TestVerify runs `systemd-analyze verify` on every unit: syntax, unknown
// settings, dependencies that do not resolve, missing programs. Man pages
// named in Documentation= are checked in the packaging tests (they are
// generated there), so --man=no here.
func TestVerify(t *testing.T) {
	needAnalyze(t)
	root := stageRoot(t, nil)
	out, err := analyze(t, append([]string{"verify", "--man=no", "--root=" + root}, units...)...)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestVerifyCatchesErrors makes sure the verification above would fail on
// a broken unit: a misspelt setting and a missing program.
func TestVerifyCatchesErrors(t *testing.T) {
	needAnalyze(t)
	cases := map[string]func(string, []byte) []byte{
		"unknown setting": func(name string, b []byte) []byte {
			if name == "vmpersona-hostd.service" {
				return bytes.Replace(b, []byte("Type=notify"), []byte("Typo=notify"), 1)
			}
			return b
		},
		"missing program": func(name string, b []byte) []byte {
			if name == "vmpersona-guestd.service" {
				return bytes.Replace(b, []byte("/usr/sbin/vmpersona-guestd"), []byte("/usr/sbin/vmpersona-nothere"), 1)
			}
			return b
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			root := stageRoot(t, mutate)
			out, err := analyze(t, append([]string{"verify", "--man=no", "--root=" + root}, units...)...)
			if err == nil && strings.TrimSpace(out) == "" {
				t.Fatal("systemd-analyze verify accepted a broken unit")
			}
		})
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for vmpersona-hostd\.service: ([0-9.]+)`)

// TestHostdSecurity checks the host daemon's exposure score.
func TestHostdSecurity(t *testing.T) {
	needAnalyze(t)
	out, err := analyze(t, "security", "--offline=true", "--no-pager", "./vmpersona-hostd.service")
	m := exposureRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: %v: no exposure level in\n%s", err, out)
	}
	score, perr := strconv.ParseFloat(m[1], 64)
	if perr != nil {
		t.Fatal(perr)
	}
	t.Logf("vmpersona-hostd.service exposure: %.1f (limit %.1f)", score, maxHostdExposure)
	if score > maxHostdExposure {
		t.Errorf("exposure %.1f > %.1f:\n%s", score, maxHostdExposure, out)
	}
}

// unit is a parsed unit file: section -> key -> values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, name string) unit {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	u := unit{}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: bad line %q", name, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// TestContract pins what the brief and the contract require of the units,
// the settings a verify pass would accept either way.
func TestContract(t *testing.T) {
	hostd := parseUnit(t, "vmpersona-hostd.service")
	sock := parseUnit(t, "vmpersona-hostd.socket")
	guestd := parseUnit(t, "vmpersona-guestd.service")
	env := parseUnit(t, "vmpersona-guestd-environment.service")
	device := `dev-virtio\x2dports-org.vmpersona.agent.0.device`
	checks := []struct {
		u                  unit
		section, key, want string
	}{
		{hostd, "Service", "Type", "notify"},
		{hostd, "Service", "WatchdogSec", "30s"},
		{hostd, "Service", "Restart", "on-failure"},
		{hostd, "Service", "StateDirectory", "vmpersona"},
		{hostd, "Service", "RuntimeDirectory", "vmpersona"},
		{hostd, "Service", "RuntimeDirectoryPreserve", "yes"},
		{hostd, "Service", "ProtectSystem", "strict"},
		{hostd, "Service", "NoNewPrivileges", "yes"},
		{hostd, "Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_VSOCK"},
		{hostd, "Service", "EnvironmentFile", "-/etc/default/vmpersona-hostd"},
		{hostd, "Unit", "After", "network.target libvirtd.service vmpersona-hostd.socket"},
		{hostd, "Unit", "Wants", "libvirtd.service vmpersona-hostd.socket"},
		{sock, "Socket", "ListenStream", "/run/vmpersona/hostd.sock"},
		{sock, "Socket", "SocketGroup", "vmpersona"},
		{sock, "Socket", "SocketMode", "0660"},
		{guestd, "Unit", "BindsTo", device},
		{guestd, "Unit", "After", device},
		{guestd, "Service", "Type", "notify"},
		{guestd, "Service", "Restart", "always"},
		{guestd, "Service", "StateDirectory", "vmpersona-guest"},
		{guestd, "Service", "RuntimeDirectory", "vmpersona-guest"},
		{guestd, "Service", "RuntimeDirectoryMode", "0755"},
		// Before every ordinary service, after /var is mounted.
		{env, "Unit", "DefaultDependencies", "no"},
		{env, "Unit", "Before", "sysinit.target shutdown.target"},
		{env, "Unit", "After", "local-fs.target"},
		{env, "Service", "Type", "oneshot"},
		{env, "Service", "ExecStart", "/usr/sbin/vmpersona-guestd --sync-service-env --state-dir /var/lib/vmpersona-guest"},
	}
	for _, c := range checks {
		if got := c.u.get(c.section, c.key); got != c.want {
			t.Errorf("[%s] %s=%q, want %q", c.section, c.key, got, c.want)
		}
	}
	// The device unit name is what systemd derives from the udev symlink.
	if p, err := exec.LookPath("systemd-escape"); err == nil {
		out, err := exec.Command(p, "--path", "--suffix=device", "/dev/virtio-ports/org.vmpersona.agent.0").Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(out)); got != device {
			t.Errorf("systemd-escape gives %q, the unit binds to %q", got, device)
		}
	}
	// The paths the daemon must still reach under ProtectSystem=strict.
	rw := strings.Join(hostd["Service"]["ReadWritePaths"], " ")
	for _, p := range []string{"/run/libvirt", "/var/lib/libvirt/qemu/channel/target"} {
		if !strings.Contains(rw, p) {
			t.Errorf("ReadWritePaths=%q lacks %s", rw, p)
		}
	}
	if !strings.Contains(hostd.get("Service", "ExecStart"), "/usr/sbin/vmpersona-hostd ") {
		t.Errorf("ExecStart=%q", hostd.get("Service", "ExecStart"))
	}
	if !strings.Contains(guestd.get("Service", "ExecStart"), "--run-dir /run/vmpersona-guest") {
		t.Errorf("guestd ExecStart=%q: commands run as other users would be listed as \"3\"", guestd.get("Service", "ExecStart"))
	}
	if !strings.Contains(guestd.get("Service", "ExecStart"), "--listen virtio-serial:org.vmpersona.agent.0") {
		t.Errorf("guestd ExecStart=%q", guestd.get("Service", "ExecStart"))
	}
}

// TestUdevRule checks the rule's match and its systemd hand-over, and, when
// udevadm is present, that udev parses it.
func TestUdevRule(t *testing.T) {
	b, err := os.ReadFile("60-vmpersona-guestd.rules")
	if err != nil {
		t.Fatal(err)
	}
	var rule string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			if rule != "" {
				t.Fatalf("want one rule, found another: %q", line)
			}
			rule = line
		}
	}
	for _, want := range []string{
		`SUBSYSTEM=="virtio-ports"`,
		`ATTR{name}=="org.vmpersona.agent.0"`,
		`TAG+="systemd"`,
		`ENV{SYSTEMD_WANTS}+="vmpersona-guestd.service"`,
	} {
		if !strings.Contains(rule, want) {
			t.Errorf("rule %q lacks %s", rule, want)
		}
	}
	udevadm, err := exec.LookPath("udevadm")
	if err != nil {
		t.Log("udevadm not installed: rule syntax not checked by udev")
		return
	}
	// udevadm verify exists from systemd 253 on; older ones have no verifier.
	if out, err := exec.Command(udevadm, "verify", "--help").CombinedOutput(); err != nil {
		t.Logf("this udevadm has no verify command (systemd < 253): rule syntax checked by the string checks only (%s)", strings.TrimSpace(string(out)))
		return
	}
	if out, err := exec.Command(udevadm, "verify", "60-vmpersona-guestd.rules").CombinedOutput(); err != nil {
		t.Errorf("udevadm verify: %v\n%s", err, out)
	}
}
