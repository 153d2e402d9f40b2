package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testpersona"
	"github.com/vmpersona/vmpersona/protocol"
)

const trueScript = testpersona.TrueScript

// footprint: idle RSS of both daemons and qemu-ga, the guest binary's size.
func (b *bench) footprint(ctx context.Context) error {
	// Let the daemons settle after the handshake.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(3 * time.Second):
	}
	g, err := rssKiB(b.guestd.pid())
	if err != nil {
		return err
	}
	h, err := rssKiB(b.hostd.pid())
	if err != nil {
		return err
	}
	q, err := rssKiB(b.qgad.pid())
	if err != nil {
		return err
	}
	b.hostdRSS1 = h
	mib := func(k int) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }
	b.add(row{"· guestd idle RSS (connected)", mib(g), "qemu-ga " + mib(q), fmt.Sprintf("%.2f×", float64(g)/float64(q)), "< 10 MiB", metLE(float64(g), 10*1024)})
	b.add(row{"· hostd idle RSS (1 agent)", mib(h), "qemu-ga " + mib(q), fmt.Sprintf("%.2f×", float64(h)/float64(q)), "< 40 MiB", metLE(float64(h), 40*1024)})
	fi, err := os.Stat(b.bins.guestd)
	if err != nil {
		return err
	}
	ref, ratio := "", ""
	if qb, err := exec.LookPath("qemu-ga"); err == nil {
		if qi, err := os.Stat(qb); err == nil {
			ref = fmt.Sprintf("qemu-ga %.1f MiB (dynamic)", float64(qi.Size())/(1<<20))
			ratio = fmt.Sprintf("%.2f×", float64(fi.Size())/float64(qi.Size()))
		}
	}
	b.add(row{"· guestd static stripped size", fmt.Sprintf("%.1f MiB", float64(fi.Size())/(1<<20)), ref, ratio, "< 8 MiB", metLE(float64(fi.Size()), 8<<20)})
	return nil
}

// bothSides connects to the two agents a figure compares: ours through
// hostd's REST API, and qemu-ga.
func (b *bench) bothSides() (*apiclient.Client, *qga, error) {
	api, err := apiclient.New(apiclient.Config{URL: "unix:" + b.hostdSock})
	if err != nil {
		return nil, nil, err
	}
	q, err := dialQGA(b.qgaSock)
	if err != nil {
		api.Close()
		return nil, nil, fmt.Errorf("qemu-ga: %w", err)
	}
	return api, q, nil
}

