package reliability

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testbin"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// fakeGuest is a guest agent that speaks the real protocol (protocol.Reader
// and Writer on a unix socket) and says what a test makes it say: its
// HelloAck, its exec answers, and audit batches, once or in a flood that
// waits for each acknowledgement as the real guest does.
type fakeGuest struct {
	hello protocol.HelloAck
	// exec answers an exec request; nil answers an empty result.
	exec func(protocol.Exec) protocol.ExecResult
	// batches are sent once per session after the handshake, each waiting
	// for its acknowledgement.
	batches []protocol.AuditBatch
	// flood, when set, makes batches of this many events (detail of
	// floodDetail bytes) for as long as the session lasts, each waiting for
	// its acknowledgement; a partly acknowledged batch is sent again from
	// the first unacknowledged event, as the real guest's spool does.
	flood, floodDetail int

	sessions atomic.Int64
	acked    atomic.Uint64 // highest seq acknowledged
}

func startFakeGuest(t testing.TB, sock string, g *fakeGuest) *fakeGuest {
	t.Helper()
	if g.hello.ProtocolVersion == 0 {
		g.hello.ProtocolVersion = protocol.Version
	}
	if g.hello.SpoolID == "" {
		g.hello.SpoolID = "fake-spool"
	}
	if g.hello.Capabilities == nil {
		g.hello.Capabilities = []string{protocol.CapExecStream, protocol.CapAuditSpool}
	}
	testproc.ServeUnix(t, sock, g.serve)
	return g
}

func (g *fakeGuest) serve(c net.Conn) {
	r := protocol.NewReader(c, 0)
	var wmu sync.Mutex
	w := protocol.NewWriter(c)
	write := func(h protocol.Header, payload []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		h.Version = protocol.Version
		return w.WriteFrame(h, payload)
	}
	f, err := r.Next()
	if err != nil || f.Type != protocol.TypeHello {
		return
	}
	g.sessions.Add(1)
	epoch := f.Epoch
	ack, _ := protocol.Marshal(g.hello)
	if write(protocol.Header{Type: protocol.TypeHelloAck, Flags: protocol.FlagResponse, Epoch: epoch, ID: f.ID}, ack) != nil {
		return
	}
	acks := make(chan uint64, 1)
	done := make(chan struct{})
	defer close(done)
	send := func(id uint64, b protocol.AuditBatch) (uint64, bool) {
		p, _ := protocol.Marshal(b)
		if write(protocol.Header{Type: protocol.TypeAuditBatch, Epoch: epoch, ID: id}, p) != nil {
			return 0, false
		}
		select {
		case up := <-acks:
			return up, true
		case <-done:
			return 0, false
		case <-time.After(30 * time.Second):
			return 0, false
		}
	}
	go func() {
		id := uint64(1 << 40)
		for _, b := range g.batches {
			id++
			if _, ok := send(id, b); !ok {
				return
			}
		}
		if g.flood == 0 {
			return
		}
		detail := strings.Repeat("d", g.floodDetail)
		next := g.acked.Load() + 1
		for {
			evs := make([]protocol.AuditEvent, g.flood)
			for i := range evs {
				evs[i] = protocol.AuditEvent{Seq: next + uint64(i), Time: time.Now(), Type: protocol.AuditExec, Command: "flood", Detail: detail}
			}
			id++
			up, ok := send(id, protocol.AuditBatch{SpoolID: g.hello.SpoolID, Events: evs})
			if !ok {
				return
			}
			if up >= next {
				for cur := g.acked.Load(); up > cur && !g.acked.CompareAndSwap(cur, up); cur = g.acked.Load() {
				}
				next = up + 1
			} else {
				time.Sleep(50 * time.Millisecond) // nothing acknowledged: the real guest pauses too
			}
		}
	}()
	eachFrame(r, func(f protocol.Frame) {
		switch f.Type {
		case protocol.TypePing:
			write(protocol.Header{Type: protocol.TypePong, Flags: protocol.FlagResponse, Epoch: epoch, ID: f.ID}, nil)
		case protocol.TypeAuditAck:
			var a protocol.AuditAck
			protocol.Unmarshal(f.Payload, &a)
			select {
			case acks <- a.UpToSeq:
			default:
			}
		case protocol.TypeError:
			if f.Flags&protocol.FlagResponse != 0 {
				select {
				case acks <- 0:
				default:
				}
			}
		case protocol.TypeExec:
			var req protocol.Exec
			protocol.Unmarshal(f.Payload, &req)
			res := protocol.ExecResult{Route: protocol.RouteDefault}
			if g.exec != nil {
				res = g.exec(req)
			}
			b, _ := protocol.Marshal(res)
			go write(protocol.Header{Type: protocol.TypeExecResult, Flags: protocol.FlagResponse, Epoch: epoch, ID: f.ID}, b)
		}
	})
}

