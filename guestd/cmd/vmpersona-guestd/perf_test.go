package main_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// taskCounters reads the context switches (voluntary and not) of pid's
// live threads (those of ended threads are lost), its CPU
// time, user and system (/proc/PID/stat, ended threads included), and how
// many threads it has now.
func taskCounters(pid int) (ctxsw int64, cpu time.Duration, threads int) {
	proc := "/proc/" + strconv.Itoa(pid)
	ents, _ := os.ReadDir(proc + "/task")
	for _, e := range ents {
		threads++
		data, _ := os.ReadFile(proc + "/task/" + e.Name() + "/status")
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":")
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				ctxsw += n
			}
		}
	}
	if data, err := os.ReadFile(proc + "/stat"); err == nil {
		// Fields after the command name (which may hold spaces): utime
		// and stime are the 14th and 15th of the line.
		if i := strings.LastIndexByte(string(data), ')'); i > 0 {
			f := strings.Fields(string(data[i+1:]))
			if len(f) > 13 {
				u, _ := strconv.ParseInt(f[11], 10, 64)
				s, _ := strconv.ParseInt(f[12], 10, 64)
				cpu = time.Duration(u+s) * 10 * time.Millisecond // USER_HZ = 100
			}
		}
	}
	return ctxsw, cpu, threads
}

