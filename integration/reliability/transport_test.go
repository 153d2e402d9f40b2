package reliability

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// faultProxy sits between hostd and guestd on unix sockets and injects
// faults on command: cut either side, garbage, partial and stale frames.
type faultProxy struct {
	l     net.Listener
	guest string

	mu    sync.Mutex
	pairs []*proxyPair
	conns atomic.Int64
}

type proxyPair struct {
	host, guest net.Conn
	hmu, gmu    sync.Mutex // serialise writes towards host / guest
}

func newFaultProxy(t testing.TB, sock, guestSock string) *faultProxy {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{l: l, guest: guestSock}
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for _, pr := range p.pairs {
			pr.host.Close()
			pr.guest.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *faultProxy) accept() {
	for {
		hc, err := p.l.Accept()
		if err != nil {
			return
		}
		gc, err := net.DialTimeout("unix", p.guest, 5*time.Second)
		if err != nil {
			hc.Close()
			continue
		}
		p.conns.Add(1)
		pr := &proxyPair{host: hc, guest: gc}
		p.mu.Lock()
		p.pairs = append(p.pairs, pr)
		p.mu.Unlock()
		go pipe(hc, gc, &pr.gmu)
		go pipe(gc, hc, &pr.hmu)
	}
}

func pipe(src, dst net.Conn, mu *sync.Mutex) {
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			mu.Lock()
			dst.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, werr := dst.Write(buf[:n])
			mu.Unlock()
			if werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	src.Close()
	dst.Close()
}

func (p *faultProxy) current() *proxyPair {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pairs) == 0 {
		return nil
	}
	return p.pairs[len(p.pairs)-1]
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// fakeHeader is a valid frame header (magic, CRCs) announcing length bytes
// of payload that never come: a torn frame.
func fakeHeader(typ byte, epoch uint32, length uint32) []byte {
	h := make([]byte, 32)
	copy(h, "VMPF")
	h[4] = 1
	h[5] = typ
	binary.BigEndian.PutUint32(h[8:], epoch)
	binary.BigEndian.PutUint64(h[12:], rand.Uint64()|1)
	binary.BigEndian.PutUint32(h[20:], length)
	binary.BigEndian.PutUint32(h[24:], rand.Uint32())
	binary.BigEndian.PutUint32(h[28:], crc32.Checksum(h[:28], castagnoli))
	return h
}

// inject applies one fault and names it.
func (p *faultProxy) inject() string {
	pr := p.current()
	if pr == nil {
		return "none"
	}
	write := func(to net.Conn, mu *sync.Mutex, b []byte) {
		mu.Lock()
		to.SetWriteDeadline(time.Now().Add(time.Second))
		to.Write(b)
		mu.Unlock()
	}
	garbage := func() []byte {
		b := make([]byte, 1+rand.IntN(300))
		for i := range b {
			b[i] = byte(rand.Uint32())
		}
		if rand.IntN(2) == 0 {
			copy(b, "VMPF") // a false magic
		}
		return b
	}
	switch rand.IntN(7) {
	case 0:
		pr.host.Close()
		return "host side closed"
	case 1:
		pr.guest.Close()
		return "guest side closed"
	case 2:
		write(pr.guest, &pr.gmu, garbage())
		return "garbage to guest"
	case 3:
		write(pr.host, &pr.hmu, garbage())
		return "garbage to host"
	case 4:
		write(pr.guest, &pr.gmu, fakeHeader(0x20, rand.Uint32(), uint32(100+rand.IntN(2000)))[:8+rand.IntN(24)])
		return "partial header to guest"
	case 5:
		write(pr.guest, &pr.gmu, fakeHeader(0x20, rand.Uint32(), uint32(100+rand.IntN(2000))))
		return "torn frame to guest"
	default:
		write(pr.host, &pr.hmu, fakeHeader(0x22, rand.Uint32(), uint32(100+rand.IntN(2000))))
		return "torn frame to host"
	}
}

// TestTransportFaults runs execs (each audited by the guest) through a proxy
// that cuts connections and injects garbage, partial and torn frames. Every
// request must end with an answer or a 503/504 problem within its deadline,
// the session must recover, and the guest's audit events must reach the host
// exactly once. RELIABILITY_FAULT_DURATION sets how long faults are injected
// (default 8 s).
func TestTransportFaults(t *testing.T) {
	parallel(t)
	dur := envDuration("RELIABILITY_FAULT_DURATION", pick(8*time.Second, 60*time.Second))
	dir := testproc.ShortDir(t)
	gdir := filepath.Join(dir, "guest")
	_, ep := startGuest(t, gdir)
	proxySock := filepath.Join(dir, "proxy.sock")
	px := newFaultProxy(t, proxySock, ep[len("unix:"):])
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), "--instance=vm1=unix:"+proxySock)
	h.waitConnected(t, "vm1")
	h.must(t, "POST", "/personas", overridePersona("faulty"), 201)
	h.must(t, "POST", "/instances/vm1/personas/faulty/activate", nil, 200)

	const execTimeout = 3 // seconds, per request
	var ok, unavailable, timedOut atomic.Int64
	var worst atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		untilClosed(&wg, stop, func() bool {
			start := time.Now()
			a, err := call(h.client, "POST", "/instances/vm1/exec", map[string]any{"command": "deploy", "args": []string{"x"}, "timeout_seconds": execTimeout})
			d := time.Since(start)
			for {
				w := worst.Load()
				if int64(d) <= w || worst.CompareAndSwap(w, int64(d)) {
					break
				}
			}
			if err != nil {
				t.Errorf("exec: transport error from hostd: %v", err)
				return false
			}
			switch a.status {
			case 200:
				ok.Add(1)
			case 503:
				unavailable.Add(1)
				checkProblem(t, "503", a)
				time.Sleep(20 * time.Millisecond)
			case 504:
				timedOut.Add(1)
				checkProblem(t, "504", a)
			default:
				t.Errorf("exec under faults: %d %.300s", a.status, a.body)
			}
			// The request's own deadline (exec timeout) plus the agent
			// call's margin: an answer never hangs past it.
			if d > (execTimeout+10)*time.Second {
				t.Errorf("exec answered %d after %v, past its deadline", a.status, d)
			}
			return true
		})
	}
	faults := map[string]int{}
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond)
		faults[px.inject()]++
	}
	close(stop)
	wg.Wait()

	// Recovery: the session comes back and execs succeed again.
	h.waitConnected(t, "vm1")
	deadline := time.Now().Add(30 * time.Second)
	for {
		a, err := call(h.client, "POST", "/instances/vm1/exec", map[string]any{"command": "deploy", "timeout_seconds": 5})
		if err == nil && a.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no successful exec 30 s after the faults stopped: %v %d %s", err, a.status, a.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	n := checkGuestAudit(t, h, "vm1", filepath.Join(gdir, "state"))
	if h.Exited() {
		t.Fatalf("hostd died: %s", h.stderr)
	}
	t.Logf("faults %v over %v; %d connections through the proxy; execs: %d answered, %d 503, %d 504; slowest answer %v; %d guest audit events delivered exactly once",
		faults, dur, px.conns.Load(), ok.Load(), unavailable.Load(), timedOut.Load(), time.Duration(worst.Load()).Round(time.Millisecond), n)
}