// diskKB is what dir takes on disk (allocated blocks, not apparent sizes:
// Badger's files are sparse).
func diskKB(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil {
			n += st.Blocks * 512
		}
		return nil
	})
	return n >> 10
}

// metric reads the sum of a metric family's samples from /metrics.
func (h *hostd) metric(t testing.TB, name string) float64 {
	t.Helper()
	a := h.must(t, "GET", "/metrics", nil, 200)
	sum := 0.0
	sc := bufio.NewScanner(bytes.NewReader(a.body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

func (h *hostd) authFailuresCounted(t testing.TB) int {
	return int(h.metric(t, "vmpersona_auth_failures_total"))
}

// sampler records the daemon's peak resident set while a test runs.
type sampler struct {
	peak, peakAnon atomic.Int64
	stop           chan struct{}
	done           chan struct{}
}

func sample(t testing.TB, h *hostd) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			if h.Exited() {
				return
			}
			rss, _ := h.rssKB(t)
			s.peak.Store(max(s.peak.Load(), int64(rss)))
			s.peakAnon.Store(max(s.peakAnon.Load(), int64(h.anonKB(t))))
			select {
			case <-s.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *sampler) end() (peakKB, peakAnonKB int64) {
	close(s.stop)
	<-s.done
	return s.peak.Load(), s.peakAnon.Load()
}

// latencies keeps request durations for a percentile.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) p(q float64) (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0, 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*q))], len(s)
}

// otherInstanceLoad calls exec on a real guest agent (instance id) until
// stop, recording latencies and failures: the API as another instance's
// user sees it while the host is under attack.
func otherInstanceLoad(h *hostd, id string, stop <-chan struct{}) (*latencies, *atomic.Int64, *sync.WaitGroup) {
	lat, fails := &latencies{}, &atomic.Int64{}
	var wg sync.WaitGroup
	untilClosed(&wg, stop, func() bool {
		start := time.Now()
		a, err := call(h.client, "POST", "/instances/"+id+"/exec", map[string]any{"command": "true"})
		if err != nil || a.status != 200 {
			fails.Add(1)
		} else {
			lat.add(time.Since(start))
		}
		return true
	})
	return lat, fails, &wg
}

// TestAnonymousFloodIsBounded: clients without a token hammer the API with
// 60 KB paths. Every refusal is counted; the audit log keeps a sample
// bounded per source, each with a short detail naming the route pattern,
// never the path; memory and disk stay within their bounds, another
// instance's API keeps answering, and the audit log reads back in pages
// bounded in bytes. Bounds: hostd peak RSS under 200 MB, data directory
// growth under 8 MB per minute.
func TestAnonymousFloodIsBounded(t *testing.T) {
	parallel(t)
	dur := envDuration("RELIABILITY_FLOOD", pick(4*time.Second, 30*time.Second))
	dir := testproc.ShortDir(t)
	tokFile := filepath.Join(dir, "tokens.csv")
	os.WriteFile(tokFile, []byte("admintoken,alice,1,admin\n"), 0o600)
	addr := testproc.FreeTCPAddr(t)
	gdir := filepath.Join(dir, "guest")
	_, ep := startGuest(t, gdir)
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), "--listen", addr, "--token-auth-file", tokFile, "--instance=other="+ep)
	h.waitConnected(t, "other")
	disk0 := diskKB(t, h.dataDir)
	smp := sample(t, h)
	stop := make(chan struct{})
	lat, fails, lwg := otherInstanceLoad(h, "other", stop)

	junk := strings.Repeat("%2e%2e/x", 60<<10/8)
	var sent atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(dur)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			for n := 0; time.Now().Before(end); n++ {
				paths := []string{"/personas/" + junk, "/audit?x=" + junk, "/instances/" + junk + "/exec"}
				method := []string{"GET", "GET", "POST"}[n%3]
				req, _ := http.NewRequest(method, "http://"+addr+paths[n%3], nil)
				if i%2 == 1 {
					req.Header.Set("Authorization", "Bearer guess-"+strconv.Itoa(n))
				}
				res, err := c.Do(req)
				if err != nil {
					continue
				}
				res.Body.Close()
				if res.StatusCode == 401 {
					sent.Add(1)
				} else if res.StatusCode != 404 && res.StatusCode != 414 && res.StatusCode != 431 {
					t.Errorf("%s: %d", method, res.StatusCode)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	lwg.Wait()
	peak, peakAnon := smp.end()
	_, hwm := h.rssKB(t)
	time.Sleep(500 * time.Millisecond)
	grew := diskKB(t, h.dataDir) - disk0
	perMin := float64(grew) * float64(time.Minute) / float64(dur)
	p99, n := lat.p(0.99)
	p50, _ := lat.p(0.50)

	counted := h.authFailuresCounted(t)
	evs := h.auditEvents(t, "type=auth_failure")
	t.Logf("anonymous flood for %v: %d refusals (%d counted), %d audited; hostd VmHWM %d KB, sampled peak %d KB (anon %d KB); data dir +%d KB (%.1f MB/min); other instance exec p50 %v p99 %v (n=%d, %d failed)",
		dur, sent.Load(), counted, len(evs), hwm, peak, peakAnon, grew, perMin/1024, p50, p99, n, fails.Load())
	if h.Exited() {
		t.Fatalf("hostd died: %s", h.stderr)
	}
	if int64(counted) < sent.Load() {
		t.Errorf("%d refusals answered but %d counted", sent.Load(), counted)
	}
	// One source (127.0.0.1): a burst of 5, then one a second.
	if max := 5 + int(dur/time.Second) + 2; len(evs) > max || len(evs) == 0 {
		t.Errorf("%d auth_failure events audited in %v from one source; want 1..%d", len(evs), dur, max)
	}
	for _, ev := range evs {
		d, _ := ev["detail"].(string)
		if len(d) > 256 || strings.Contains(d, "%2e") || strings.Contains(d, "../x") {
			t.Errorf("auth_failure detail holds the raw path or is long (%d bytes): %.300q", len(d), d)
		}
	}
	floodBounds(t, hwm, 200, perMin, 8, "", fails.Load())
}

// TestGuestCannotForgeAudit: a guest that sends host-looking events (a
// persona deleted by "admin", an auth failure), events dated 2200 and 1 MB
// details: the forged types are acknowledged and not stored, the details
// are cut, the 2200 event keeps its claim clamped and flagged and does not
// move the cursor (a host event stored later comes after it), and
// vmpersonactl prints the guest's escape sequences escaped.
func TestGuestCannotForgeAudit(t *testing.T) {
	parallel(t)
	dir := testproc.ShortDir(t)
	sock := filepath.Join(dir, "guest.sock")
	evil := "\x1b]0;owned\x07\x1b[2J\u202eevil"
	g := startFakeGuest(t, sock, &fakeGuest{batches: []protocol.AuditBatch{{SpoolID: "fake-spool", Events: []protocol.AuditEvent{
		{Seq: 1, Type: protocol.AuditPersonaDeleted, Actor: "admin", Persona: "prod", Time: time.Now()},
		{Seq: 2, Type: protocol.AuditAuthFailure, Actor: "anonymous", Time: time.Now()},
		{Seq: 3, Type: protocol.AuditActivationRequested, Actor: "admin", Time: time.Now()},
		{Seq: 4, Type: protocol.AuditExec, Command: "future", Time: time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), Detail: evil},
		{Seq: 5, Type: protocol.AuditDenial, Command: "big", Time: time.Now(), Detail: strings.Repeat("x", 1<<20)},
	}}}})
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), "--instance=vm1=unix:"+sock)
	h.waitConnected(t, "vm1")
	deadline := time.Now().Add(10 * time.Second)
	for g.sessions.Load() == 0 || len(h.auditEvents(t, "instance=vm1")) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("guest events never stored: %v", h.auditEvents(t, "instance=vm1"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.must(t, "POST", "/personas", map[string]any{"name": "after"}, 201)

	for _, typ := range []string{protocol.AuditPersonaDeleted, protocol.AuditAuthFailure, protocol.AuditActivationRequested} {
		for _, ev := range h.auditEvents(t, "type="+typ) {
			if ev["source"] == "guest" {
				t.Errorf("a guest's %s event was stored: %v", typ, ev)
			}
		}
	}
	// The forged events are audited as one refusal (not as themselves).
	refused := h.auditEvents(t, "type="+protocol.AuditGuestRefused)
	if len(refused) != 1 || refused[0]["result"] != "audit_type" || !strings.Contains(refused[0]["detail"].(string), "3 audit events") {
		t.Errorf("guest_refused events for 3 forged events: %v", refused)
	}
	if n := h.metric(t, "vmpersona_guest_input_refused_total"); n != 3 {
		t.Errorf("vmpersona_guest_input_refused_total = %v, want 3", n)
	}
	var future map[string]any
	for _, ev := range h.auditEvents(t, "instance=vm1") {
		switch ev["command"] {
		case "future":
			future = ev
		case "big":
			if d, _ := ev["detail"].(string); len(d) > 2048 {
				t.Errorf("a 1 MB guest detail was stored as %d bytes", len(d))
			}
		}
	}
	if future == nil || future["clock_skew"] != true || !strings.HasPrefix(future["time"].(string), strconv.Itoa(time.Now().Year())) {
		t.Fatalf("the event dated 2200: %v", future)
	}
	next := h.auditEvents(t, "after="+future["id"].(string))
	if !slices.ContainsFunc(next, func(ev map[string]any) bool { return ev["type"] == protocol.AuditPersonaCreated }) {
		t.Fatalf("the host event stored after the 2200 event is not after it: %v", next)
	}

	ctl, err := testbin.Path(testbin.Ctl)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"audit", "--instance", "vm1"}, {"audit", "--instance", "vm1", "-o", "json"}} {
		out, err := exec.Command(ctl, append([]string{"--socket", h.sock}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("vmpersonactl %v: %v\n%s", args, err, out)
		}
		if bytes.ContainsAny(out, "\x1b\x07\u202e") {
			t.Errorf("vmpersonactl %v printed the guest's control characters raw: %q", args, out)
		}
		if !bytes.Contains(out, []byte(`\x1b`)) && !bytes.Contains(out, []byte(`\u001b`)) {
			t.Errorf("vmpersonactl %v: the escaped detail is missing: %q", args, out)
		}
	}
}