// execLatency: /bin/true round trip, ours through the REST API vs qemu-ga
// (guest-exec + tight guest-exec-status polling) vs a bare spawn.
func (b *bench) execLatency(ctx context.Context) error {
	api, q, err := b.bothSides()
	if err != nil {
		return err
	}
	defer api.Close()
	defer q.close()
	var guestSide samples
	ours := func() error {
		r, err := api.Exec(ctx, "vm", apitypes.ExecRequest{Command: "/bin/true", Args: []string{}})
		if err != nil {
			return err
		}
		guestSide = append(guestSide, time.Duration(r.DurationMillis*1e6))
		if r.ExitCode != 0 {
			return fmt.Errorf("/bin/true exited %d", r.ExitCode)
		}
		return nil
	}
	// A second guest daemon spoken to directly with protocol.Client (no
	// HTTP, no hostd): splits the round trip into its guest and host parts.
	direct, err := b.directGuest(ctx)
	if err != nil {
		return fmt.Errorf("direct guest session: %w", err)
	}
	defer direct.Close(nil)
	viaProtocol := func() error {
		var r protocol.ExecResult
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := direct.Call(cctx, protocol.TypeExec, protocol.Exec{Command: "/bin/true"}, &r, nil); err != nil {
			return err
		}
		if r.ExitCode != 0 {
			return fmt.Errorf("/bin/true exited %d", r.ExitCode)
		}
		return nil
	}
	// Transport floors: a protocol Ping to the guest, an HTTP GET /healthz
	// to hostd over its unix socket (no guest involved).
	hc := unixClient(b.hostdSock, 2)
	defer hc.CloseIdleConnections()
	ping, healthz := pingOp(ctx, direct), healthzOp(ctx, hc)
	chain, err := b.chain(ctx)
	if err != nil {
		return fmt.Errorf("the least exec chain: %w", err)
	}
	defer chain.stop()
	res, err := latencies(ctx, b.cfg.execN, 50,
		side{"ours", ours},
		side{"chain", chain.rest},
		side{"chain-guest", chain.guest},
		side{"protocol", viaProtocol},
		side{"ping", ping},
		side{"healthz", healthz},
		side{"qemu-ga", func() error { return q.exec("/bin/true") }},
		side{"bare", func() error { return bareRun("/bin/true") }})
	if err != nil {
		return err
	}
	o, qg, bare := res["ours"], res["qemu-ga"], res["bare"]
	pr := res["protocol"]
	b.add(row{"3. decomposition p50: protocol Ping round trip to guestd / HTTP GET /healthz to hostd", ms(res["ping"].pct(50)) + " / " + ms(res["healthz"].pct(50)), "", "", "", "—"})
	b.add(row{"3. decomposition p50: guestd over protocol.Client directly (no HTTP/hostd)", ms(pr.pct(50)), "bare " + ms(bare.pct(50)),
		fmt.Sprintf("%.2f×", float64(pr.pct(50))/float64(bare.pct(50))), "", "—"})
	ch := res["chain"]
	b.add(row{"3. floor p50: the least Go chain (HTTP → host process → unix socket → guest process → os/exec /bin/true)", ms(ch.pct(50)), "qemu-ga " + ms(qg.pct(50)),
		fmt.Sprintf("%.2f×", float64(ch.pct(50))/float64(qg.pct(50))), "", "—"})
	cg := res["chain-guest"]
	b.add(row{"3. floor p50: the least Go chain vs bare spawn", ms(ch.pct(50)), "bare " + ms(bare.pct(50)),
		fmt.Sprintf("%.2f×", float64(ch.pct(50))/float64(bare.pct(50))), "", "—"})
	b.note("exec round trip: ours over the least chain (the product's guarantees and its own code): %s at p50 (%s − %s); "+
		"guest side: guestd over protocol.Client %s against the chain's guest spoken to directly %s (%+.3f ms); "+
		"host side: HTTP and hostd %s against the chain's host %s (%+.3f ms)",
		ms(o.pct(50)-ch.pct(50)), ms(o.pct(50)), ms(ch.pct(50)),
		ms(pr.pct(50)), ms(cg.pct(50)), float64(pr.pct(50)-cg.pct(50))/1e6,
		ms(o.pct(50)-pr.pct(50)), ms(ch.pct(50)-cg.pct(50)), float64((o.pct(50)-pr.pct(50))-(ch.pct(50)-cg.pct(50)))/1e6)
	b.note("exec round trip: the guest's own duration_ms (process start to exit, inside guestd) has p50 %s of the %s round trip",
		ms(guestSide.pct(50)), ms(o.pct(50)))
	for _, p := range []float64{50, 99} {
		rq := float64(o.pct(p)) / float64(qg.pct(p))
		rb := float64(o.pct(p)) / float64(bare.pct(p))
		tq, tb, mq, mb := "", "", "—", "—"
		if p == 50 {
			tq, tb, mq, mb = "≤ 0.75× qemu-ga", "≤ 1.3× bare", metLE(rq, 0.75), metLE(rb, 1.3)
		}
		b.add(row{fmt.Sprintf("3. exec /bin/true p%.0f vs qemu-ga (n=%d)", p, len(o)), ms(o.pct(p)), ms(qg.pct(p)), fmt.Sprintf("%.2f×", rq), tq, mq})
		b.add(row{fmt.Sprintf("3. exec /bin/true p%.0f vs bare spawn", p), ms(o.pct(p)), ms(bare.pct(p)), fmt.Sprintf("%.2f×", rb), tb, mb})
	}
	return nil
}

