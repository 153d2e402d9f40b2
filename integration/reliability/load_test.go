package reliability

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
)

// loadKnobs are the load test's size: RELIABILITY_LOAD_GUESTS,
// RELIABILITY_LOAD_CLIENTS and RELIABILITY_LOAD_DURATION. `make test` runs
// the small default; `make reliability` (build tag reliability) runs 50
// guests, 100 clients, 60 s.
var loadGuests, loadClients, loadDuration = 10, 20, 5 * time.Second

// TestLoad runs concurrent API clients mixing reads, persona writes,
// activations and execs against one real hostd with real guestd agents.
// There must be no 5xx, and every guest's audit events must reach the host
// exactly once. p50 and p99 per operation are reported.
func TestLoad(t *testing.T) {
	parallel(t)
	guests := envInt("RELIABILITY_LOAD_GUESTS", loadGuests)
	clients := envInt("RELIABILITY_LOAD_CLIENTS", loadClients)
	dur := envDuration("RELIABILITY_LOAD_DURATION", loadDuration)
	dir := testproc.ShortDir(t)
	var args []string
	gdirs := make([]string, guests)
	var gwg sync.WaitGroup
	var gmu sync.Mutex
	for i := 0; i < guests; i++ {
		gdirs[i] = filepath.Join(dir, fmt.Sprintf("g%d", i))
	}
	eps := make([]string, guests)
	for i := 0; i < guests; i++ {
		gwg.Add(1)
		go func() {
			defer gwg.Done()
			_, ep := startGuest(t, gdirs[i])
			gmu.Lock()
			eps[i] = ep
			gmu.Unlock()
		}()
	}
	gwg.Wait()
	for i, ep := range eps {
		args = append(args, fmt.Sprintf("--instance=vm%d=%s", i, ep))
	}
	h := startHostd(t, filepath.Join(dir, "data"), filepath.Join(dir, "hostd.sock"), args...)
	h.client = testproc.UnixHTTP(h.sock, 60*time.Second)
	for i := 0; i < guests; i++ {
		h.waitConnected(t, fmt.Sprintf("vm%d", i))
	}
	shared := []string{"load-a", "load-b", "load-c"}
	for _, p := range shared {
		h.must(t, "POST", "/personas", overridePersona(p), 201)
	}
	for i := 0; i < guests; i++ {
		h.must(t, "POST", fmt.Sprintf("/instances/vm%d/personas/load-a/activate", i), nil, 200)
	}
	for c := 0; c < clients; c++ {
		h.must(t, "POST", "/personas", overridePersona(fmt.Sprintf("own-%d", c)), 201)
	}

	type sample struct {
		op  string
		d   time.Duration
		st  int
		err error
	}
	results := make(chan []sample, clients)
	end := time.Now().Add(dur)
	rss0, _ := h.rssKB(t)
	for c := 0; c < clients; c++ {
		go func() {
			var mine []sample
			for time.Now().Before(end) {
				vm := fmt.Sprintf("vm%d", rand.IntN(guests))
				var op, method, path string
				var body any
				switch r := rand.IntN(100); {
				case r < 30:
					op, method, path = "read", "GET", "/personas"
					if r < 15 {
						path = "/instances/" + vm + "/active_persona"
					}
				case r < 45:
					op, method, path = "write", "PUT", fmt.Sprintf("/personas/own-%d", c)
					p := overridePersona(fmt.Sprintf("own-%d", c))
					p["environment_variables"] = map[string]string{"N": fmt.Sprint(rand.IntN(1000))}
					body = p
				case r < 55:
					op, method, path = "activate", "POST", "/instances/"+vm+"/personas/"+shared[rand.IntN(len(shared))]+"/activate"
				default:
					op, method, path = "exec", "POST", "/instances/"+vm+"/exec"
					body = map[string]any{"command": "deploy", "args": []string{"x"}, "timeout_seconds": 20}
				}
				start := time.Now()
				a, err := call(h.client, method, path, body)
				s := sample{op: op, d: time.Since(start), st: a.status, err: err}
				if err == nil && a.status >= 500 {
					s.err = fmt.Errorf("%s %s: %d %.300s", method, path, a.status, a.body)
				}
				mine = append(mine, s)
			}
			results <- mine
		}()
	}
	byOp := map[string][]time.Duration{}
	statuses := map[string]int{}
	var errs []string
	for c := 0; c < clients; c++ {
		for _, s := range <-results {
			byOp[s.op] = append(byOp[s.op], s.d)
			statuses[fmt.Sprintf("%s %d", s.op, s.st)]++
			if s.err != nil && len(errs) < 10 {
				errs = append(errs, s.err.Error())
			}
		}
	}
	rss, hwm := h.rssKB(t)
	var report []string
	total := 0
	for _, op := range []string{"read", "write", "activate", "exec"} {
		d := byOp[op]
		total += len(d)
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		if len(d) == 0 {
			continue
		}
		q := func(p float64) time.Duration { return d[min(len(d)-1, int(float64(len(d))*p))] }
		report = append(report, fmt.Sprintf("%s n=%d p50=%v p99=%v max=%v", op, len(d),
			q(0.5).Round(10*time.Microsecond), q(0.99).Round(10*time.Microsecond), d[len(d)-1].Round(time.Millisecond)))
	}
	keys := make([]string, 0, len(statuses))
	for k := range statuses {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	sts := make([]string, 0, len(keys))
	for _, k := range keys {
		sts = append(sts, fmt.Sprintf("%s:%d", k, statuses[k]))
	}
	t.Logf("load: %d clients, %d guests, %v: %d requests (%.0f/s); %s; statuses %s; hostd RSS %d KB → %d KB (peak %d KB)",
		clients, guests, dur, total, float64(total)/dur.Seconds(), strings.Join(report, "; "), strings.Join(sts, " "), rss0, rss, hwm)
	if len(errs) > 0 {
		t.Fatalf("errors under load (first %d):\n%s", len(errs), strings.Join(errs, "\n"))
	}
	events := 0
	for i := 0; i < guests; i++ {
		events += checkGuestAudit(t, h, fmt.Sprintf("vm%d", i), filepath.Join(gdirs[i], "state"))
	}
	t.Logf("load: %d guest audit events across %d guests, each exactly once on the host", events, guests)
}
