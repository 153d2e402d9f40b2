// Command bench measures vmpersona side by side with qemu-guest-agent and the
// machine's own limits, and prints one table: figure | ours | reference |
// ratio | target | met?
//
//	go run ./integration/bench            # the full run (about 4-7 minutes)
//	go run ./integration/bench -quick     # a scaled-down run (about 1.5 minutes)
//	go run ./integration/bench -profile /tmp/prof   # CPU/mutex/block profiles instead
//
// Other flags: -agents N (scale figure), -skip-scale, -skip-vm, -keep,
// -only STEP,STEP (e.g. -only scale), -root DIR (build the daemons from
// another checkout: a before/after comparison with the same bench).
//
// It installs qemu-guest-agent when missing (scripts/ensure-deps), builds the
// daemons into a temporary directory, starts what it needs and stops exactly
// what it started, by PID, also on failure or Ctrl-C. Every ratio comes from
// one run with the measured and the reference operations interleaved.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/julienschmidt/httprouter"
)

// config are the run's knobs.
type config struct {
	quick     bool
	agents    int
	skipScale bool
	skipVM    bool
	root      string
	keep      bool
	profile   string
	profDur   time.Duration
	only      string
	heartbeat time.Duration
	// flatGuests leaves the scale figure's guest daemons beside hostd
	// instead of in a CPU group of their own.
	flatGuests bool
	// sizes derived from quick
	execN     int
	segDur    time.Duration
	segs      int
	activateN int
	auditDur  time.Duration
	getConc   int
	getSegDur time.Duration
}

func main() {
	// Child modes, each in its own process like the daemons: a bare
	// httprouter server answering fixed bytes (the reference of the GET
	// /personas/{name} figure), and the two ends of the least exec chain
	// (chain.go).
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-serve-bare":
			os.Exit(serveBare(os.Args[2:]))
		case "-serve-chain-guest":
			os.Exit(serveChainGuest(os.Args[2:]))
		case "-serve-chain-host":
			os.Exit(serveChainHost(os.Args[2:]))
		}
	}
	var cfg config
	flag.BoolVar(&cfg.quick, "quick", false, "scaled-down run (fewer samples, 100 agents)")
	flag.IntVar(&cfg.agents, "agents", 0, "connected agents in the scale figure (default 1000, 100 with -quick)")
	flag.BoolVar(&cfg.skipScale, "skip-scale", false, "skip the scale figure")
	flag.BoolVar(&cfg.flatGuests, "flat-guests", false, "run the scale figure's guest daemons as plain processes beside hostd, not in a CPU cgroup of their own (as a KVM host's guests are)")
	flag.BoolVar(&cfg.skipVM, "skip-vm", false, "skip the real-VM figure (QEMU TCG)")
	flag.StringVar(&cfg.root, "root", "", "repository root (default: found from the working directory)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the run directory (daemon state, sockets)")
	flag.StringVar(&cfg.profile, "profile", "", "instead of the table: run hostd and the guest server in-process and write CPU/mutex/block profiles of each scenario into this directory")
	flag.DurationVar(&cfg.profDur, "profile-duration", 5*time.Second, "length of each -profile scenario")
	flag.DurationVar(&cfg.heartbeat, "heartbeat", 2*time.Second, "the host daemons' heartbeat interval (shorter: a harder liveness test)")
	flag.StringVar(&cfg.only, "only", "", "run only these steps (comma-separated names as logged, e.g. scale,idle)")
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	os.Exit(run(cfg))
}

func run(cfg config) int {
	if cfg.agents == 0 {
		cfg.agents = 1000
		if cfg.quick {
			cfg.agents = 100
		}
	}
	if cfg.quick {
		cfg.execN, cfg.segDur, cfg.segs, cfg.activateN, cfg.auditDur, cfg.getConc, cfg.getSegDur = 300, time.Second, 2, 20, 2*time.Second, 16, 500*time.Millisecond
	} else {
		cfg.execN, cfg.segDur, cfg.segs, cfg.activateN, cfg.auditDur, cfg.getConc, cfg.getSegDur = 2000, 2*time.Second, 4, 60, 5*time.Second, 16, time.Second
	}
	if cfg.root == "" {
		r, err := findRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
		cfg.root = r
	}
	raiseNoFile()
	if cfg.profile != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		if err := profileRun(ctx, cfg.profile, cfg.profDur, cfg.agents); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		return 0
	}

	// A closed stdout (`| head`) must not kill the program before it has
	// stopped its daemons: writes fail instead.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()

	dir, err := os.MkdirTemp("", "vmpbench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	ps := &procs{}
	defer func() {
		ps.stopAll()
		if !cfg.keep {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintln(os.Stderr, "bench: run directory kept:", dir)
		}
	}()
	b := &bench{cfg: cfg, dir: dir, ps: ps}
	err = b.run(ctx)
	b.print(os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

// raiseNoFile lifts the open-file limit to its hard maximum, for this
// process and the daemons it starts (a thousand agents, their sockets).
func raiseNoFile() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		slog.Warn("cannot raise RLIMIT_NOFILE", "err", err)
	}
}

func findRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/vmpersona/vmpersona") {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("run from inside the vmpersona repository or pass -root")
		}
		d = parent
	}
}

// row is one line of the table.
type row struct {
	figure, ours, ref, ratio, target, met string
}

type bench struct {
	cfg  config
	dir  string
	ps   *procs
	bins binaries
	rows []row
	// notes are printed under the table.
	notes []string

	hostdSock, guestSock, qgaSock string
	hostd, guestd, qgad           *proc
	// hostdRSS1 is the idle host daemon's RSS with one agent.
	hostdRSS1 int
	// spawnRate32 is the machine's /bin/true spawn rate at concurrency 32.
	spawnRate32 float64
}

func (b *bench) add(r row) {
	b.rows = append(b.rows, r)
	slog.Info("figure", "figure", r.figure, "ours", r.ours, "reference", r.ref, "ratio", r.ratio, "met", r.met)
}

func (b *bench) note(format string, a ...any) { b.notes = append(b.notes, fmt.Sprintf(format, a...)) }

func metLE(v, limit float64) string {
	if v <= limit {
		return "yes"
	}
	return "NO"
}

func metGE(v, limit float64) string {
	if v >= limit {
		return "yes"
	}
	return "NO"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/1e6) }

func (b *bench) print(w *os.File) {
	model := "unknown"
	if c, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(c), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mode := "full"
	if b.cfg.quick {
		mode = "quick"
	}
	fmt.Fprintf(w, "\nvmpersona bench (%s run) — %s, nproc %d, %s, %s\n\n", mode, model, runtime.NumCPU(), runtime.Version(), time.Now().UTC().Format(time.RFC3339))
	hdr := row{"figure", "ours", "reference", "ratio", "target", "met?"}
	all := append([]row{hdr}, b.rows...)
	width := make([]int, 6)
	for _, r := range all {
		for i, c := range []string{r.figure, r.ours, r.ref, r.ratio, r.target, r.met} {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(r row) {
		cells := []string{r.figure, r.ours, r.ref, r.ratio, r.target, r.met}
		fmt.Fprint(w, "|")
		for i, c := range cells {
			fmt.Fprintf(w, " %s%s |", c, strings.Repeat(" ", width[i]-len([]rune(c))))
		}
		fmt.Fprintln(w)
	}
	line(hdr)
	fmt.Fprint(w, "|")
	for _, n := range width {
		fmt.Fprint(w, strings.Repeat("-", n+2), "|")
	}
	fmt.Fprintln(w)
	for _, r := range b.rows {
		line(r)
	}
	if len(b.notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range b.notes {
			fmt.Fprintln(w, "-", n)
		}
	}
}

func (b *bench) run(ctx context.Context) error {
	start := time.Now()
	if err := b.setup(ctx); err != nil {
		return err
	}
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"footprint", b.footprint},
		{"idle", b.idle},
		{"idle own", b.idleOwn},
		{"exec latency", b.execLatency},
		{"exec enforcement", b.execEnforcement},
		{"exec throughput", b.execThroughput},
		{"exec cat 10 MiB", b.bigExec},
		{"activation", b.activation},
		{"audit ingestion", b.auditIngestion},
		{"persona reads", b.personaReads},
		{"routing benchmark", b.routingBench},
		{"store benchmark", b.storeBench},
		{"scale", b.scale},
		{"fleet", b.fleet},
		{"real VM", b.vmExec},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if b.cfg.only != "" && s.name != "footprint" && !slices.Contains(strings.Split(b.cfg.only, ","), s.name) {
			continue
		}
		t := time.Now()
		slog.Info("measuring", "step", s.name)
		if err := s.fn(ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if errors.Is(err, errNoVM) {
				b.add(row{figure: "· exec over virtio-serial (TCG VM)", ours: "not run", target: "optional", met: "—"})
				b.note("real VM not run: %v", err)
				continue
			}
			b.add(row{figure: s.name, ours: "FAILED", met: "NO"})
			b.note("%s failed: %v", s.name, err)
			slog.Error("step failed", "step", s.name, "err", err)
		}
		slog.Info("done", "step", s.name, "took", time.Since(t).Round(time.Millisecond))
	}
	b.note("whole run took %s", time.Since(start).Round(time.Second))
	return nil
}