func p50(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkExecVsSpawn runs, alternately in one loop, an audited exec of
// /bin/true through the daemon (as hostd asks for it: audit_exec on, the
// audit batch answered by the client) and a bare os/exec spawn of the same
// file, and reports both p50s, their ratio, and the daemon's CPU time and
// context switches (all its threads) per exec.
func BenchmarkExecVsSpawn(b *testing.B) {
	e := newEnv(b)
	d := e.start("--log-level", "info")
	c := e.connect(nil)
	mustActivate(e.t, c, protocol.Persona{Name: "bench", RestrictedCommands: []string{"rm", "shutdown"},
		EnvironmentVariables: map[string]string{"APP_ENV": "bench"}})
	audit := os.Getenv("BENCH_AUDIT") != "0"
	req := protocol.Exec{Command: "/bin/true", AuditExec: &audit}
	pid := d.Cmd.Process.Pid
	if f := os.Getenv("BENCH_PIDFILE"); f != "" {
		os.WriteFile(f, []byte(strconv.Itoa(pid)), 0o644)
	}
	var ours, bare []time.Duration
	var cpu time.Duration
	var sw int64
	b.ResetTimer()
	for b.Loop() {
		sw0, cpu0, _ := taskCounters(pid)
		t0 := time.Now()
		var res protocol.ExecResult
		if err := c.Call(context.Background(), protocol.TypeExec, req, &res, nil); err != nil {
			b.Fatal(err)
		}
		ours = append(ours, time.Since(t0))
		sw1, cpu1, _ := taskCounters(pid)
		sw += sw1 - sw0
		cpu += cpu1 - cpu0
		t0 = time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		bare = append(bare, time.Since(t0))
	}
	b.StopTimer()
	_, _, threads := taskCounters(pid)
	n := float64(len(ours))
	b.ReportMetric(float64(p50(ours).Microseconds()), "ours-p50-us")
	b.ReportMetric(float64(p50(bare).Microseconds()), "bare-p50-us")
	b.ReportMetric(float64(p50(ours))/float64(p50(bare)), "ratio")
	b.ReportMetric(float64(cpu.Microseconds())/n, "guestd-cpu-us/exec")
	b.ReportMetric(float64(sw)/n, "guestd-ctxsw/exec")
	b.ReportMetric(float64(threads), "threads")
}

// BenchmarkIdle reports the context switches per second and the CPU a
// connected daemon with no traffic makes over all its threads (the client
// sends a heartbeat every second, which the daemon answers;
// BENCH_HEARTBEAT=30s leaves the daemon's own wakeups alone in a 10 s
// window).
func BenchmarkIdle(b *testing.B) {
	e := newEnv(b)
	d := e.start("--log-level", "info")
	hb := time.Second
	if s := os.Getenv("BENCH_HEARTBEAT"); s != "" {
		hb, _ = time.ParseDuration(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := protocol.Handshake(ctx, e.dial(), protocol.ClientConfig{HostVersion: "test", Heartbeat: hb, OnAudit: newAuditLog(0).onAudit})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(nil)
	pid := d.Cmd.Process.Pid
	time.Sleep(time.Second)
	window := 10 * time.Second
	if s := os.Getenv("IDLE_WINDOW"); s != "" {
		window, _ = time.ParseDuration(s)
	}
	b.ResetTimer()
	var sw int64
	var cpu time.Duration
	var total time.Duration
	for b.Loop() {
		sw0, _, _ := taskCounters(pid)
		cpu0 := liveCPU(pid)
		t0 := time.Now()
		time.Sleep(window)
		sw1, _, _ := taskCounters(pid)
		cpu1 := liveCPU(pid)
		sw += sw1 - sw0
		cpu += cpu1 - cpu0
		total += time.Since(t0)
	}
	b.StopTimer()
	_, _, threads := taskCounters(pid)
	if os.Getenv("BENCH_THREADS") != "" {
		b.Logf("per thread (tid: context switches, CPU ns) at the end: %v", perThread(pid))
	}
	b.ReportMetric(float64(sw)/total.Seconds(), "ctxsw/s")
	b.ReportMetric(float64(cpu.Microseconds())/total.Seconds(), "cpu-us/s")
	b.ReportMetric(float64(threads), "threads")
}

// perThread lists each live thread's context switches and CPU time.
func perThread(pid int) []string {
	proc := "/proc/" + strconv.Itoa(pid) + "/task/"
	ents, _ := os.ReadDir(proc)
	var out []string
	for _, e := range ents {
		data, _ := os.ReadFile(proc + e.Name() + "/status")
		var sw int64
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(line, ":")
			if k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches" {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				sw += n
			}
		}
		st, _ := os.ReadFile(proc + e.Name() + "/schedstat")
		f := strings.Fields(string(st))
		out = append(out, e.Name()+": "+strconv.FormatInt(sw, 10)+" "+strings.Join(f[:min(1, len(f))], ""))
	}
	return out
}

// liveCPU sums the CPU time of pid's live threads (schedstat, in ns: finer
// than /proc/PID/stat's 10 ms ticks).
func liveCPU(pid int) time.Duration {
	proc := "/proc/" + strconv.Itoa(pid) + "/task/"
	ents, _ := os.ReadDir(proc)
	var t time.Duration
	for _, e := range ents {
		st, _ := os.ReadFile(proc + e.Name() + "/schedstat")
		if f := strings.Fields(string(st)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			t += time.Duration(n)
		}
	}
	return t
}

// BenchmarkExec32 runs /bin/true with 32 in flight, through the daemon
// (audited, as hostd asks) and spawned directly, in alternating one-second
// segments, and reports both rates, their ratio and the daemon's CPU time
// per exec (all its threads, during its segments).
func BenchmarkExec32(b *testing.B) {
	e := newEnv(b)
	d := e.start("--log-level", "info")
	c := e.connect(nil)
	pid := d.Cmd.Process.Pid
	audit := os.Getenv("BENCH_AUDIT") != "0"
	req := protocol.Exec{Command: "/bin/true", AuditExec: &audit}
	var done int64 // runs in the last segment
	segment := func(fn func() error) float64 {
		stop := time.Now().Add(time.Second)
		var n atomic.Int64
		defer func() { done = n.Load() }()
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					if err := fn(); err != nil {
						b.Error(err)
						return
					}
					n.Add(1)
				}
			}()
		}
		t0 := time.Now()
		wg.Wait()
		return float64(n.Load()) / time.Since(t0).Seconds()
	}
	ours := func() error {
		var res protocol.ExecResult
		return c.Call(context.Background(), protocol.TypeExec, req, &res, nil)
	}
	bare := func() error { return exec.Command("/bin/true").Run() }
	var o, r float64
	var cpu time.Duration
	var execs int64
	b.ResetTimer()
	for b.Loop() {
		_, cpu0, _ := taskCounters(pid)
		o += segment(ours)
		_, cpu1, _ := taskCounters(pid)
		cpu += cpu1 - cpu0
		execs += done
		r += segment(bare)
	}
	b.ReportMetric(o/float64(b.N), "ours-exec/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(max(execs, 1)), "guestd-cpu-us/exec")
	b.ReportMetric(r/float64(b.N), "spawn/s")
	b.ReportMetric(o/r, "ratio")
}
