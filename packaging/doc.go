// Package packaging builds vmpersona's Debian packages, vmpersona-hostd and
// vmpersona-guestd, with build-deb.sh (see `make deb`): the maintainer
// scripts, conffiles, lintian overrides, the man page generator, the Grafana
// dashboard and the Prometheus scrape example live here; the units come from
// systemd/. The package's tests build the real binaries and the real
// packages, and check them: reproducibility, contents, modes, dependencies,
// man pages, the dashboard against the metrics, and lintian.
package packaging
