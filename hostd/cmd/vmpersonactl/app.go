package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

const progName = "vmpersonactl"

// Exit codes. A command run with exec exits with the remote command's own
// code instead (see execExit).
const (
	exitOK          = 0
	exitGeneral     = 1 // anything else: bad input file, server error, daemon unreachable
	exitUsage       = 2 // wrong command line
	exitNotFound    = 3 // 404: no such persona or instance
	exitConflict    = 4 // 409, 412: exists, in use, default clash, activation refused, revision mismatch
	exitAuth        = 5 // 401, 403: no or unknown token, role too low
	exitUnavailable = 6 // 503, 504 or our own deadline: agent not connected, not answering
)

// stdio is the process's streams and environment, replaceable in tests.
type stdio struct {
	in     io.Reader
	out    io.Writer
	err    io.Writer
	getenv func(string) string
	// rawOut and rawErr are out and err before escaping (termsafe.go): for
	// a remote command's own output and the editor.
	rawOut, rawErr io.Writer
}

// globals are the flags every command accepts.
type globals struct {
	url       string
	socket    string
	socketSet bool
	urlSet    bool
	token     string
	tokenFile string
	cacert    string
	output    string
	noHeaders bool
	context   string
	timeout   time.Duration
}

type trackedString struct {
	p   *string
	set *bool
}

func (t trackedString) String() string {
	if t.p == nil {
		return ""
	}
	return *t.p
}
func (t trackedString) Set(v string) error { *t.p = v; *t.set = true; return nil }

func defaultGlobals(getenv func(string) string) *globals {
	g := &globals{
		url:       getenv("VMPERSONA_URL"),
		socket:    getenv("VMPERSONA_SOCKET"),
		token:     getenv("VMPERSONA_TOKEN"),
		tokenFile: getenv("VMPERSONA_TOKEN_FILE"),
		cacert:    getenv("VMPERSONA_CACERT"),
		context:   getenv("VMPERSONA_CONTEXT"),
		output:    "table",
		timeout:   apiclient.DefaultTimeout,
	}
	if g.socket == "" {
		g.socket = apiclient.DefaultSocket
	}
	return g
}

// register adds the global flags to fs. withTimeout is false for commands
// whose own --timeout means something else (exec).
func (g *globals) register(fs *flag.FlagSet, withTimeout bool) {
	fs.Var(trackedString{&g.url, &g.urlSet}, "url", "daemon `URL`, http://HOST:PORT or https://HOST:PORT (env VMPERSONA_URL)")
	fs.Var(trackedString{&g.socket, &g.socketSet}, "socket", "daemon unix socket `PATH`, used when no URL is given (env VMPERSONA_SOCKET)")
	fs.StringVar(&g.token, "token", g.token, "bearer `TOKEN` (env VMPERSONA_TOKEN; prefer --token-file: arguments are visible to other users)")
	fs.StringVar(&g.tokenFile, "token-file", g.tokenFile, "`FILE` holding the bearer token (env VMPERSONA_TOKEN_FILE)")
	fs.StringVar(&g.cacert, "cacert", g.cacert, "PEM `FILE` of the CA that signed the daemon's TLS certificate (env VMPERSONA_CACERT)")
	fs.StringVar(&g.output, "output", g.output, "output `FORMAT`: table (for people), json or yaml (for scripts)")
	fs.StringVar(&g.output, "o", g.output, "short for --output")
	fs.StringVar(&g.context, "context", g.context, "`NAME` of a context of ~/.config/vmpersona/config.yaml: the daemon to talk to (env VMPERSONA_CONTEXT)")
	fs.BoolVar(&g.noHeaders, "no-headers", g.noHeaders, "print tables without their header line")
	if withTimeout {
		fs.DurationVar(&g.timeout, "timeout", g.timeout, "how long to wait for the daemon, beyond an activation's or a command's own limits")
	}
}

// app is one invocation.
type app struct {
	io     *stdio
	g      *globals
	client *apiclient.Client
}

// header is a table's header, or none with --no-headers.
func (a *app) header(names ...string) []string {
	if a.g.noHeaders {
		return nil
	}
	return names
}

// json reports whether the output is for programs (-o json or -o yaml).
func (a *app) json() bool { return a.g.output == "json" || a.g.output == "yaml" }

