package packaging

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testbin"
)

// fixed is the SOURCE_DATE_EPOCH of the test builds: two builds with the
// same inputs must give the same bytes.
const fixed = "1767225600" // 2026-01-01T00:00:00Z

var build struct {
	once sync.Once
	err  error
	dir  string // holds bin/, a/ and b/ (two package builds)
	debs map[string]string
}

func repoRoot(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func runCmd(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// debs builds the packages twice, once per test binary, from the programs
// of internal/testbin (VMP_BIN_DIR names a directory of other ones).
func debs(t *testing.T) map[string]string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed: not a Debian system, packages not built")
	}
	build.once.Do(func() {
		repo := repoRoot(t)
		build.dir, build.err = os.MkdirTemp("", "vmp-packaging-")
		if build.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		bin := os.Getenv("VMP_BIN_DIR")
		if bin == "" {
			bin, build.err = testbin.Dir()
			if build.err != nil {
				return
			}
		}
		// The two builds run side by side: neither sees the other's files
		// (each has its own work and output directory). They compress with
		// gzip (level 1), not xz as `make deb` does: xz costs about 20 s of
		// CPU per build of the two packages, gzip 2 s; what these tests check
		// (the same bytes twice, the members, their modes and owners,
		// lintian) does not depend on the compressor.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, d := range []string{"a", "b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = runCmd(ctx, repo, []string{"SOURCE_DATE_EPOCH=" + fixed}, "packaging/build-deb.sh",
					"--bin", bin, "--out", filepath.Join(build.dir, d), "--version", "0.1.0", "--compress", "gzip")
			}()
		}
		wg.Wait()
		if build.err = errors.Join(errs...); build.err != nil {
			return
		}
		build.debs = map[string]string{}
		matches, _ := filepath.Glob(filepath.Join(build.dir, "a", "*.deb"))
		for _, m := range matches {
			build.debs[strings.SplitN(filepath.Base(m), "_", 2)[0]] = m
		}
	})
	if build.err != nil {
		t.Fatalf("building the packages: %v", build.err)
	}
	return build.debs
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

func sha(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestReproducible(t *testing.T) {
	t.Parallel()
	d := debs(t)
	if len(d) != 2 {
		t.Fatalf("want two packages, got %v", d)
	}
	for pkg, a := range d {
		b := filepath.Join(build.dir, "b", filepath.Base(a))
		if sa, sb := sha(t, a), sha(t, b); sa != sb {
			t.Errorf("%s: two builds differ: %s vs %s", pkg, sa, sb)
		} else {
			t.Logf("%s: %s", filepath.Base(a), sa)
		}
	}
}

// entry is one line of dpkg-deb --contents.
type entry struct{ mode, owner, path, mtime string }

func contents(t *testing.T, deb string) map[string]entry {
	t.Helper()
	out, err := runCmd(context.Background(), "", nil, "dpkg-deb", "--contents", deb)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]entry{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("odd dpkg-deb line %q", line)
		}
		p := strings.TrimPrefix(f[5], ".")
		m[p] = entry{mode: f[0], owner: f[1], path: p, mtime: f[3] + " " + f[4]}
	}
	return m
}

