// Command vmpersona-guestd is the vmpersona guest daemon: it applies the
// personas the host daemon sends and runs commands through the active
// persona's routing table. See --help.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/guestd/server"
	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/sysenv"
	"github.com/vmpersona/vmpersona/guestd/transport"
	"github.com/vmpersona/vmpersona/internal/ktimer"
	"github.com/vmpersona/vmpersona/protocol"
)

const usage = `NAME
    vmpersona-guestd - the vmpersona guest daemon

SYNOPSIS
    vmpersona-guestd [--listen ENDPOINT] [--state-dir DIR] [OPTIONS]

DESCRIPTION
    vmpersona-guestd runs inside a virtual machine. The host daemon
    (vmpersona-hostd) reaches it over one byte stream and asks it to activate
    personas and to run commands.

    Activating a persona runs its pre-activation script (a failure aborts
    with nothing changed), replaces the environment given to commands with
    the daemon's base environment plus the persona's variables, swaps the
    routing table (restricted commands, overrides, optional allowlist), runs
    the post-activation script (a failure rolls everything back), writes the
    variables to the login-shell profile file and persists the persona in the
    state directory before answering. After a restart or a reboot the same
    persona is active again; its scripts are not re-run.

    Where systemd is the service manager, the persona's variables (except
    its secret_variables) are also set in systemd's environment
    (systemctl set-environment), so services started after an activation
    see them, and the previous persona's are removed; after a reboot
    vmpersona-guestd-environment.service sets them again before
    sysinit.target (--sync-service-env).

    Commands run without a shell, in their own process group, with a timeout
    and bounded output. A restricted command is refused before any process
    starts, however it is named (a name, an absolute path, /bin or /usr/bin,
    ./name, a symbolic or hard link): commands are resolved through the
    guest's own PATH, never one sent with the request. The file checked is
    the file run (opened once). Where the kernel has Landlock, every
    process an exec starts runs in a domain built at activation that
    refuses to execute the restricted files (or all but the allowed ones).
    Each exec runs in a cgroup of its own (cgroup v2) that is killed when it
    ends. A request may not set loader, shell or interpreter start-up
    variables (LD_*, BASH_ENV, PATH, ...) unless the persona's request_env
    names them.

    Activations, deactivations, override uses, denials and every exec (as the
    persona's audit_exec, else the host, else --audit-exec says) are audit events, spooled in the state directory until the
    host acknowledges them, and logged to stderr.

OPTIONS
    --listen ENDPOINT
        virtio-serial:NAME  the virtio-serial port NAME, found as
                            /dev/virtio-ports/NAME or, without udev, by
                            scanning /sys/class/virtio-ports/*/name; the
                            daemon waits for the port to appear
        vsock:PORT          an AF_VSOCK listener on PORT (the contract's
                            port is 7070)
        unix:PATH           a unix socket (mode 0600); one host connection
                            at a time, a new one replaces the old
        Default: virtio-serial:org.vmpersona.agent.0
    --state-dir DIR
        Active persona, materialised scripts and the audit spool.
        Default: /var/lib/vmpersona-guest
    --run-dir DIR
        Runtime files: the links through which commands are executed, so
        that ps, top and pgrep list each under its name (the file run is
        still the one the routing table checked). Commands run as another
        user use them only when every directory down to DIR is searchable
        by others (the systemd unit: /run/vmpersona-guest).
        Default: STATE-DIR/run
    --profile-file FILE
        The persona's variables as shell export lines, for login shells;
        removed on deactivation; empty disables it.
        Default: /etc/profile.d/vmpersona.sh
    --max-exec N            concurrent commands (default 16); up to 4N
                            more wait for a slot within their own
                            timeout, then are answered busy; beyond
                            that, busy at once
    --max-output BYTES      per-stream output bound of a command
                            (default 1048576); longer output is truncated
    --exec-timeout DUR      default command timeout (default 30s)
    --script-timeout DUR    default persona script timeout (default 5m)
    --audit-exec            audit every command, not only overrides and
                            denials, when neither the persona nor the host
                            says (hosts ask for it by default)
    --audit-max-events N    spool bound in events (default 10000)
    --audit-max-bytes N     spool bound in bytes (default 8388608); when
                            full the oldest unacknowledged events are dropped
                            and the drop is logged
    --log-level LEVEL       debug, info, warn or error (default info)
    --sync-service-env      set the persisted persona's variables in
                            systemd's environment and exit (at boot, from
                            vmpersona-guestd-environment.service); does
                            nothing where systemd is not running
    --version               print the version and exit
    --help                  print this text and exit

SYSTEMD
    With Type=notify the daemon sends READY=1 once it listens, and
    WATCHDOG=1 at half of WatchdogSec when a watchdog is set.

FILES
    /var/lib/vmpersona-guest/state.log          the active persona (checksummed records)
    /var/lib/vmpersona-guest/audit-spool.jsonl  unacknowledged audit events
    /var/lib/vmpersona-guest/audit-meta.json    spool id, acknowledged sequence
    /etc/profile.d/vmpersona.sh                 the persona's environment

EXIT STATUS
    0 after SIGTERM or SIGINT; 1 on a startup error; 2 on bad flags.
`

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("vmpersona-guestd", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	listen := fs.String("listen", transport.DefaultEndpoint, "")
	stateDir := fs.String("state-dir", "/var/lib/vmpersona-guest", "")
	runDir := fs.String("run-dir", "", "")
	profile := fs.String("profile-file", "/etc/profile.d/vmpersona.sh", "")
	maxExec := fs.Int("max-exec", 16, "")
	maxOutput := fs.Int("max-output", execute.DefaultMaxOutput, "")
	execTimeout := fs.Duration("exec-timeout", execute.DefaultTimeout, "")
	scriptTimeout := fs.Duration("script-timeout", activation.DefaultScriptTimeout, "")
	auditExec := fs.Bool("audit-exec", false, "")
	auditMaxEvents := fs.Int("audit-max-events", audit.DefaultMaxEvents, "")
	auditMaxBytes := fs.Int("audit-max-bytes", audit.DefaultMaxBytes, "")
	logLevel := fs.String("log-level", "info", "")
	syncServiceEnv := fs.Bool("sync-service-env", false, "")
	version := fs.Bool("version", false, "")
	help := fs.Bool("help", false, "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *help {
		fmt.Print(usage)
		return 0
	}
	if *version {
		fmt.Println("vmpersona-guestd", protocol.SoftwareVersion, "protocol", protocol.Version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "vmpersona-guestd: unexpected arguments %q (see --help)\n", fs.Args())
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "vmpersona-guestd: --log-level: %v\n", err)
		return 2
	}
	ep, err := transport.ParseEndpoint(*listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmpersona-guestd: --listen: %v\n", err)
		return 2
	}
	if *maxExec < 1 || *maxOutput < 1 || *execTimeout <= 0 || *scriptTimeout <= 0 {
		fmt.Fprintln(os.Stderr, "vmpersona-guestd: --max-exec, --max-output, --exec-timeout and --script-timeout must be positive")
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	store, err := state.Open(*stateDir)
	if err != nil {
		log.Error("startup", "err", err)
		return 1
	}
	services := sysenv.New(sysenv.Config{StateDir: *stateDir, Logger: log})
	if *syncServiceEnv {
		return syncServices(ctx, store, services, log)
	}
	spool, err := audit.Open(*stateDir, audit.Limits{MaxEvents: *auditMaxEvents, MaxBytes: *auditMaxBytes}, log)
	if err != nil {
		log.Error("startup", "err", err)
		return 1
	}
	defer spool.Close()
	mgr, err := activation.New(activation.Config{
		Store: store, Spool: spool, ProfileFile: *profile, Environ: os.Environ(),
		ScriptTimeout: *scriptTimeout, Logger: log, Services: services,
	})
	if err != nil {
		log.Error("startup", "err", err)
		return 1
	}
	l, err := transport.Listen(ctx, ep, log)
	if err != nil {
		log.Error("startup", "err", err)
		return 1
	}
	defer l.Close()
	if *runDir == "" {
		*runDir = filepath.Join(*stateDir, "run")
	}
	names, err := openNames(*runDir)
	if err != nil {
		// Commands still run, each listed as "3" in the process table.
		log.Warn("commands are not given their names in the process table", "err", err)
	}
	srv := server.New(server.Config{
		Manager: mgr, Spool: spool, Limiter: execute.NewLimiter(*maxExec), Names: names, BootID: bootID(),
		MaxOutput: *maxOutput, ExecTimeout: *execTimeout, AuditExec: *auditExec, Logger: log,
	})
	log.Info("vmpersona-guestd started", "version", protocol.SoftwareVersion, "listen", l.String(),
		"state_dir", *stateDir, "persona", mgr.View().PersonaName(), "pending_audit", spool.Len())
	notify("READY=1")
	go watchdog(ctx)
	err = srv.Serve(ctx, l)
	notify("STOPPING=1")
	execute.ReleaseCgroups()
	if err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	log.Info("vmpersona-guestd stopped")
	return 0
}