// api returns the client, built from the global flags on first use.
func (a *app) api() (*apiclient.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	g := a.g
	if err := g.applyContext(a.io.getenv); err != nil {
		return nil, err
	}
	cfg := apiclient.Config{Timeout: g.timeout, UserAgent: progName + "/" + protocol.SoftwareVersion}
	switch {
	case g.urlSet && g.socketSet:
		return nil, usageErrorf("give --url or --socket, not both")
	case g.socketSet:
		cfg.URL = "unix:" + g.socket
	case g.url != "":
		cfg.URL = g.url
	default:
		cfg.URL = "unix:" + g.socket
	}
	cfg.Token = g.token
	if g.tokenFile != "" {
		b, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read token file: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
		if cfg.Token == "" {
			return nil, fmt.Errorf("token file %s is empty", g.tokenFile)
		}
	}
	if g.cacert != "" {
		pem, err := os.ReadFile(g.cacert)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", g.cacert)
		}
		cfg.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c, err := apiclient.New(cfg)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	a.client = c
	return c, nil
}

// command is a node of the command tree: a group (subs) or a leaf (setup).
type command struct {
	name    string
	summary string // one line, for lists
	args    string // positional arguments for the usage line, e.g. "NAME"
	long    string // what it does, for --help
	example string // one or more example lines
	subs    []*command
	hidden  bool
	// setup registers the leaf's flags on fs and returns its runner.
	setup func(fs *flag.FlagSet) runner
	// ownTimeout: the command's --timeout is its own (exec).
	ownTimeout bool
	// stopAfter: after this many positional arguments, everything else is
	// positional too (exec: INSTANCE CMD ARGS…). 0: flags may follow any
	// argument. Negative: no flags, every argument is positional.
	stopAfter int
	// complete names what each positional argument is, for completion.
	complete []argKind
	parent   *command
}

type runner func(ctx context.Context, a *app, args []string) error

func (c *command) path() string {
	if c.parent == nil {
		return c.name
	}
	return c.parent.path() + " " + c.name
}

func (c *command) find(name string) *command {
	for _, s := range c.subs {
		if s.name == name {
			return s
		}
	}
	return nil
}

func link(c *command) *command {
	for _, s := range c.subs {
		s.parent = c
		link(s)
	}
	return c
}

// usageError is a wrong command line: exit 2 with a pointer to --help.
type usageError struct {
	msg string
	cmd *command
}

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, a ...any) error {
	return &usageError{msg: fmt.Sprintf(format, a...)}
}

// exitStatus ends the program with code, printing nothing more.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, sio *stdio) int {
	g := defaultGlobals(sio.getenv)
	safe := *sio
	safe.rawOut, safe.rawErr = sio.out, sio.err
	safe.out, safe.err = termSafe(sio.out), termSafe(sio.err)
	a := &app{io: &safe, g: g}
	defer func() {
		if a.client != nil {
			a.client.Close()
		}
	}()
	root := rootCommand()
	err := dispatch(ctx, a, root, args)
	return report(a, err)
}

// dispatch walks the command tree: group levels take global flags and a
// subcommand name; the leaf parses its flags (anywhere among its
// arguments) and runs.
func dispatch(ctx context.Context, a *app, root *command, args []string) error {
	cmd := root
	for cmd.subs != nil {
		fs := newFlagSet(cmd)
		a.g.register(fs, true)
		version := false
		if cmd.parent == nil {
			fs.BoolVar(&version, "version", false, "print the client's version and exit")
		}
		err := fs.Parse(args)
		if err == nil && version {
			_, err = fmt.Fprintf(a.io.out, "%s %s\n", progName, protocol.SoftwareVersion)
			return err
		}
		if err != nil {
			if errors.Is(err, flag.ErrHelp) {
				printHelp(a.io.out, cmd, a.g)
				return nil
			}
			return &usageError{msg: flagErrText(err, args), cmd: cmd}
		}
		args = fs.Args()
		if len(args) == 0 {
			printHelp(a.io.err, cmd, a.g)
			return &exitStatus{exitUsage}
		}
		if args[0] == "help" {
			return helpCommand(a, cmd, args[1:])
		}
		next := cmd.find(args[0])
		if next == nil {
			return &usageError{msg: fmt.Sprintf("unknown command %q%s", args[0], suggest(cmd, args[0])), cmd: cmd}
		}
		cmd, args = next, args[1:]
	}
	fs := newFlagSet(cmd)
	a.g.register(fs, !cmd.ownTimeout)
	runFn := cmd.setup(fs)
	pos, err := args, error(nil)
	if cmd.stopAfter >= 0 {
		pos, err = parseInterspersed(fs, args, cmd.stopAfter)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(a.io.out, cmd, a.g)
			return nil
		}
		return &usageError{msg: flagErrText(err, args), cmd: cmd}
	}
	switch a.g.output {
	case "table", "json":
	case "yaml":
		a.io.out = yamlOut{a.io.out}
	default:
		return &usageError{msg: fmt.Sprintf("--output %q: want table, json or yaml", a.g.output), cmd: cmd}
	}
	err = runFn(ctx, a, pos)
	var ue *usageError
	if errors.As(err, &ue) && ue.cmd == nil {
		ue.cmd = cmd
	}
	return err
}

