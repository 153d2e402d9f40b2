package main_test

// What a restriction guarantees, through the real daemon on a unix socket:
// the file run is the file checked, request environment is policy, nothing
// an exec starts outlives it.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// dotdotTree lays out root/p/sub (a directory), root/p/foo (a harmless
// command) and root/links with x -> root/p/sub and foo, a hard link to the
// restricted test command "danger". links/x/../foo is root/p/foo for the
// kernel; cleaned as text it is links/foo, the restricted file.
func dotdotTree(t *testing.T, e *env) (links string) {
	t.Helper()
	p := filepath.Join(e.root, "p")
	links = filepath.Join(e.root, "links")
	for _, err := range []error{
		os.MkdirAll(filepath.Join(p, "sub"), 0o755),
		os.WriteFile(filepath.Join(p, "foo"), []byte("#!/bin/sh\necho harmless\n"), 0o755),
		os.Symlink(filepath.Join(p, "sub"), filepath.Join(links, "x")),
		os.Link(filepath.Join(e.bin, "danger"), filepath.Join(links, "foo")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return links
}

func TestRunsTheFileRouted(t *testing.T) {
	e := newEnv(t)
	links := dotdotTree(t, e)
	e.start()
	c := e.connect(nil)
	mustActivate(t, c, protocol.Persona{Name: "locked", RestrictedCommands: []string{"danger"}})
	for _, req := range []protocol.Exec{
		{Command: "x/../foo", Cwd: links},
		{Command: links + "/x/../foo"},
		{Command: "./foo", Cwd: links + "/x/.."},
	} {
		res := mustRun(t, c, req)
		if strings.Contains(res.Stdout, "DANGER") || strings.TrimSpace(res.Stdout) != "harmless" {
			t.Errorf("%q in %q ran %q, want the file routed (harmless)", req.Command, req.Cwd, res.Stdout)
		}
	}
	if _, err := run(t, c, protocol.Exec{Command: links + "/foo"}); errCode(err) != protocol.CodeDenied {
		t.Fatalf("the hard link itself: %v", err)
	}
}

// An allowlist persona: an allowed name reached through ".." after a link
// must not run what the text names.
func TestAllowlistDotDotEscape(t *testing.T) {
	e := newEnv(t)
	links := dotdotTree(t, e)
	e.start()
	c := e.connect(nil)
	mustActivate(t, c, protocol.Persona{Name: "allow", AllowedCommands: []string{filepath.Join(e.root, "p", "foo")}})
	res, err := run(t, c, protocol.Exec{Command: "x/../foo", Cwd: links})
	if err == nil && strings.Contains(res.Stdout, "DANGER") {
		t.Fatalf("allowlist escaped through ..: %q", res.Stdout)
	}
	if err != nil {
		t.Fatalf("the allowed file itself: %v", err)
	}
}

// A symbolic link flipped between a harmless and a restricted file while
// execs run: the restricted one never runs.
func TestSymlinkFlipRace(t *testing.T) {
	e := newEnv(t)
	harmless := e.script("harmless", "#!/bin/sh\necho harmless\n")
	danger := filepath.Join(e.bin, "danger")
	flip := filepath.Join(e.root, "links", "flip")
	if err := os.Symlink(harmless, flip); err != nil {
		t.Fatal(err)
	}
	e.start()
	c := e.connect(nil)
	mustActivate(t, c, protocol.Persona{Name: "locked", RestrictedCommands: []string{"danger"}})

	stop := make(chan struct{})
	var flipper sync.WaitGroup
	flipper.Add(1)
	go func() {
		defer flipper.Done()
		tmp := flip + ".new"
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			target := harmless
			if i%2 == 1 {
				target = danger
			}
			os.Remove(tmp)
			if os.Symlink(target, tmp) == nil {
				os.Rename(tmp, flip)
			}
		}
	}()
	const tries = 500
	var ran, denied, harmlessRuns atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < tries; i += 4 {
				res, err := run(t, c, protocol.Exec{Command: flip})
				switch {
				case err != nil && errCode(err) == protocol.CodeDenied:
					denied.Add(1)
				case err != nil:
					// not found: caught between remove and rename
				case strings.Contains(res.Stdout, "DANGER"):
					ran.Add(1)
				default:
					harmlessRuns.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	flipper.Wait()
	t.Logf("%d tries: %d denied, %d harmless, %d restricted runs", tries, denied.Load(), harmlessRuns.Load(), ran.Load())
	if ran.Load() != 0 {
		t.Fatalf("the restricted command ran %d times out of %d", ran.Load(), tries)
	}
	if denied.Load() == 0 || harmlessRuns.Load() == 0 {
		t.Fatalf("the race was not exercised: %d denied, %d harmless", denied.Load(), harmlessRuns.Load())
	}
}

func TestRequestEnvironmentIsPolicy(t *testing.T) {
	_, c := startConnected(t)
	mustActivate(t, c, protocol.Persona{Name: "p", RequestEnv: []string{"PYTHONPATH"}})
	for _, k := range []string{"BASH_ENV", "ENV", "LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "IFS", "SHELLOPTS", "PS4",
		"PERL5OPT", "RUBYOPT", "NODE_OPTIONS", "GCONV_PATH", "PYTHONSTARTUP", "BASH_FUNC_ls%%"} {
		_, err := run(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "echo ran"}, Env: map[string]string{k: "/proc/self/fd/0", "OK": "1"}})
		if errCode(err) != protocol.CodeBadRequest || !strings.Contains(err.Error(), k) {
			t.Errorf("%s: want bad_request naming it, got %v", k, err)
		}
	}
	// BASH_ENV pointing at stdin would run it as a script.
	if res, err := run(t, c, protocol.Exec{Command: "bash", Args: []string{"-c", "true"}, Env: map[string]string{"BASH_ENV": "/proc/self/fd/0"},
		Stdin: []byte("echo INJECTED\n")}); err == nil || strings.Contains(res.Stdout, "INJECTED") {
		t.Fatalf("BASH_ENV reached bash: %v %q", err, res.Stdout)
	}
	// Named in request_env: accepted; ordinary variables always are.
	res := mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "echo $PYTHONPATH $APP"}, Env: map[string]string{"PYTHONPATH": "/x", "APP": "y"}})
	if strings.TrimSpace(res.Stdout) != "/x y" {
		t.Fatalf("accepted variables: %q", res.Stdout)
	}
}