// execEnforcement: /bin/true through guestd directly under a persona
// restricting rm, enforced by the routing table only ("agent") beside the
// guest kernel's Landlock domain ("kernel").
func (b *bench) execEnforcement(ctx context.Context) error {
	clients := map[string]*protocol.Client{}
	for _, mode := range []string{protocol.EnforcementAgent, protocol.EnforcementKernel} {
		c, err := b.guestNamed(ctx, "enf-"+mode)
		if err != nil {
			return fmt.Errorf("guest for %s enforcement: %w", mode, err)
		}
		defer c.Close(nil)
		if mode == protocol.EnforcementKernel && c.Hello().LandlockABI == 0 {
			b.add(row{"3. exec /bin/true with kernel enforcement", "not run", "", "", "", "—"})
			b.note("kernel enforcement not measured: this kernel has no Landlock")
			return nil
		}
		var res protocol.ActivateResult
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = c.Call(cctx, protocol.TypeActivate, protocol.Activate{Revision: 1, ActivationID: "bench-" + mode,
			Persona: protocol.Persona{Name: "bench", RestrictedCommands: []string{"rm", "shutdown"}, Enforcement: mode}}, &res, nil)
		cancel()
		if err != nil || res.Result != protocol.ResultActivated {
			return fmt.Errorf("activate %s: %v %+v", mode, err, res)
		}
		clients[mode] = c
	}
	run := func(c *protocol.Client) func() error {
		return func() error {
			var r protocol.ExecResult
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := c.Call(cctx, protocol.TypeExec, protocol.Exec{Command: "/bin/true"}, &r, nil); err != nil {
				return err
			}
			if r.ExitCode != 0 {
				return fmt.Errorf("/bin/true exited %d", r.ExitCode)
			}
			return nil
		}
	}
	res, err := latencies(ctx, b.cfg.execN, 50,
		side{"agent", run(clients[protocol.EnforcementAgent])},
		side{"kernel", run(clients[protocol.EnforcementKernel])})
	if err != nil {
		return err
	}
	a, k := res["agent"], res["kernel"]
	for _, p := range []float64{50, 99} {
		b.add(row{fmt.Sprintf("3. exec /bin/true p%.0f, kernel enforcement (Landlock) vs routing table only", p), ms(k.pct(p)), ms(a.pct(p)),
			fmt.Sprintf("%.2f×", float64(k.pct(p))/float64(a.pct(p))), "", "—"})
	}
	return nil
}

// directGuest starts a second guest daemon and opens a protocol session
// with it, as hostd does.
func (b *bench) directGuest(ctx context.Context) (*protocol.Client, error) {
	return b.guestNamed(ctx, "guest2")
}

// guestNamed starts a guest daemon of its own (socket, state directory,
// profile named after name) and opens a protocol session with it.
func (b *bench) guestNamed(ctx context.Context, name string) (*protocol.Client, error) {
	sock, _, err := b.startGuest(ctx, name, "--max-exec", "64")
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return protocol.Handshake(hctx, conn, protocol.ClientConfig{HostVersion: "bench", Logger: quietLogger(),
		OnAudit: func(ab protocol.AuditBatch) (uint64, error) {
			if len(ab.Events) == 0 {
				return 0, nil
			}
			return ab.Events[len(ab.Events)-1].Seq, nil
		}})
}

var execTrueBody = []byte(`{"command":"/bin/true","args":[]}`)

