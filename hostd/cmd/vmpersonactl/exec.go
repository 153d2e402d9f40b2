package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// Exit codes of exec beyond the remote command's own, as shells use them.
const (
	exitTimedOut        = 124 // the guest killed the command at --timeout (as timeout(1))
	exitTruncated       = 125 // the command succeeded but its output was cut (--max-output or the guest's bound)
	exitCannotExecute   = 126 // denied by the persona, or not executable
	exitCommandNotFound = 127 // no such command in the guest
	exitSignalBase      = 128 // 128+N: killed by signal N
	exitInterrupted     = 130 // interrupted here (Ctrl-C)
)

// envFlag collects repeated --env K=V.
type envFlag map[string]string

func (e envFlag) String() string { return strings.Join(sortedPairs(e, "="), ",") }

func (e envFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	e[k] = val
	return nil
}

func execCommand() *command {
	return &command{
		name: "exec", summary: "run a command in an instance through its persona", args: "INSTANCE [--] CMD [ARG…]",
		complete: []argKind{argInstance}, ownTimeout: true, stopAfter: 2,
		long: `Runs CMD with its arguments in INSTANCE's guest, through the active
persona's routing table: an overridden command runs its override, a
restricted one is refused. Output is streamed to this program's standard
output and error as it arrives, and vmpersonactl exits with the command's
exit code (128+N when a signal N killed it, 124 when --timeout killed it).
Input and output are byte for byte: binary data, pipes and files of any
size stream through. With --stdin this program's standard input streams to
the command as the command reads it (to an older guest agent: whole, up to
4 MiB).

Output is cut only at --max-output, or with --output json at the guest's
--max-output bound (1 MiB by default). A cut output prints a warning on
standard error, and a command that succeeded then exits 125 (unless
--allow-truncated).

A command the persona denies prints "Error: Command not allowed in current
persona" and exits 126; a command that does not exist in the guest exits
127 (126 when it exists but cannot be executed). Flags after CMD belong to
CMD; put "--" before CMD when it starts with a dash.

With --output json the command runs to the end and its outcome (exit code,
output, route, persona) is printed as one JSON document; the exit code is
still the command's.

The --timeout of exec is the command's limit in the guest; the global
--timeout (given before "exec") is added to it as the wait for the daemon.`,
		example: `vmpersonactl exec vm1 -- ls -l /etc
vmpersonactl exec vm1 --env APP_ENV=prod --cwd /srv -- deploy --dry-run
echo hello | vmpersonactl exec vm1 --stdin -- cat
vmpersonactl -o json exec vm1 -- id`,
		setup: func(fs *flag.FlagSet) runner {
			env := envFlag{}
			fs.Var(env, "env", "add `KEY=VALUE` to the command's environment (repeatable)")
			fs.Var(env, "e", "short for --env")
			cwd := fs.String("cwd", "", "working `DIR` in the guest (absolute path)")
			timeout := fs.Duration("timeout", 0, "limit for the command in the guest (default: the daemon's, 30s)")
			stdin := fs.Bool("stdin", false, "send this program's standard input to the command")
			fs.BoolVar(stdin, "i", false, "short for --stdin")
			maxOutput := fs.Int("max-output", 0, "cut each output stream after `BYTES` (with -o json: at most the guest's --max-output; default: that bound, and no cut when streaming)")
			allowTrunc := fs.Bool("allow-truncated", false, "exit with the command's code even when its output was cut (default: warn and exit 125)")
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 2, -1, "INSTANCE CMD [ARG…]"); err != nil {
					return err
				}
				if *timeout < 0 {
					return usageErrorf("--timeout must not be negative")
				}
				req := apitypes.ExecRequest{
					Command: args[1], Args: args[2:], Cwd: *cwd,
					TimeoutSeconds: math.Ceil(timeout.Seconds()*1000) / 1000,
				}
				if len(env) > 0 {
					req.Env = env
				}
				var in io.Reader
				if *stdin {
					// Streamed as the command reads it, byte for byte.
					in = &inputReader{r: a.io.in}
				}
				if *maxOutput < 0 {
					return usageErrorf("--max-output must not be negative")
				}
				req.MaxOutputBytes = *maxOutput
				c, err := a.api()
				if err != nil {
					return err
				}
				var res apitypes.ExecResult
				if a.json() {
					res, err = c.ExecInput(ctx, args[0], req, in)
					if err == nil {
						err = writeJSON(a.io.out, res)
					}
				} else {
					res, err = c.ExecStreamInput(ctx, args[0], req, in, a.io.rawOut, a.io.rawErr)
				}
				if err == nil && in != nil {
					err = in.(*inputReader).failed()
				}
				if err != nil {
					return execError(ctx, a, err)
				}
				if res.StdoutTruncated || res.StderrTruncated {
					if !a.json() {
						fmt.Fprintf(a.io.err, "%s: warning: the command's output was cut (%s); use --max-output to change the bound\n", progName, truncatedStreams(res))
					}
					if code := execExit(res); code == 0 && !*allowTrunc {
						return &exitStatus{exitTruncated}
					}
				}
				if code := execExit(res); code != 0 {
					if res.Signal != "" && !res.TimedOut && !a.json() {
						fmt.Fprintf(a.io.err, "%s: command killed by signal %s\n", progName, res.Signal)
					}
					return &exitStatus{code}
				}
				return nil
			}
		},
	}
}