// TestHostileHelloRefused: guests whose handshake claims a persona named
// ../../etc/… with escape sequences and a 1 MB environment, or an 8 MB
// agent version. The session ends with the reason logged, the refusal is
// audited once however often the guest reconnects, nothing of it reaches
// the instance record, and GET /instances stays small.
func TestHostileHelloRefused(t *testing.T) {
	parallel(t)
	env := map[string]string{}
	for i := range 40 {
		env[fmt.Sprintf("V%d", i)] = strings.Repeat("e", 30<<10)
	}
	for _, tc := range []struct {
		name  string
		hello protocol.HelloAck
	}{
		{"persona", protocol.HelloAck{AgentVersion: "1", BootID: "b", Active: &protocol.ActiveState{
			Persona: protocol.Persona{Name: "../../etc/\x1b[31mpasswd", EnvironmentVariables: env}, Revision: 1, ActivationID: "a"}}},
		{"version", protocol.HelloAck{AgentVersion: strings.Repeat("v", 8<<20), BootID: "b"}},
		{"bootid", protocol.HelloAck{AgentVersion: "1", BootID: "\x1b[2J" + strings.Repeat("b", 100)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testproc.ShortDir(t)
			sock := filepath.Join(dir, "guest.sock")
			g := startFakeGuest(t, sock, &fakeGuest{hello: tc.hello})
			h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), "--instance=vm1=unix:"+sock)
			// A refused guest is dialled again and again (with backoff);
			// one whose claim is accepted keeps its first session.
			deadline := time.Now().Add(10 * time.Second)
			for g.sessions.Load() < 3 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := g.sessions.Load(); n < 3 {
				t.Errorf("the hostile guest had %d sessions in 10 s: its sessions are not ended", n)
			}
			a := h.must(t, "GET", "/instances", nil, 200)
			if len(a.body) > 16<<10 || bytes.Contains(a.body, []byte("passwd")) || bytes.Contains(a.body, []byte("vvvvvvvv")) {
				t.Errorf("GET /instances is %d bytes and shows the guest's claim: %.300s", len(a.body), a.body)
			}
			inst := h.must(t, "GET", "/instances/vm1", nil, 200).json(t)
			if inst["state"] == "connected" {
				t.Errorf("the hostile guest is connected: %v", inst)
			}
			refused := h.auditEvents(t, "type="+protocol.AuditGuestRefused)
			if len(refused) != 1 || refused[0]["instance"] != "vm1" || refused[0]["result"] != "hello" {
				t.Errorf("%d sessions, guest_refused events %v; want exactly one", g.sessions.Load(), refused)
			}
			for _, ev := range h.auditEvents(t, "") {
				if ev["type"] == protocol.AuditReconciled {
					t.Errorf("the refused claim was reconciled: %v", ev)
				}
			}
			if !strings.Contains(h.stderr.String(), "guest input refused") {
				t.Errorf("no log line says why: %s", h.stderr)
			}
		})
	}
}