func newFlagSet(cmd *command) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd.path(), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseInterspersed parses flags that may stand before, between or after
// positional arguments; "--" ends the flags. With stopAfter > 0, once that
// many positional arguments are seen the rest is taken as it is.
func parseInterspersed(fs *flag.FlagSet, args []string, stopAfter int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
		if stopAfter > 0 && len(pos) >= stopAfter {
			return append(pos, args...), nil
		}
	}
}

func suggest(cmd *command, name string) string {
	var names []string
	for _, s := range cmd.subs {
		if !s.hidden {
			names = append(names, s.name)
		}
	}
	for _, n := range names {
		if strings.HasPrefix(n, name) || strings.HasPrefix(name, n) {
			return fmt.Sprintf("; did you mean %q?", n)
		}
	}
	// A typo: the closest name within two edits (persnoa, instanes).
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(name, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best != "" {
		return fmt.Sprintf("; did you mean %q?", best)
	}
	return "; commands: " + strings.Join(names, ", ")
}

// editDistance is the Damerau–Levenshtein distance (with adjacent
// transpositions) between a and b.
func editDistance(a, b string) int {
	x, y := []rune(a), []rune(b)
	d := make([][]int, len(x)+1)
	for i := range d {
		d[i] = make([]int, len(y)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(x); i++ {
		for j := 1; j <= len(y); j++ {
			cost := 1
			if x[i-1] == y[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && x[i-1] == y[j-2] && x[i-2] == y[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(x)][len(y)]
}

// flagErrText is the flag package's complaint with the flag written as the
// user wrote it ("--bogus", not "-bogus").
func flagErrText(err error, args []string) string {
	msg := err.Error()
	for _, prefix := range []string{"flag provided but not defined: -", "flag needs an argument: -", "bad flag syntax: -"} {
		name, ok := strings.CutPrefix(msg, prefix)
		if !ok {
			continue
		}
		for _, a := range args {
			if a == "--" {
				break
			}
			typed, _, _ := strings.Cut(a, "=")
			if strings.TrimLeft(typed, "-") == name && strings.HasPrefix(typed, "--") {
				return strings.Replace(msg, "-"+name, typed, 1)
			}
		}
	}
	if n, ok := strings.CutPrefix(msg, "invalid value "); ok {
		for _, a := range args {
			if typed, _, _ := strings.Cut(a, "="); strings.HasPrefix(typed, "--") && strings.Contains(n, " for flag -"+strings.TrimLeft(typed, "-")+":") {
				return strings.Replace(msg, " for flag -"+strings.TrimLeft(typed, "-")+":", " for flag "+typed+":", 1)
			}
		}
	}
	return msg
}

// helpCommand answers "help [command…]".
func helpCommand(a *app, from *command, path []string) error {
	cmd := from
	for _, n := range path {
		next := cmd.find(n)
		if next == nil {
			return &usageError{msg: fmt.Sprintf("unknown command %q", n), cmd: cmd}
		}
		cmd = next
	}
	printHelp(a.io.out, cmd, a.g)
	return nil
}

// report prints err and returns the exit code it stands for.
func report(a *app, err error) int {
	if err == nil {
		return exitOK
	}
	var es *exitStatus
	if errors.As(err, &es) {
		return es.code
	}
	w := a.io.err
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "%s: %s\n", progName, ue.msg)
		path := progName
		if ue.cmd != nil {
			path = ue.cmd.path()
		}
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", path)
		return exitUsage
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(w, "%s: interrupted\n", progName)
		return exitInterrupted
	}
	fmt.Fprintf(w, "%s: %s\n", progName, describe(err))
	return exitCode(err)
}

// describe renders an error for people.
func describe(err error) string {
	var um userMessager
	if errors.As(err, &um) {
		return um.userMessage()
	}
	var p *apitypes.Problem
	if errors.As(err, &p) {
		title := p.Title
		if title == "" {
			title = fmt.Sprintf("HTTP %d", p.Status)
		}
		if p.Detail == "" || p.Detail == title {
			return title
		}
		detail := p.Detail
		if strings.HasPrefix(strings.ToLower(detail), strings.ToLower(title)+": ") {
			detail = detail[len(title)+2:] // "Agent not connected: agent not connected: …" said once
		}
		return title + ": " + detail
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return err.Error() + " (the daemon did not answer in time; see --timeout)"
	}
	var te *apiclient.TransportError
	if errors.As(err, &te) && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) && strings.HasPrefix(te.Target, "unix:") {
		return err.Error() + "\nIs the daemon running? Start it with: sudo systemctl start vmpersona-hostd.socket"
	}
	return err.Error()
}

// userMessager is an error that composed its own message for people.
type userMessager interface {
	error
	userMessage() string
}

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	switch {
	case errors.Is(err, apiclient.ErrNotFound):
		return exitNotFound
	case errors.Is(err, apiclient.ErrConflict), errors.Is(err, apiclient.ErrPreconditionFailed):
		return exitConflict
	case errors.Is(err, apiclient.ErrUnauthorized), errors.Is(err, apiclient.ErrForbidden):
		return exitAuth
	case errors.Is(err, apiclient.ErrUnavailable), errors.Is(err, apiclient.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded):
		return exitUnavailable
	}
	return exitGeneral
}

// printHelp writes a command's help: what it does, usage, example, flags.
func printHelp(w io.Writer, cmd *command, g *globals) {
	fmt.Fprintf(w, "%s — %s\n\n", cmd.path(), cmd.summary)
	fmt.Fprintln(w, "Usage:")
	if cmd.subs != nil {
		fmt.Fprintf(w, "  %s COMMAND [flags]\n", cmd.path())
	}
	if cmd.setup != nil {
		line := cmd.path()
		if cmd.args != "" {
			line += " " + cmd.args
		}
		fmt.Fprintf(w, "  %s [flags]\n", line)
	}
	if cmd.long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(cmd.long))
	}
	if cmd.subs != nil {
		fmt.Fprintln(w, "\nCommands:")
		width := 0
		for _, s := range cmd.subs {
			if !s.hidden {
				width = max(width, len(s.name))
			}
		}
		for _, s := range cmd.subs {
			if !s.hidden {
				fmt.Fprintf(w, "  %-*s  %s\n", width, s.name, s.summary)
			}
		}
	}
	if cmd.example != "" {
		fmt.Fprintln(w, "\nExample:")
		for _, l := range strings.Split(strings.TrimSpace(cmd.example), "\n") {
			fmt.Fprintf(w, "  %s\n", strings.TrimSpace(l))
		}
	}
	if cmd.setup != nil {
		fs := newFlagSet(cmd)
		cmd.setup(fs)
		if lines := flagLines(fs); len(lines) > 0 {
			fmt.Fprintln(w, "\nFlags:")
			for _, l := range lines {
				fmt.Fprintln(w, l)
			}
		}
	}
	gfs := newFlagSet(cmd)
	defaultGlobals(func(string) string { return "" }).register(gfs, !cmd.ownTimeout)
	fmt.Fprintln(w, "\nGlobal flags:")
	for _, l := range flagLines(gfs) {
		fmt.Fprintln(w, l)
	}
	if cmd.subs != nil {
		fmt.Fprintf(w, "\nRun '%s COMMAND --help' for a command's help.\n", cmd.path())
	}
	if cmd.parent == nil {
		fmt.Fprint(w, exitCodeHelp)
	}
}