// inputReader is this program's standard input on its way to a command; it
// keeps a read error, which the HTTP client would take for the input's end.
type inputReader struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (r *inputReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.mu.Lock()
		if r.err == nil {
			r.err = fmt.Errorf("read standard input: %w", err)
		}
		r.mu.Unlock()
	}
	return n, err
}

// failed is the read error, if any.
func (r *inputReader) failed() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// truncatedStreams names the streams that were cut.
func truncatedStreams(res apitypes.ExecResult) string {
	switch {
	case res.StdoutTruncated && res.StderrTruncated:
		return "stdout and stderr"
	case res.StdoutTruncated:
		return "stdout"
	}
	return "stderr"
}

// execExit is the exit code for a command that ran.
func execExit(res apitypes.ExecResult) int {
	switch {
	case res.TimedOut:
		return exitTimedOut
	case res.Signal != "":
		if n, ok := signalNumber(res.Signal); ok {
			return exitSignalBase + n
		}
		return exitGeneral
	case res.ExitCode < 0 || res.ExitCode > 255:
		return exitGeneral
	}
	return res.ExitCode
}

// signalNumber reads a signal as the guest names it: "SIGKILL", "KILL",
// "killed" (Go's name) or "9".
func signalNumber(s string) (int, bool) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 128 {
		return n, true
	}
	up := strings.ToUpper(s)
	if !strings.HasPrefix(up, "SIG") {
		up = "SIG" + up
	}
	if n := unix.SignalNum(up); n != 0 {
		return int(n), true
	}
	for n := 1; n < 65; n++ {
		if syscall.Signal(n).String() == s {
			return n, true
		}
	}
	return 0, false
}

// execError maps a refused exec to the shell's exit codes and prints the
// daemon's message as it is.
func execError(ctx context.Context, a *app, err error) error {
	switch {
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		fmt.Fprintf(a.io.err, "%s: interrupted\n", progName)
		return &exitStatus{exitInterrupted}
	case errors.Is(err, apiclient.ErrCommandDenied):
		var p *apitypes.Problem
		errors.As(err, &p)
		fmt.Fprintln(a.io.err, p.Detail)
		return &exitStatus{exitCannotExecute}
	case errors.Is(err, apiclient.ErrCommandNotFound), errors.Is(err, apiclient.ErrCommandNotExecutable):
		fmt.Fprintf(a.io.err, "%s: %s\n", progName, describe(err))
		if errors.Is(err, apiclient.ErrCommandNotExecutable) {
			return &exitStatus{exitCannotExecute}
		}
		return &exitStatus{exitCommandNotFound}
	}
	return err
}