// TestExecResultBound: a guest answering an exec with 3 MB of output when
// the host asked for at most 1 MiB: the request fails (502), the session
// ends, the refusal is audited, and the client never receives the 3 MB.
func TestExecResultBound(t *testing.T) {
	parallel(t)
	dir := testproc.ShortDir(t)
	sock := filepath.Join(dir, "guest.sock")
	var asked atomic.Int64
	startFakeGuest(t, sock, &fakeGuest{hello: protocol.HelloAck{AgentVersion: "1", BootID: "b"},
		exec: func(req protocol.Exec) protocol.ExecResult {
			asked.Store(int64(req.MaxOutput))
			return protocol.ExecResult{Route: protocol.RouteDefault, Stdout: strings.Repeat("x", 3<<20)}
		}})
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), "--instance=vm1=unix:"+sock)
	h.waitConnected(t, "vm1")
	a, err := call(h.client, "POST", "/instances/vm1/exec", map[string]any{"command": "cat"})
	if err != nil {
		t.Fatal(err)
	}
	if a.status != 502 || len(a.body) > 4096 {
		t.Fatalf("exec answered %d with %d bytes; want 502 and a short problem", a.status, len(a.body))
	}
	checkProblem(t, "exec over bound", a)
	if asked.Load() != 1<<20 {
		t.Errorf("the host asked for %d bytes of output, want 1 MiB", asked.Load())
	}
	if ev := h.auditEvents(t, "type="+protocol.AuditGuestRefused); len(ev) != 1 || ev[0]["result"] != "exec_result" {
		t.Errorf("guest_refused events: %v", ev)
	}
}