func alive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z"
}

// A daemon started with setsid leaves the exec's process group; it is
// still killed when the exec times out (its cgroup).
// waitGone waits for the process whose pid the file holds to end (it is
// killed when the test ends if it does not).
func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	t.Cleanup(func() {
		if alive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	testproc.WaitFor(t, fmt.Sprintf("the setsid daemon %d to end with its exec", pid), func() bool { return !alive(pid) })
}

func TestNothingOutlivesAnExec(t *testing.T) {
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err != nil {
		if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err != nil {
			t.Skip("no cgroup v2 mounted on this machine: processes that leave their group can outlive an exec here")
		}
	}
	e, c := startConnected(t)
	pidFile := filepath.Join(e.root, "daemon.pid")
	res := mustRun(t, c, protocol.Exec{
		Command:       "sh",
		Args:          []string{"-c", "setsid sh -c 'echo $$ > " + pidFile + "; exec sleep 1000' & sleep 1000"},
		TimeoutMillis: 2000,
	})
	if !res.TimedOut {
		t.Fatalf("want a timeout, got %+v", res)
	}
	waitGone(t, pidFile)
	// Also when the exec ends by itself.
	os.Remove(pidFile)
	mustRun(t, c, protocol.Exec{Command: "sh", Args: []string{"-c", "setsid sh -c 'echo $$ > " + pidFile + "; exec sleep 1000' & sleep 0.2"}})
	waitGone(t, pidFile)
}