func field(t *testing.T, deb, name string) string {
	t.Helper()
	out, err := runCmd(context.Background(), "", nil, "dpkg-deb", "--field", deb, name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func controlFile(t *testing.T, deb, name string) string {
	t.Helper()
	out, err := runCmd(context.Background(), "", nil, "dpkg-deb", "--info", deb, name)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestHostdPackage(t *testing.T) {
	t.Parallel()
	deb := debs(t)["vmpersona-hostd"]
	c := contents(t, deb)
	want := map[string]string{
		"/usr/sbin/vmpersona-hostd":                                     "-rwxr-xr-x",
		"/usr/bin/vmpersonactl":                                         "-rwxr-xr-x",
		"/lib/systemd/system/vmpersona-hostd.service":                   "-rw-r--r--",
		"/lib/systemd/system/vmpersona-hostd.socket":                    "-rw-r--r--",
		"/etc/default/vmpersona-hostd":                                  "-rw-r--r--",
		"/etc/vmpersona/tokens.csv":                                     "-rw-------",
		"/usr/share/doc/vmpersona-hostd/copyright":                      "-rw-r--r--",
		"/usr/share/doc/vmpersona-hostd/changelog.gz":                   "-rw-r--r--",
		"/usr/share/doc/vmpersona-hostd/grafana-dashboard.json":         "-rw-r--r--",
		"/usr/share/doc/vmpersona-hostd/examples/prometheus.yml":        "-rw-r--r--",
		"/usr/share/man/man8/vmpersona-hostd.8.gz":                      "-rw-r--r--",
		"/usr/share/man/man1/vmpersonactl.1.gz":                         "-rw-r--r--",
		"/usr/share/bash-completion/completions/vmpersonactl":           "-rw-r--r--",
		"/usr/share/lintian/overrides/vmpersona-hostd":                  "-rw-r--r--",
		"/usr/share/zsh/vendor-completions/_vmpersonactl":               "-rw-r--r--",
		"/usr/share/fish/vendor_completions.d/vmpersonactl.fish":        "-rw-r--r--",
		"/usr/share/doc/vmpersona-hostd/examples/prometheus-alerts.yml": "-rw-r--r--",
	}
	checkContents(t, c, want)
	if dep := field(t, deb, "Depends"); !regexp.MustCompile(`(^|, )libvirt0 \(>= [0-9.]+\)`).MatchString(dep) ||
		!strings.Contains(dep, "libc6") || !strings.Contains(dep, "adduser") {
		t.Errorf("Depends: %q, want libvirt0 (>= …), libc6 and adduser", dep)
	}
	conff := controlFile(t, deb, "conffiles")
	for _, f := range []string{"/etc/default/vmpersona-hostd", "/etc/vmpersona/tokens.csv"} {
		if !strings.Contains(conff, f+"\n") {
			t.Errorf("conffiles lacks %s:\n%s", f, conff)
		}
	}
	post := controlFile(t, deb, "postinst")
	for _, want := range []string{"addgroup --system --quiet vmpersona", "deb-systemd-helper", "deb-systemd-invoke", "[ -d /run/systemd/system ]"} {
		if !strings.Contains(post, want) {
			t.Errorf("postinst lacks %q", want)
		}
	}
	postrm := controlFile(t, deb, "postrm")
	if !regexp.MustCompile(`(?s)if \[ "\$1" = purge \]; then\s+rm -rf /var/lib/vmpersona\n`).MatchString(postrm) {
		t.Errorf("postrm does not remove /var/lib/vmpersona exactly on purge:\n%s", postrm)
	}
}

func TestGuestdPackage(t *testing.T) {
	t.Parallel()
	deb := debs(t)["vmpersona-guestd"]
	c := contents(t, deb)
	want := map[string]string{
		"/usr/sbin/vmpersona-guestd":                                                    "-rwxr-xr-x",
		"/lib/systemd/system/vmpersona-guestd.service":                                  "-rw-r--r--",
		"/lib/systemd/system/vmpersona-guestd-environment.service":                      "-rw-r--r--",
		"/lib/systemd/system/sysinit.target.wants/vmpersona-guestd-environment.service": "lrwxrwxrwx",
		"/lib/udev/rules.d/60-vmpersona-guestd.rules":                                   "-rw-r--r--",
		"/var/lib/vmpersona-guest/":                                                     "drwx------",
		"/usr/share/man/man8/vmpersona-guestd.8.gz":                                     "-rw-r--r--",
		"/usr/share/doc/vmpersona-guestd/copyright":                                     "-rw-r--r--",
		"/usr/share/lintian/overrides/vmpersona-guestd":                                 "-rw-r--r--",
	}
	checkContents(t, c, want)
	if dep := field(t, deb, "Depends"); dep != "" {
		t.Errorf("the static guest daemon depends on %q", dep)
	}
}

func checkContents(t *testing.T, c map[string]entry, want map[string]string) {
	t.Helper()
	for p, mode := range want {
		e, ok := c[p]
		if !ok {
			t.Errorf("missing %s", p)
			continue
		}
		if e.mode != mode {
			t.Errorf("%s: mode %s, want %s", p, e.mode, mode)
		}
	}
	for p, e := range c {
		if e.owner != "root/root" {
			t.Errorf("%s: owner %s", p, e.owner)
		}
		if e.mtime != "2026-01-01 00:00" {
			t.Errorf("%s: mtime %s, want SOURCE_DATE_EPOCH", p, e.mtime)
		}
	}
}

// TestManPages renders every man page with warnings on.
func TestManPages(t *testing.T) {
	t.Parallel()
	d := debs(t)
	if _, err := exec.LookPath("man"); err != nil {
		t.Skip("man is not installed: man pages not rendered")
	}
	for pkg, deb := range d {
		dir := t.TempDir()
		if _, err := runCmd(context.Background(), "", nil, "dpkg-deb", "-x", deb, dir); err != nil {
			t.Fatal(err)
		}
		pages, _ := filepath.Glob(filepath.Join(dir, "usr/share/man/man*/*.gz"))
		if len(pages) == 0 {
			t.Errorf("%s has no man page", pkg)
		}
		for _, p := range pages {
			cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", p)
			cmd.Env = append(os.Environ(), "MANWIDTH=80", "MAN_KEEP_STDERR=1", "LC_ALL=C.UTF-8")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil || strings.TrimSpace(stderr.String()) != "" {
				t.Errorf("%s: %v\n%s", filepath.Base(p), err, stderr.String())
			}
			switch filepath.Base(p) {
			case "vmpersonactl.1.gz":
				// Written from the command definitions (a test of the CLI
				// compares it with the commands).
				for _, want := range []string{"NAME", "COMMANDS", "persona create", "--no-headers", "EXIT STATUS"} {
					if !strings.Contains(stdout.String(), want) {
						t.Errorf("%s lacks %q:\n%s", filepath.Base(p), want, stdout.String())
					}
				}
			default:
				if !strings.Contains(stdout.String(), "--help") || !strings.Contains(stdout.String(), "NAME") {
					t.Errorf("%s does not look like the --help text:\n%s", filepath.Base(p), stdout.String())
				}
			}
		}
	}
}

// contractMetrics are the metrics the contract promises and the dashboard shows.
var contractMetrics = []string{
	"vmpersona_activations_total",
	"vmpersona_activation_duration_seconds",
	"vmpersona_commands_total",
	"vmpersona_agents_connected",
}

func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title       string `json:"title"`
			FieldConfig struct {
				Overrides []struct {
					Matcher    struct{ ID, Options string } `json:"matcher"`
					Properties []struct {
						ID    string          `json:"id"`
						Value json.RawMessage `json:"value"`
					} `json:"properties"`
				} `json:"overrides"`
			} `json:"fieldConfig"`
			Targets []struct {
				Expr         string `json:"expr"`
				LegendFormat string `json:"legendFormat"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	deniedRed := false
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
		for _, o := range p.FieldConfig.Overrides {
			if o.Matcher.Options == "denied" {
				for _, pr := range o.Properties {
					if pr.ID == "color" && strings.Contains(string(pr.Value), `"red"`) {
						deniedRed = true
					}
				}
			}
		}
	}
	all := strings.Join(exprs, "\n")
	for _, m := range contractMetrics {
		if !strings.Contains(all, m) {
			t.Errorf("no panel shows %s", m)
		}
	}
	for _, want := range []string{
		"sum by (persona, result) (rate(vmpersona_activations_total",
		"histogram_quantile(0.99, sum by (le) (rate(vmpersona_activation_duration_seconds_bucket",
		"sum by (route) (rate(vmpersona_commands_total",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no query %q", want)
		}
	}
	if !deniedRed {
		t.Error("the denied route is not red")
	}
	// Every metric the dashboard queries exists in the daemon's metrics.
	src, err := os.ReadFile("../hostd/metrics/metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`vmpersona_[a-z_]+`).FindAllString(all, -1) {
		names[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")] = true
	}
	var missing []string
	for n := range names {
		if !bytes.Contains(src, []byte(`"`+n+`"`)) {
			missing = append(missing, n)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics hostd/metrics does not define: %v", missing)
	}
	// promtool checks the query syntax when it is installed.
	if promtool, err := exec.LookPath("promtool"); err == nil {
		rules := "groups:\n- name: dashboard\n  rules:\n"
		for i, e := range exprs {
			e = strings.NewReplacer(`$__rate_interval`, "5m", `$job`, ".*", `$instance`, ".*", `$persona`, ".*").Replace(e)
			q, _ := json.Marshal(e)
			rules += fmt.Sprintf("  - record: vmpersona:dashboard_%d\n    expr: %s\n", i, q)
		}
		f := filepath.Join(t.TempDir(), "rules.yml")
		if err := os.WriteFile(f, []byte(rules), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := runCmd(context.Background(), "", nil, promtool, "check", "rules", f); err != nil {
			t.Errorf("promtool rejects a dashboard query: %v\n%s", err, out)
		}
	} else {
		t.Log("promtool not installed: query syntax not checked")
	}
}

func TestPrometheusExample(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; `make test` installs it): scrape example not checked")
	}
	if out, err := runCmd(context.Background(), "", nil, promtool, "check", "config", "prometheus.yml"); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
}

// TestAlertRules: the shipped alert rules load (promtool check rules) and
// each alert fires on the series it is written for (promtool test rules).
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus; `make test` installs it): alert rules not checked")
	}
	if out, err := runCmd(context.Background(), "", nil, promtool, "check", "rules", "prometheus-alerts.yml"); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
	if out, err := runCmd(context.Background(), "", nil, promtool, "test", "rules", "testdata/prometheus-alerts-test.yml"); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
}

// TestLintian runs lintian on both packages: no errors, and the warnings
// are exactly the known ones (the README of this package says why).
func TestLintian(t *testing.T) {
	t.Parallel()
	d := debs(t)
	lintian, err := exec.LookPath("lintian")
	if err != nil {
		t.Skip("lintian is not installed (`make test` installs it): packages not linted")
	}
	// The host programs are PIE, linked with RELRO and BIND_NOW
	// (scripts/build-programs): no warning is expected at all.
	allowed := map[string]bool{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, lintian, "--pedantic", "--tag-display-limit", "0", d["vmpersona-hostd"], d["vmpersona-guestd"])
	out, _ := cmd.CombinedOutput() // exit status is 1 with warnings or errors; the lines decide
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "E: "):
			t.Errorf("lintian error: %s", line)
		case strings.HasPrefix(line, "W: ") && !allowed[line]:
			t.Errorf("lintian warning not on the known list: %s", line)
		case strings.HasPrefix(line, "W: "):
			t.Logf("known lintian warning: %s", line)
		}
	}
}

// TestMaintainerScripts checks the scripts' shell syntax with sh -n (and
// dash when present, Debian's /bin/sh).
func TestMaintainerScripts(t *testing.T) {
	t.Parallel()
	shells := []string{"sh"}
	if _, err := exec.LookPath("dash"); err == nil {
		shells = append(shells, "dash")
	}
	scripts, _ := filepath.Glob("*/post*")
	more, _ := filepath.Glob("*/pre*")
	scripts = append(scripts, more...)
	if len(scripts) != 6 {
		t.Fatalf("want postinst, prerm, postrm for both packages, got %v", scripts)
	}
	for _, s := range scripts {
		for _, sh := range shells {
			if out, err := exec.Command(sh, "-n", s).CombinedOutput(); err != nil {
				t.Errorf("%s -n %s: %v\n%s", sh, s, err, out)
			}
		}
		if fi, err := os.Stat(s); err == nil && fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, err := runCmd(context.Background(), ".", nil, "./version.sh")
	if err != nil {
		t.Fatal(err)
	}
	v := strings.TrimSpace(out)
	if !regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`).MatchString(v) {
		t.Errorf("version.sh: %q is not a native Debian version", v)
	}
}

// TestLicence: the project's licence (Apache-2.0) is in the repository and
// in both packages' machine-readable copyright file.
func TestLicence(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "LICENSE"))
	if err != nil || !strings.Contains(string(b), "Apache License") || !strings.Contains(string(b), "Version 2.0, January 2004") {
		t.Fatalf("LICENSE is not the Apache License 2.0: %v", err)
	}
	c, err := os.ReadFile("copyright")
	if err != nil || !strings.Contains(string(c), "\nLicense: Apache-2.0\n") || !strings.Contains(string(c), "/usr/share/common-licenses/Apache-2.0") {
		t.Fatalf("copyright does not state Apache-2.0: %v", err)
	}
}