// execThroughput: 32 execs in flight on one instance vs the machine's own
// spawn rate at concurrency 32.
func (b *bench) execThroughput(ctx context.Context) error {
	c := unixClient(b.hostdSock, 64)
	defer c.CloseIdleConnections()
	chain, err := b.chain(ctx)
	if err != nil {
		return fmt.Errorf("the least exec chain: %w", err)
	}
	defer chain.stop()
	// CPU of each process over the whole figure: the sides take turns, and
	// each side's processes are idle while the other runs.
	pids := []int{b.hostd.pid(), b.guestd.pid(), chain.hostPid, chain.guestPid}
	before := make([][2]time.Duration, len(pids))
	for i, p := range pids {
		if before[i][0], before[i][1], err = cpuTimes(p); err != nil {
			return err
		}
	}
	res := throughput(ctx, 32, b.cfg.segDur, b.cfg.segs,
		side{"ours", func() error {
			_, err := do(ctx, c, "POST", "/instances/vm/exec", execTrueBody, 200)
			return err
		}},
		side{"chain", chain.rest},
		side{"bare", func() error { return bareRun("/bin/true") }})
	o, r, ch := res["ours"], res["bare"], res["chain"]
	b.spawnRate32 = r.perSec()
	ratio := o.perSec() / r.perSec()
	b.add(row{"3. floor, 32 in flight: the least Go chain (as in the latency floor)", fmt.Sprintf("%.0f/s", ch.perSec()), fmt.Sprintf("parallel spawn %.0f/s", r.perSec()), fmt.Sprintf("%.2f×", ch.perSec()/r.perSec()), "", "—"})
	b.add(row{"3. exec throughput, 32 in flight", fmt.Sprintf("%.0f/s", o.perSec()), fmt.Sprintf("parallel spawn %.0f/s", r.perSec()), fmt.Sprintf("%.2f×", ratio), "≥ 0.9×", metGE(ratio, 0.9)})
	var used [4][2]time.Duration // self, reaped children (the commands)
	for i, p := range pids {
		self, kids, err := cpuTimes(p)
		if err != nil {
			return err
		}
		used[i] = [2]time.Duration{self - before[i][0], kids - before[i][1]}
	}
	per := func(d time.Duration, ops int64) string {
		return fmt.Sprintf("%.3f ms", float64(d)/1e6/float64(max(ops, 1)))
	}
	b.note("exec throughput, CPU per exec at 32 in flight (/proc/PID/stat, 10 ms ticks): ours hostd %s + guestd %s (its commands %s); "+
		"the least chain's host %s + guest %s (its commands %s)",
		per(used[0][0], o.ops), per(used[1][0], o.ops), per(used[1][1], o.ops),
		per(used[2][0], ch.ops), per(used[3][0], ch.ops), per(used[3][1], ch.ops))
	if o.errs > 0 || r.errs > 0 || ch.errs > 0 {
		b.note("exec throughput: %d errors (ours), %d (chain), %d (bare); first: %v %v %v", o.errs, ch.errs, r.errs, o.firstErr, ch.firstErr, r.firstErr)
	}
	return nil
}