const exitCodeHelp = `
Exit codes:
  0  success            3  not found                   6  agent unavailable or timed out
  1  other failure      4  conflict or stale revision
  2  wrong usage        5  unauthorized or forbidden
  exec exits with the remote command's code: 128+N for signal N, 124 when
  it timed out, 125 when it succeeded but its output was cut, 126 when the
  persona denies it or it is not executable, 127 when it does not exist in
  the guest.
`

// flagLines renders a flag set as "  -o, --output VALUE   usage (default x)".
func flagLines(fs *flag.FlagSet) []string {
	type entry struct{ names, usage string }
	var entries []entry
	aliases := map[string]string{} // long name → short alias
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, "short for --") {
			aliases[strings.TrimPrefix(f.Usage, "short for --")] = f.Name
		}
	})
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, "short for --") {
			return
		}
		valName, usage := flag.UnquoteUsage(f)
		names := "--" + f.Name
		if s, ok := aliases[f.Name]; ok {
			names = "-" + s + ", " + names
		} else {
			names = "    " + names
		}
		if valName != "" {
			names += " " + strings.ToUpper(valName)
		}
		if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "0s" && d != "[]" {
			usage += fmt.Sprintf(" (default %s)", d)
		}
		entries = append(entries, entry{names, usage})
	})
	sort.SliceStable(entries, func(i, j int) bool {
		return strings.TrimLeft(entries[i].names, " -,") < strings.TrimLeft(entries[j].names, " -,")
	})
	width := 0
	for _, e := range entries {
		width = max(width, len(e.names))
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, fmt.Sprintf("  %-*s  %s", width, e.names, e.usage))
	}
	return out
}

// wantArgs checks the number of positional arguments.
func wantArgs(args []string, min, max int, names string) error {
	switch {
	case len(args) < min:
		return usageErrorf("missing argument: want %s", names)
	case max >= 0 && len(args) > max:
		return usageErrorf("unexpected argument %q: want %s", args[max], names)
	}
	return nil
}
