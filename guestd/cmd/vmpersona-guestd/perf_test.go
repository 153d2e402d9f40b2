package main_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
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
// sends a heartbeat every second, which the daemon answers).
func BenchmarkIdle(b *testing.B) {
	e := newEnv(b)
	d := e.start("--log-level", "info")
	e.connect(nil)
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
		sw0, cpu0, _ := taskCounters(pid)
		t0 := time.Now()
		time.Sleep(window)
		sw1, cpu1, _ := taskCounters(pid)
		sw += sw1 - sw0
		cpu += cpu1 - cpu0
		total += time.Since(t0)
	}
	b.StopTimer()
	_, _, threads := taskCounters(pid)
	b.ReportMetric(float64(sw)/total.Seconds(), "ctxsw/s")
	b.ReportMetric(float64(cpu.Microseconds())/total.Seconds(), "cpu-us/s")
	b.ReportMetric(float64(threads), "threads")
}