// openNames makes runDir (mode 0755) and the links in it that give
// commands their names.
func openNames(runDir string) (*execute.Names, error) {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, err
	}
	return execute.OpenNames(filepath.Join(runDir, "names"))
}

// syncServices sets the persisted persona's variables in systemd's
// environment (at boot, before services start).
func syncServices(ctx context.Context, store *state.Store, services *sysenv.Manager, log *slog.Logger) int {
	active, err := store.Load()
	if err != nil {
		log.Error("services' environment", "err", err)
		return 1
	}
	if err := services.Sync(ctx, active); err != nil {
		log.Error("services' environment", "err", err)
		return 1
	}
	return 0
}

func bootID() string {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// notify sends one sd_notify message to $NOTIFY_SOCKET, if set.
func notify(msg string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		slog.Warn("sd_notify", "err", err)
		return
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		slog.Warn("sd_notify", "err", err)
	}
}

// watchdog pings systemd's watchdog at half its interval when one is set
// for this process.
func watchdog(ctx context.Context) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return
	}
	every := time.Duration(usec) * time.Microsecond / 2
	// A timer the kernel keeps: a runtime ticker would wake the Go
	// runtime's monitor thread at every tick as well.
	if t, err := ktimer.New(); err == nil {
		defer context.AfterFunc(ctx, func() { t.Close() })()
		for {
			t.Reset(every)
			if t.Wait() != nil {
				return
			}
			notify("WATCHDOG=1")
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			notify("WATCHDOG=1")
		}
	}
}