// setup installs qemu-ga when missing, builds the daemons and starts one
// guest daemon, qemu-ga and a host daemon with that one instance.
func (b *bench) setup(ctx context.Context) error {
	if _, err := exec.LookPath("qemu-ga"); err != nil {
		if _, err := os.Stat("/usr/sbin/qemu-ga"); err != nil {
			cmd := exec.CommandContext(ctx, filepath.Join(b.cfg.root, "scripts", "ensure-deps"), "qemu-guest-agent")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("installing qemu-guest-agent: %w", err)
			}
		}
	}
	slog.Info("building the daemons", "dir", b.dir)
	bins, err := build(ctx, b.cfg.root, b.dir)
	if err != nil {
		return err
	}
	b.bins = bins

	// qemu-ga on a unix socket.
	qgaBin, err := exec.LookPath("qemu-ga")
	if err != nil {
		qgaBin = "/usr/sbin/qemu-ga"
	}
	b.qgaSock = filepath.Join(b.dir, "qga.sock")
	qdir := filepath.Join(b.dir, "qga-state")
	if err := os.MkdirAll(qdir, 0o700); err != nil {
		return err
	}
	b.qgad, err = b.ps.start("qemu-ga", qgaBin, "-m", "unix-listen", "-p", b.qgaSock, "-t", qdir, "-f", filepath.Join(b.dir, "qga.pid"))
	if err != nil {
		return err
	}
	// The guest daemon; --max-exec 64 so that 32 commands in flight are
	// not refused as busy (the default admits 16).
	if b.guestSock, b.guestd, err = b.startGuest(ctx, "guest", "--max-exec", "64"); err != nil {
		return err
	}
	if err := waitSocket(ctx, b.qgaSock, b.qgad, 10*time.Second); err != nil {
		return err
	}
	b.hostdSock = filepath.Join(b.dir, "hostd.sock")
	b.hostd, err = b.startHostd(ctx, "hostd-data", b.hostdSock, []string{"vm=unix:" + b.guestSock})
	if err != nil {
		return err
	}
	return waitConnected(ctx, unixClient(b.hostdSock, 4), 1, 30*time.Second)
}

// startGuest starts a guest daemon of its own (socket, state directory and
// profile named after name, in the bench's directory) with the extra flags
// given, and waits until it listens.
func (b *bench) startGuest(ctx context.Context, name string, extra ...string) (sock string, p *proc, err error) {
	sock = filepath.Join(b.dir, name+".sock")
	gdir := filepath.Join(b.dir, name+"-state")
	if err := os.MkdirAll(gdir, 0o700); err != nil {
		return "", nil, err
	}
	args := append([]string{"--listen", "unix:" + sock, "--state-dir", gdir,
		"--profile-file", filepath.Join(b.dir, name+"-profile.sh"), "--log-level", "warn"}, extra...)
	if p, err = b.ps.start("vmpersona-guestd-"+name, b.bins.guestd, args...); err != nil {
		return "", nil, err
	}
	if err := waitSocket(ctx, sock, p, 10*time.Second); err != nil {
		p.stop()
		return "", nil, err
	}
	return sock, p, nil
}

func (b *bench) startHostd(ctx context.Context, data, sock string, instances []string) (*proc, error) {
	args := []string{"--data-dir", filepath.Join(b.dir, data), "--unix-socket", sock, "--libvirt-uri", "", "--log-level", "warn", "--heartbeat", b.cfg.heartbeat.String()}
	for _, in := range instances {
		args = append(args, "--instance", in)
	}
	p, err := b.ps.start("vmpersona-hostd", b.bins.hostd, args...)
	if err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, sock, p, 60*time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// waitConnected waits until the host daemon reports n connected agents.
func waitConnected(ctx context.Context, c *http.Client, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	last := -1.0
	for {
		v, err := metric(ctx, c, "vmpersona_agents_connected")
		if err == nil {
			last = v
			if int(v) >= n {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %v of %d agents connected (%v)", errTimeout, last, n, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metric sums the samples of one metric family (all label sets) on
// /metrics whose line starts with prefix.
func metric(ctx context.Context, c *http.Client, prefix string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	body, err := do(ctx, c, "GET", "/metrics", nil, 200)
	if err != nil {
		return 0, err
	}
	return parseMetric(string(body), prefix)
}

// parseMetric sums the samples of the metric named prefix (any labels) in
// a Prometheus text exposition.
func parseMetric(body, prefix string) (float64, error) {
	var sum float64
	found := false
	for _, l := range strings.Split(body, "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		rest := l[len(prefix):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(l)
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
			sum += v
			found = true
		}
	}
	if !found {
		return 0, fmt.Errorf("metric %s not on /metrics", prefix)
	}
	return sum, nil
}

// serveBare is the child process answering GET /personas/:name with fixed
// bytes through httprouter: args SOCKET BODYFILE CONTENT-TYPE ETAG.
func serveBare(args []string) int {
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: bench -serve-bare SOCKET BODYFILE CONTENT-TYPE ETAG")
		return 2
	}
	body, err := os.ReadFile(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctype, etag := args[2], args[3]
	r := httprouter.New()
	r.GET("/personas/:name", func(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
		h := w.Header()
		h.Set("Content-Type", ctype)
		if etag != "" {
			h.Set("ETag", etag)
		}
		_, _ = w.Write(body)
	})
	return serveUnix(args[0], r)
}

// serveUnix serves h on a unix socket at path until the process is
// stopped (child modes); it returns the exit code.
func serveUnix(path string, h http.Handler) int {
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	_ = srv.Serve(l)
	return 0
}