// TestGuestAuditFlood: (b) one and (c) ten guests sending audit batches as
// fast as the host acknowledges them (1,000 events of 1 KB each a batch),
// beside a real guest agent whose execs measure the API's latency. The
// per-instance quota (here 500 events/s and 256 KiB/s) holds each guest
// back through the protocol: stored events stay within the quota, hostd's
// memory and the data directory's growth within their bounds (hostd peak
// RSS under 350 MB; data directory growth under 60 MB per minute per
// flooding guest, the quota's 15 MB/min of payload with Badger's indexes,
// dedup keys and value log).
func TestGuestAuditFlood(t *testing.T) {
	parallel(t)
	dur := envDuration("RELIABILITY_FLOOD", pick(5*time.Second, 30*time.Second))
	for _, n := range []int{1, 10} {
		t.Run(fmt.Sprintf("guests=%d", n), func(t *testing.T) { auditFloodRun(t, n, dur) })
	}
}

func auditFloodRun(t *testing.T, guests int, dur time.Duration) {
	const events, bytesPerSec = 500, 256 << 10
	dir := testproc.ShortDir(t)
	gdir := filepath.Join(dir, "guest")
	_, ep := startGuest(t, gdir)
	args := []string{"--instance=other=" + ep, "--audit-guest-events", strconv.Itoa(events), "--audit-guest-bytes", strconv.Itoa(bytesPerSec)}
	var fakes []*fakeGuest
	for i := range guests {
		sock := filepath.Join(dir, fmt.Sprintf("flood%d.sock", i))
		fakes = append(fakes, startFakeGuest(t, sock, &fakeGuest{hello: protocol.HelloAck{AgentVersion: "1", BootID: "b", SpoolID: fmt.Sprintf("spool%d", i)},
			flood: 1000, floodDetail: 1000}))
		args = append(args, fmt.Sprintf("--instance=flood%d=unix:%s", i, sock))
	}
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), args...)
	h.waitConnected(t, "other")
	disk0 := diskKB(t, h.dataDir)
	smp := sample(t, h)
	stop := make(chan struct{})
	start := time.Now()
	lat, fails, lwg := otherInstanceLoad(h, "other", stop)
	time.Sleep(dur)
	close(stop)
	lwg.Wait()
	elapsed := time.Since(start)
	peak, peakAnon := smp.end()
	_, hwm := h.rssKB(t)
	var acked uint64
	for _, g := range fakes {
		acked += g.acked.Load()
	}
	grew := diskKB(t, h.dataDir) - disk0
	perMin := float64(grew) * float64(time.Minute) / float64(elapsed) / float64(guests)
	p99, n := lat.p(0.99)
	p50, _ := lat.p(0.50)
	throttled := h.metric(t, "vmpersona_audit_throttle_seconds_total")
	t.Logf("%d flooding guests for %v: %d events acknowledged (%.0f/s per guest); throttled %.1f s; hostd VmHWM %d KB, sampled peak %d KB (anon %d KB); data dir +%d KB (%.1f MB/min per guest); other instance exec p50 %v p99 %v (n=%d, %d failed)",
		guests, elapsed.Round(time.Millisecond), acked, float64(acked)/elapsed.Seconds()/float64(guests), throttled, hwm, peak, peakAnon, grew, perMin/1024, p50, p99, n, fails.Load())
	if h.Exited() {
		t.Fatalf("hostd died: %s", h.stderr)
	}
	// Each guest: a burst of two seconds' quota, then the rate; by bytes
	// (1 KB events) the byte quota binds first.
	perGuest := 2*float64(bytesPerSec)/1000 + elapsed.Seconds()*float64(bytesPerSec)/1000
	if max := uint64(float64(guests) * perGuest * 1.2); acked > max {
		t.Errorf("%d events acknowledged; the quota allows about %d", acked, max)
	}
	if acked == 0 {
		t.Error("nothing was acknowledged: the quota starves the guests")
	}
	if throttled == 0 {
		t.Error("the quota never held a batch back")
	}
	floodBounds(t, hwm, 350, perMin, 60, " per guest", fails.Load())
}