// activation: a large persona's activation (alternating two of them so
// that each is a real change) vs spawning its two scripts directly.
func (b *bench) activation(ctx context.Context) error {
	api, err := apiclient.New(apiclient.Config{URL: "unix:" + b.hostdSock})
	if err != nil {
		return err
	}
	defer api.Close()
	for _, n := range []string{"big-a", "big-b"} {
		if _, err := api.CreatePersona(ctx, testpersona.Large(n, true)); err != nil {
			return fmt.Errorf("create %s: %w", n, err)
		}
	}
	// Empty personas: the fixed cost of an activation (no scripts,
	// nothing to route), for the decomposition.
	for _, n := range []string{"empty-a", "empty-b"} {
		if _, err := api.CreatePersona(ctx, protocol.Persona{Name: n}); err != nil {
			return fmt.Errorf("create %s: %w", n, err)
		}
	}
	j := 0
	empty := func() error {
		name := []string{"empty-a", "empty-b"}[j%2]
		j++
		_, err := api.Activate(ctx, "vm", name, apiclient.ActivateOptions{})
		return err
	}
	pre, post := filepath.Join(b.dir, "pre.sh"), filepath.Join(b.dir, "post.sh")
	for _, f := range []string{pre, post} {
		if err := os.WriteFile(f, []byte(trueScript+"\n"), 0o755); err != nil {
			return err
		}
	}
	i := 0
	ours := func() error {
		name := []string{"big-a", "big-b"}[i%2]
		i++
		r, err := api.Activate(ctx, "vm", name, apiclient.ActivateOptions{})
		if err != nil {
			return err
		}
		if r.Result != "activated" && r.Result != "" {
			return fmt.Errorf("activation result %q", r.Result)
		}
		return nil
	}
	ref := func() error {
		if err := bareRun(pre); err != nil {
			return err
		}
		return bareRun(post)
	}
	// The disk's floor, on the same file system as both daemons' state:
	// a 4 KiB overwrite in place made durable with fdatasync.
	f, err := os.OpenFile(filepath.Join(b.dir, "floor.dat"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	block := make([]byte, 4096)
	if _, err := f.WriteAt(block, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	floor := overwriteSync(f, block, 0)
	// The same empty activation straight to a guest daemon over the
	// protocol (no HTTP, no hostd, no host commits): the rest is the
	// host's share.
	dg, err := b.guestNamed(ctx, "act-direct")
	if err != nil {
		return fmt.Errorf("direct guest session: %w", err)
	}
	defer dg.Close(nil)
	empties := [2]protocol.Persona{{Name: "empty-a"}, {Name: "empty-b"}}
	direct := activateAlternating(ctx, dg, "bench", empties)
	// The large persona straight to a guest daemon too: splits its
	// activation into the guest's share and the host's.
	lg, err := b.guestNamed(ctx, "act-direct-large")
	if err != nil {
		return fmt.Errorf("direct guest session: %w", err)
	}
	defer lg.Close(nil)
	large := [2]protocol.Persona{testpersona.Large("big-a", true), testpersona.Large("big-b", true)}
	directLarge := activateAlternating(ctx, lg, "bench-large", large)
	hc := unixClient(b.hostdSock, 2)
	defer hc.CloseIdleConnections()
	// The host's durable write alone: what hostd commits after the guest
	// answered an activation (the instance record and its event, one
	// synced Badger commit), in a store of its own on the same disk.
	st, err := store.Open(filepath.Join(b.dir, "floor-store"), store.Options{Logger: quietLogger()})
	if err != nil {
		return err
	}
	defer st.Close()
	hostCommit := commitAlternating(st, "vm", empties)
	// A large persona's durable writes on each side: the guest's state
	// record holding it (a 16 KiB overwrite + fdatasync stands for it) and
	// the host's record of it (one synced commit holding one copy).
	big := make([]byte, 16<<10)
	if _, err := f.WriteAt(big, 4096); err != nil {
		return err
	}
	bigFloor := overwriteSync(f, big, 4096)
	hostCommitLarge := commitAlternating(st, "vm-large", large)
	res, err := latencies(ctx, b.cfg.activateN, 5, side{"ours", ours}, side{"16k floor", bigFloor}, side{"host commit large", hostCommitLarge}, side{"scripts", ref}, side{"empty", empty}, side{"floor", floor}, side{"direct", direct},
		side{"host commit", hostCommit}, side{"direct large", directLarge},
		side{"ping", pingOp(ctx, dg)}, side{"healthz", healthzOp(ctx, hc)})
	if err != nil {
		return err
	}
	o, r := res["ours"], res["scripts"]
	e, fl := res["empty"], res["floor"]
	b.add(row{"4. decomposition p50: empty activation straight to guestd over the protocol (no hostd)", ms(res["direct"].pct(50)),
		"through hostd " + ms(e.pct(50)), fmt.Sprintf("%.2f×", float64(e.pct(50))/float64(res["direct"].pct(50))), "", "—"})
	hcm, dr := res["host commit"], res["direct"]
	b.add(row{"4. floor p50: the host's durable write alone (instance record + event, one synced Badger commit, same disk)", ms(hcm.pct(50)), "disk floor " + ms(fl.pct(50)),
		fmt.Sprintf("%.1f×", float64(hcm.pct(50))/float64(fl.pct(50))), "", "—"})
	// The least any activation of this shape costs on this machine: the
	// guest's one durable write (the disk floor itself), a protocol round
	// trip, an HTTP round trip and the host's one commit; a large persona
	// adds its two scripts.
	least := fl.pct(50) + res["ping"].pct(50) + res["healthz"].pct(50) + hcm.pct(50)
	b.add(row{"4. floor p50: the least an empty activation costs (disk floor + protocol Ping + HTTP GET /healthz + the host's commit)", ms(least), "disk floor " + ms(fl.pct(50)),
		fmt.Sprintf("%.1f×", float64(least)/float64(fl.pct(50))), "", "—"})
	leastLarge := r.pct(50) + res["16k floor"].pct(50) + res["ping"].pct(50) + res["healthz"].pct(50) + res["host commit large"].pct(50)
	b.add(row{"4. floor p50: the least a large activation costs (its 2 scripts + 16 KiB overwrite + fdatasync + Ping + /healthz + the host's commit of the persona)", ms(leastLarge), "2 scripts " + ms(r.pct(50)),
		fmt.Sprintf("%.2f×", float64(leastLarge)/float64(r.pct(50))), "", "—"})
	b.note("large activation's durable writes alone: 16 KiB overwrite + fdatasync %s, the host's synced commit of the persona %s",
		ms(res["16k floor"].pct(50)), ms(res["host commit large"].pct(50)))
	b.note("empty activation: the guest straight over the protocol (%s) and the host's commit alone (%s) add up to %.1f× the disk floor before any HTTP or hostd work",
		ms(dr.pct(50)), ms(hcm.pct(50)), float64(dr.pct(50)+hcm.pct(50))/float64(fl.pct(50)))
	er := float64(e.pct(50)) / float64(fl.pct(50))
	b.add(row{fmt.Sprintf("4. activation of an empty persona p50 (n=%d) vs 4 KiB overwrite + fdatasync", len(e)), ms(e.pct(50)), "disk floor " + ms(fl.pct(50)),
		fmt.Sprintf("%.1f×", er), "≤ 5×", metLE(er, 5)})
	ratio := float64(o.pct(50)) / float64(r.pct(50))
	b.add(row{fmt.Sprintf("4. activation, large persona p50 (n=%d)", len(o)), ms(o.pct(50)), "2 scripts " + ms(r.pct(50)), fmt.Sprintf("%.2f×", ratio), "≤ 1.5×", metLE(ratio, 1.5)})
	b.add(row{"4. decomposition p50: large persona straight to guestd over the protocol (no hostd)", ms(res["direct large"].pct(50)),
		"through hostd " + ms(o.pct(50)), fmt.Sprintf("%.2f×", float64(o.pct(50))/float64(res["direct large"].pct(50))), "", "—"})
	b.add(row{"4. activation, large persona p99", ms(o.pct(99)), "2 scripts " + ms(r.pct(99)), fmt.Sprintf("%.2f×", float64(o.pct(99))/float64(r.pct(99))), "", "—"})
	return nil
}

// pingOp is a protocol Ping round trip to a guest daemon.
func pingOp(ctx context.Context, c *protocol.Client) func() error {
	return func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c.Call(cctx, protocol.TypePing, nil, nil, nil)
	}
}

// healthzOp is an HTTP GET /healthz round trip to hostd.
func healthzOp(ctx context.Context, hc *http.Client) func() error {
	return func() error { _, err := do(ctx, hc, "GET", "/healthz", nil, 200); return err }
}

// activateAlternating activates the two personas in turn straight on a guest
// daemon over the protocol (each activation a real change), failing unless
// the guest took it.
func activateAlternating(ctx context.Context, c *protocol.Client, idPrefix string, ps [2]protocol.Persona) func() error {
	n := 0
	return func() error {
		n++
		var r protocol.ActivateResult
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err := c.Call(cctx, protocol.TypeActivate, protocol.Activate{Revision: uint64(n), ActivationID: fmt.Sprintf("%s-%d", idPrefix, n),
			Persona: ps[n%2]}, &r, nil)
		if err == nil && r.Result != protocol.ResultActivated {
			err = fmt.Errorf("activation result %q", r.Result)
		}
		return err
	}
}

// commitAlternating writes what hostd commits after an activation (the
// instance record holding the persona, and the request's event: one synced
// commit), the two personas in turn.
func commitAlternating(st *store.Store, instance string, ps [2]protocol.Persona) func() error {
	n := 0
	return func() error {
		n++
		p := ps[n%2]
		return st.PutInstance(store.InstanceRecord{Instance: instance, Persona: &p, Revision: uint64(n), ActivationID: fmt.Sprintf("bench-%d", n)},
			store.AuditEvent{Type: protocol.AuditActivationRequested, Actor: "bench", Detail: p.Name})
	}
}

// overwriteSync returns an operation that overwrites buf at off in f (its
// first byte changed each time) and makes it durable with fdatasync.
func overwriteSync(f *os.File, buf []byte, off int64) func() error {
	k := 0
	return func() error {
		k++
		buf[0] = byte(k)
		if _, err := f.WriteAt(buf, off); err != nil {
			return err
		}
		return syscall.Fdatasync(int(f.Fd()))
	}
}

// auditIngestion: execs of an overridden command, 32 in flight; each is
// an audit event that counts once the host has stored it (the guest drops
// it from its spool only when acknowledged after the Badger commit).
func (b *bench) auditIngestion(ctx context.Context) error {
	api, err := apiclient.New(apiclient.Config{URL: "unix:" + b.hostdSock})
	if err != nil {
		return err
	}
	defer api.Close()
	p := protocol.Persona{Name: "audited", CommandOverrides: map[string]string{"t": "/bin/true"}}
	if _, err := api.CreatePersona(ctx, p); err != nil {
		return err
	}
	if _, err := api.Activate(ctx, "vm", "audited", apiclient.ActivateOptions{}); err != nil {
		return err
	}
	c := unixClient(b.hostdSock, 64)
	defer c.CloseIdleConnections()
	before, err := metric(ctx, c, "vmpersona_audit_events_total")
	if err != nil {
		return err
	}
	body := []byte(`{"command":"t","args":[]}`)
	t0 := time.Now()
	res := throughput(ctx, 32, b.cfg.auditDur, 1, side{"ours", func() error {
		_, err := do(ctx, c, "POST", "/instances/vm/exec", body, 200)
		return err
	}})
	o := res["ours"]
	// Wait until every event is stored.
	deadline := time.Now().Add(30 * time.Second)
	var stored float64
	for {
		v, err := metric(ctx, c, "vmpersona_audit_events_total")
		if err == nil {
			stored = v - before
		}
		if stored >= float64(o.ops) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	el := time.Since(t0)
	rate := stored / el.Seconds()
	ref := fmt.Sprintf("exec rate %.0f/s", o.perSec())
	b.add(row{"· audit ingestion end to end (override execs, 32 in flight)", fmt.Sprintf("%.0f events/s (%d/%d stored)", rate, int(stored), o.ops), ref, fmt.Sprintf("%.2f×", rate/o.perSec()), "every exec stored", metGE(stored, float64(o.ops))})
	if o.errs > 0 {
		b.note("audit ingestion: %d exec errors, first: %v", o.errs, o.firstErr)
	}
	return nil
}

// personaReads: GET /personas/{name} from hostd vs a bare httprouter
// handler (its own process) returning the same bytes, same generator.
func (b *bench) personaReads(ctx context.Context) error {
	c := unixClient(b.hostdSock, 64)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://bench/personas/big-a", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("GET /personas/big-a: status %d, %v", resp.StatusCode, err)
	}
	bodyFile := filepath.Join(b.dir, "persona.json")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bareSock := filepath.Join(b.dir, "bare.sock")
	bp, err := b.ps.start("bare-httprouter", self, "-serve-bare", bareSock, bodyFile, resp.Header.Get("Content-Type"), resp.Header.Get("ETag"))
	if err != nil {
		return err
	}
	defer bp.stop()
	if err := waitSocket(ctx, bareSock, bp, 10*time.Second); err != nil {
		return err
	}
	bc := unixClient(bareSock, 64)
	defer bc.CloseIdleConnections()
	res := throughput(ctx, b.cfg.getConc, b.cfg.getSegDur, b.cfg.segs,
		side{"ours", func() error { _, err := do(ctx, c, "GET", "/personas/big-a", nil, 200); return err }},
		side{"bare", func() error { _, err := do(ctx, bc, "GET", "/personas/big-a", nil, 200); return err }})
	o, r := res["ours"], res["bare"]
	ratio := o.perSec() / r.perSec()
	b.add(row{fmt.Sprintf("· GET /personas/{name} (%d B), %d keep-alive clients", len(body), b.cfg.getConc), fmt.Sprintf("%.0f req/s", o.perSec()), fmt.Sprintf("bare httprouter %.0f req/s", r.perSec()), fmt.Sprintf("%.2f×", ratio), "≥ 0.5×", metGE(ratio, 0.5)})
	if o.errs > 0 || r.errs > 0 {
		b.note("persona reads: %d errors (ours), %d (bare); first: %v %v", o.errs, r.errs, o.firstErr, r.firstErr)
	}
	return nil
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+)\s+\d+\s+(.*)$`)

// goBench runs `go test -bench` in the repository and returns each
// benchmark's metrics by unit.
func (b *bench) goBench(ctx context.Context, pattern, benchtime, pkg string) (map[string]map[string]string, []string, error) {
	cmd := exec.CommandContext(ctx, goTool(), "test", "-run", "^$", "-bench", pattern, "-benchmem", "-benchtime", benchtime, pkg)
	cmd.Dir = b.cfg.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, nil, fmt.Errorf("go test -bench %s %s: %w\n%s", pattern, pkg, err, truncate(string(out), 2000))
	}
	res, order := parseBenchOutput(string(out))
	return res, order, nil
}

// parseBenchOutput reads `go test -bench` lines: each benchmark's metrics
// by unit ("ns/op", "allocs/op", custom units), in the order printed.
func parseBenchOutput(out string) (map[string]map[string]string, []string) {
	res := map[string]map[string]string{}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		units := map[string]string{}
		for i := 0; i+1 < len(f); i += 2 {
			units[f[i+1]] = f[i]
		}
		res[m[1]] = units
		order = append(order, m[1])
	}
	return res, order
}

// routingBench: the guest's routing decision, ns/op and allocs/op.
func (b *bench) routingBench(ctx context.Context) error {
	bt := "1s"
	if b.cfg.quick {
		bt = "200ms"
	}
	// The routing decision is Route; Build (making a table at activation)
	// is reported too, with no allocation target.
	res, order, err := b.goBench(ctx, ".", bt, "./guestd/routing")
	if err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results from ./guestd/routing")
	}
	for _, name := range order {
		u := res[name]
		allocs := u["allocs/op"]
		r := row{"· routing " + strings.TrimPrefix(name, "Benchmark"), fmt.Sprintf("%s ns/op, %s allocs/op, %s B/op", u["ns/op"], allocs, u["B/op"]), "", "", "0 allocs", metLE(atof(allocs), 0)}
		if strings.HasPrefix(name, "BenchmarkBuild") {
			r.target, r.met = "", "—"
		}
		b.add(r)
	}
	return nil
}

// storeBench: Badger ingestion capacity of guest audit batches (each batch
// one synced commit).
func (b *bench) storeBench(ctx context.Context) error {
	bt := "2s"
	if b.cfg.quick {
		bt = "500ms"
	}
	res, order, err := b.goBench(ctx, "^BenchmarkIngestGuestAudit$", bt, "./hostd/store")
	if err != nil {
		return err
	}
	for _, name := range order {
		u := res[name]
		b.add(row{"· audit ingestion into Badger (store bench, batches of 100, synced)", u["events/s"] + " events/s", "", "", "", "—"})
	}
	return nil
}

func atof(s string) float64 {
	var f float64
	if _, err := fmt.Sscan(s, &f); err != nil {
		return -1
	}
	return f
}

// scaleReads samples API read latency while something else runs.
type scaleReads struct {
	// every paces the reads (one started every interval, the next at once
	// when one took longer); 0 reads back to back.
	every time.Duration
	mu    sync.Mutex
	lat   samples
	errs  int
	err   error
}

func (s *scaleReads) run(ctx context.Context, c func() error, stop <-chan struct{}) {
	next := time.Now()
	for {
		if s.every > 0 {
			next = next.Add(s.every)
			if now := time.Now(); next.Before(now) {
				next = now
			}
			timer := time.NewTimer(time.Until(next))
			select {
			case <-stop:
				timer.Stop()
				return
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		}
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		t := time.Now()
		err := c()
		d := time.Since(t)
		s.mu.Lock()
		if err != nil {
			s.errs++
			if s.err == nil {
				s.err = err
			}
		} else {
			s.lat = append(s.lat, d)
		}
		s.mu.Unlock()
	}
}