// floodBounds checks what a flood may cost: hostd's peak resident set (hwm,
// KB) within maxRSS MB, the data directory's growth (perMin, KB a minute,
// per what) within maxGrowth MB a minute, and no exec of the other
// instance failing.
func floodBounds(t *testing.T, hwm, maxRSS int, perMin float64, maxGrowth int, per string, fails int64) {
	t.Helper()
	if hwm > maxRSS<<10 {
		t.Errorf("hostd peak RSS %d KB, bound %d MB", hwm, maxRSS)
	}
	if perMin > float64(maxGrowth<<10) {
		t.Errorf("data directory grew %.1f MB/min%s, bound %d MB/min", perMin/1024, per, maxGrowth)
	}
	if fails > 0 {
		t.Errorf("%d execs on the other instance failed during the flood", fails)
	}
}

// TestSocketGroup: the API socket hostd creates is root:vmpersona 0660 when
// the group exists, so its members can connect without socket activation.
// It runs alone (see parallel).
func TestSocketGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("creating the vmpersona group and reading the socket's owner needs root")
	}
	g, err := user.LookupGroup("vmpersona")
	if err != nil {
		if out, err := exec.Command("groupadd", "--system", "vmpersona").CombinedOutput(); err != nil {
			t.Skipf("no group vmpersona and groupadd failed (%v: %s)", err, out)
		}
		t.Cleanup(func() { exec.Command("groupdel", "vmpersona").Run() })
		if g, err = user.LookupGroup("vmpersona"); err != nil {
			t.Fatal(err)
		}
	}
	dir := testproc.ShortDir(t)
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"))
	var st syscall.Stat_t
	if err := syscall.Stat(h.sock, &st); err != nil {
		t.Fatal(err)
	}
	if gid, _ := strconv.Atoi(g.Gid); int(st.Gid) != gid || st.Uid != 0 || st.Mode&0o777 != 0o660 {
		t.Fatalf("socket is uid %d gid %d mode %04o; want root:vmpersona (gid %s) 0660", st.Uid, st.Gid, st.Mode&0o777, g.Gid)
	}
	if entries, _ := os.ReadDir(dir); slices.ContainsFunc(entries, func(e os.DirEntry) bool { return strings.HasSuffix(e.Name(), ".tmp") }) {
		t.Errorf("a temporary socket was left behind: %v", entries)
	}
}
