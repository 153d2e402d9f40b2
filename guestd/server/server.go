// Package server runs the guest side of the vmpersona protocol over the
// connections a transport yields: the handshake, heartbeats, request
// dispatch (activation, deactivation, exec) and the audit spool's delivery
// to the host.
package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/confine"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/guestd/transport"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

// Defaults.
const (
	DefaultMaxInFlight  = protocol.DefaultMaxInFlight
	DefaultWriteTimeout = protocol.DefaultWriteTimeout
	// auditGather is how long events recorded right after a batch left
	// wait for more before the next batch.
	auditGather = 20 * time.Millisecond
)

// Config configures a Server.
type Config struct {
	Manager *activation.Manager
	Spool   *audit.Spool
	// Limiter bounds concurrent execs.
	Limiter *execute.Limiter
	// Names, when set, gives every command's process its name in the
	// process table (else it is listed as "3").
	Names  *execute.Names
	BootID string
	// MaxOutput is the default per-stream output bound of an exec.
	MaxOutput int
	// ExecTimeout is the default exec timeout.
	ExecTimeout time.Duration
	// AuditExec records every exec in the audit, not only overrides and
	// denials.
	AuditExec bool
	// MaxInFlight bounds the requests being handled at once.
	MaxInFlight  int
	WriteTimeout time.Duration
	MaxPayload   uint32
	Logger       *slog.Logger
}

// Server serves one connection at a time.
type Server struct {
	cfg      Config
	log      *slog.Logger
	handlers sync.WaitGroup

	// Exec events wait here to be written to the spool after the answer
	// has left (see recordLater).
	laterMu      sync.Mutex
	later        []protocol.AuditEvent
	laterRunning bool
	laterPending sync.WaitGroup
	// laterSync is held to write while a batch of those events is appended
	// and synced, and to read while the delivery picks its next batch: no
	// event is sent before it is durable (a sequence number the host saw
	// is never used again after a power loss).
	laterSync sync.RWMutex
}

// New returns a server.
func New(cfg Config) *Server {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.ExecTimeout <= 0 {
		cfg.ExecTimeout = execute.DefaultTimeout
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = execute.DefaultMaxOutput
	}
	if cfg.Limiter == nil {
		cfg.Limiter = execute.NewLimiter(16)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg, log: cfg.Logger}
}

// Serve accepts connections until ctx is done. A new connection replaces
// the current one. It returns nil after ctx is done and every handler has
// finished.
func (s *Server) Serve(ctx context.Context, l transport.Listener) error {
	var cur *conn
	defer func() {
		if cur != nil {
			cur.close()
		}
		s.handlers.Wait()
		s.laterPending.Wait()
	}()
	for {
		rw, err := l.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if cur != nil {
			cur.close()
		}
		cur = s.newConn(ctx, rw)
	}
}

// conn is one connection: a protocol session (which holds at most one
// session epoch at a time, a new Hello replacing it) and the delivery of
// the audit spool over it.
type conn struct {
	s    *Server
	log  *slog.Logger
	sess *protocol.Session
	root context.Context // the server's: activations finish even if the host leaves
	kick chan struct{}
	done chan struct{} // closed when the audit delivery has stopped
	// files are the connection's open file handles.
	files files
}

// handlers are the requests the guest serves. A new request type is one
// entry here.
func (c *conn) handlers() map[protocol.Type]protocol.Handler {
	h := map[protocol.Type]protocol.Handler{
		protocol.TypeActivate: {Answer: protocol.TypeActivateResult, Serve: func(_ context.Context, r *protocol.Request) (any, error) {
			var req protocol.Activate
			if err := r.Decode(&req); err != nil {
				return nil, err
			}
			return c.s.cfg.Manager.Activate(c.root, req), nil
		}},
		protocol.TypeDeactivate: {Answer: protocol.TypeActivateResult, Serve: func(_ context.Context, r *protocol.Request) (any, error) {
			var req protocol.Deactivate
			if err := r.Decode(&req); err != nil {
				return nil, err
			}
			return c.s.cfg.Manager.Deactivate(c.root, req), nil
		}},
		protocol.TypeDryRun: {Answer: protocol.TypeDryRunResult, Serve: func(_ context.Context, r *protocol.Request) (any, error) {
			var req protocol.DryRun
			if err := r.Decode(&req); err != nil {
				return nil, err
			}
			return c.s.cfg.Manager.Diff(req), nil
		}},
		protocol.TypeExec: {Answer: protocol.TypeExecResult, Input: true, Serve: func(ctx context.Context, r *protocol.Request) (any, error) {
			var req protocol.Exec
			if err := r.Decode(&req); err != nil {
				return nil, err
			}
			if req.InputWindow < 0 || req.InputWindow > protocol.MaxInputWindow {
				return nil, &protocol.Error{Code: protocol.CodeBadRequest, Message: fmt.Sprintf("exec: input_window must be between 0 and %d", protocol.MaxInputWindow)}
			}
			r.SetWindow(req.Window)
			return c.s.exec(ctx, req, r.Input(req.InputWindow), r.Output)
		}},
	}
	c.fileHandlers(h)
	return h
}

func (s *Server) newConn(root context.Context, rw io.ReadWriteCloser) *conn {
	c := &conn{s: s, log: s.log, root: root, kick: make(chan struct{}, 1), done: make(chan struct{})}
	c.sess = protocol.NewSession(rw, protocol.SessionConfig{
		WriteTimeout: s.cfg.WriteTimeout,
		MaxPayload:   s.cfg.MaxPayload,
		MaxInFlight:  s.cfg.MaxInFlight,
		Handlers:     c.handlers(),
		OnHello:      c.hello,
		OnSession:    func(uint32) { c.kickAudit() },
		Side:         "guest",
		Logger:       s.log,
		KernelTimer:  true, // an idle guest wakes only for the host's pings
	})
	s.handlers.Add(1)
	go func() {
		defer s.handlers.Done()
		c.deliverAudit()
		c.sess.Wait()
		c.sess.WaitHandlers()
		c.files.closeAll()
	}()
	return c
}

// close ends the connection (its execs are killed, activations finish) and
// waits until nothing reads from or writes to its stream any more.
func (c *conn) close() {
	c.sess.Close(nil)
	c.sess.Wait()
	<-c.done
}

func (c *conn) hello(protocol.Hello) protocol.HelloAck {
	view := c.s.cfg.Manager.View()
	return protocol.HelloAck{
		AgentVersion: protocol.SoftwareVersion,
		Capabilities: []string{protocol.CapExecStream, protocol.CapExecWindow, protocol.CapAllowlist, protocol.CapAuditSpool, protocol.CapProfile, protocol.CapDryRun, protocol.CapFiles, protocol.CapExecStdin},
		BootID:       c.s.cfg.BootID,
		SpoolID:      c.s.cfg.Spool.ID(),
		Active:       view.Active,
		PendingAudit: c.s.cfg.Spool.Len(),
		LandlockABI:  confine.ABI(),
	}
}

func (c *conn) kickAudit() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// deliverAudit sends the spool's events to the host while the connection
// lasts: at each new session and whenever events are recorded. What is in
// flight and what to send again is the Delivery's to decide; a retry timer
// (the Delivery's pause after a refusal or a partial acknowledgement) is
// armed only while events wait, so an idle daemon never wakes for it.
func (c *conn) deliverAudit() {
	defer close(c.done)
	spool := c.s.cfg.Spool
	d := audit.NewDelivery(spool)
	var epoch uint32
	var retry, gather *time.Timer
	var retryC, gatherC <-chan time.Time
	var lastSend time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
		if gather != nil {
			gather.Stop()
		}
	}()
	for {
		select {
		case <-c.sess.Done():
			return
		case <-retryC:
			retryC = nil
		case <-gatherC:
			gatherC = nil
		case <-spool.Notify():
			// Events recorded soon after a batch left wait for the ones
			// that follow (one batch, one acknowledgement for several
			// execs); an isolated event leaves at once.
			if wait := auditGather - time.Since(lastSend); wait > 0 && epoch != 0 && c.sess.Epoch() == epoch {
				if gatherC == nil {
					if gather == nil {
						gather = time.NewTimer(wait)
					} else {
						gather.Reset(wait)
					}
					gatherC = gather.C
				}
				continue
			}
		case <-c.kick:
		}
		for {
			if e := c.sess.Epoch(); e != epoch {
				// A new session: what the last one had in flight is sent
				// again.
				d.Reset()
				epoch = e
			}
			if epoch == 0 {
				break
			}
			c.s.laterSync.RLock()
			events := d.Next(time.Now())
			c.s.laterSync.RUnlock()
			if events == nil {
				break
			}
			lastSend = time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), d.AnswerTimeout())
			var ack protocol.AuditAck
			err := c.sess.Call(ctx, protocol.TypeAuditBatch, protocol.AuditBatch{SpoolID: spool.ID(), Events: events}, &ack, nil)
			cancel()
			var pe *protocol.Error
			switch {
			case err == nil:
				if err := d.Acked(ack.UpToSeq, time.Now()); err != nil {
					c.log.Error("audit ack could not be persisted", "err", err)
				}
			case errors.As(err, &pe):
				c.log.Warn("host refused an audit batch; will retry", "code", pe.Code, "message", pe.Message)
				d.Refused(time.Now())
			case errors.Is(err, context.DeadlineExceeded):
				c.log.Warn("audit batch unanswered; sending again")
				d.Unanswered()
			case errors.Is(err, protocol.ErrReplaced):
				d.Reset()
			default: // the session ended
				return
			}
		}
		if retryC == nil && epoch != 0 && spool.Len() > 0 {
			// Events wait (held after a refusal, say): look again once
			// the pause is over.
			if retry == nil {
				retry = time.NewTimer(audit.RetryPause)
			} else {
				retry.Reset(audit.RetryPause)
			}
			retryC = retry.C
		}
	}
}

func (s *Server) record(ev protocol.AuditEvent) {
	if _, err := s.cfg.Spool.Record(ev); err != nil {
		s.log.Error("audit record failed", "err", err)
	}
}

// maxLater bounds the exec events waiting to be written; beyond it an exec
// writes its own before it answers.
const maxLater = 1024

// recordLater writes the event of a finished exec to the spool off the
// answer's path: one goroutine appends the waiting events in order and
// syncs them with one fsync per batch, and Serve returns only once all are
// written. The command has already run when its event is made, so a crash
// between the answer and the write loses what a crash during the run would
// have lost; events that decide something (denials, overrides) are written
// before the answer, as before.
func (s *Server) recordLater(ev protocol.AuditEvent) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	s.laterMu.Lock()
	if len(s.later) >= maxLater {
		s.laterMu.Unlock()
		s.record(ev)
		return
	}
	s.laterPending.Add(1)
	s.later = append(s.later, ev)
	start := !s.laterRunning
	s.laterRunning = true
	s.laterMu.Unlock()
	if start {
		go s.writeLater()
	}
}

func (s *Server) writeLater() {
	var batch []protocol.AuditEvent
	for {
		s.laterMu.Lock()
		if len(s.later) == 0 {
			s.laterRunning = false
			s.laterMu.Unlock()
			return
		}
		batch, s.later = s.later, batch[:0]
		s.laterMu.Unlock()
		// One fsync for the whole batch.
		s.laterSync.Lock()
		for _, ev := range batch {
			if _, err := s.cfg.Spool.RecordWith(ev, func(protocol.AuditEvent) error { return nil }); err != nil {
				s.log.Error("audit record failed", "err", err)
			}
		}
		if err := s.cfg.Spool.Sync(); err != nil {
			s.log.Error("audit record failed", "err", err)
		}
		s.laterSync.Unlock()
		for range batch {
			s.laterPending.Done()
		}
		clear(batch)
	}
}

// exec runs one Exec request through the routing table and returns the
// final answer; when the request streams, output chunks go to output on the
// way. ctx ends when the connection does: the command is killed.
//
// input, when not nil, is the command's standard input streamed by the host
// (after req.Stdin).
func (s *Server) exec(ctx context.Context, req protocol.Exec, input *protocol.Input, output func(stream byte, data []byte) error) (any, error) {
	fail := func(code, msg string) (any, error) {
		return nil, &protocol.Error{Code: code, Message: msg, Command: req.Command}
	}
	if req.Command == "" {
		return fail(protocol.CodeBadRequest, "exec: empty command")
	}
	if containsAny(req.Command, "\x00") || containsAny(req.Cwd, "\x00") || slices.ContainsFunc(req.Args, func(a string) bool { return containsAny(a, "\x00") }) {
		return fail(protocol.CodeBadRequest, "exec: NUL byte in command, argument or cwd")
	}
	if req.TimeoutMillis < 0 || req.MaxOutput < 0 {
		return fail(protocol.CodeBadRequest, "exec: negative timeout or output bound")
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return fail(protocol.CodeBadRequest, "exec: cwd must be an absolute path")
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return fail(protocol.CodeCannotStart, "cwd "+cwd+" is not a directory")
	}
	for k, v := range req.Env {
		if err := errors.Join(rules.EnvName(k), rules.ExecEnvValue(v)); err != nil {
			return fail(protocol.CodeBadRequest, fmt.Sprintf("exec: bad environment variable %q: %v", k, err))
		}
	}

	if _, err := s.cfg.Manager.View().ExecEnv(req.Env); err != nil {
		return fail(protocol.CodeBadRequest, err.Error())
	}

	// At the limit the exec waits for a slot (in a bounded queue), within
	// its own timeout: the time spent waiting counts against it. After a
	// wait the command is routed again, under the persona active then.
	timeout := s.cfg.ExecTimeout
	if req.TimeoutMillis > 0 {
		timeout = time.Duration(req.TimeoutMillis) * time.Millisecond
	}
	deadline := time.Now().Add(timeout)
	var (
		view    *activation.View
		persona string
		d       routing.Decision
		ev      protocol.AuditEvent
		release func()
	)
	for {
		view = s.cfg.Manager.View()
		persona = view.PersonaName()
		d = view.Table.Route(req.Command, cwd)
		ev = protocol.AuditEvent{Persona: persona, Command: req.Command, Actor: req.Actor}
		if release != nil && (d.Kind == routing.Default || d.Kind == routing.Override) {
			break
		}
		if release != nil {
			release()
		}
		switch d.Kind {
		case routing.Denied:
			ev.Type, ev.Route, ev.Result, ev.Detail = protocol.AuditDenial, protocol.RouteDenied, protocol.CodeDenied, d.Reason
			s.record(ev)
			return nil, &protocol.Error{Code: protocol.CodeDenied, Message: protocol.DeniedMessage, Command: req.Command, Persona: persona}
		case routing.NotFound:
			return fail(protocol.CodeNotFound, "command not found")
		case routing.NotExecutable:
			return fail(protocol.CodeNotExecutable, "command is not executable: "+view.Table.Path(req.Command, cwd, d))
		}
		var err error
		if release, err = s.cfg.Limiter.TryAcquire(); err == nil {
			break
		}
		wctx, cancel := context.WithDeadline(ctx, deadline)
		release, err = s.cfg.Limiter.Acquire(wctx)
		cancel()
		d.Close() // routed again below, or refused
		if err != nil {
			return fail(protocol.CodeBusy, "too many commands running")
		}
		if timeout = time.Until(deadline); timeout <= 0 {
			release()
			return fail(protocol.CodeBusy, "too many commands running")
		}
		// Route again with the slot held (the loop ends at the check above).
	}
	defer release()
	defer d.Close()

	route := protocol.RouteDefault
	path := ""
	if d.Kind == routing.Override {
		route, path = protocol.RouteOverride, d.Override.Path
		ev.Type, ev.Route = protocol.AuditOverride, route
		ev.Detail = "runs " + path
		if d.Override.Inline {
			ev.Detail = "runs the inline override script"
		}
		s.record(ev)
	} else {
		path = view.Table.Path(req.Command, cwd, d)
	}
	env, err := view.ExecEnv(req.Env)
	if err != nil {
		return fail(protocol.CodeBadRequest, err.Error())
	}
	who := req.User
	if who == "" && req.Group == "" {
		who = view.ExecUser()
	}
	identity, err := execute.LookupIdentity(who, req.Group)
	if err != nil {
		return fail(protocol.CodeBadRequest, err.Error())
	}
	var cred *syscall.Credential
	if identity != nil {
		env, cred = activation.ComposeEnv(env, identity.Env), identity.Credential
	}
	exe := d.File(path)
	if exe == nil {
		// An override whose target cannot be opened.
		return fail(protocol.CodeNotFound, "cannot open "+path)
	}
	defer exe.Close()
	maxOut := outputBound(req, s.cfg.MaxOutput)
	name := argv0(req.Command, d)
	spec := execute.Spec{
		Path: path, Exe: exe, ExeLink: s.cfg.Names.Path(name, cred), Domain: view.Domain, Credential: cred,
		Args: append([]string{name}, req.Args...), Env: env, Dir: cwd,
		Stdin: req.Stdin, Timeout: timeout, MaxOutput: maxOut,
	}
	if req.Stream {
		spec.OnOutput = func(stream byte, data []byte) { output(stream, data) }
	}
	if input != nil {
		spec.Input = input
		if len(req.Stdin) > 0 {
			spec.Input = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(bytes.NewReader(req.Stdin), input), input}
		}
	}
	res, err := execute.Run(ctx, spec)
	if err != nil {
		code := protocol.CodeNotExecutable
		if errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOEXEC) {
			code = protocol.CodeNotFound
		}
		return fail(code, err.Error())
	}
	if route == protocol.RouteDefault && s.auditsExec(req, view) {
		ev.Type, ev.Route = protocol.AuditExec, route
		ev.Result, ev.Detail = execOutcome(req.Args, res, secretValues(view))
		s.recordLater(ev)
	}
	out := protocol.ExecResult{
		ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut,
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
		Route: route, DurationMillis: float64(res.Duration.Microseconds()) / 1000,
	}
	out.Stdout, out.StdoutEncoding = protocol.EncodeOutput(res.Stdout)
	out.Stderr, out.StderrEncoding = protocol.EncodeOutput(res.Stderr)
	if persona != "" {
		out.Persona = &persona
	}
	return out, nil
}

func containsAny(s, chars string) bool {
	for i := 0; i < len(s); i++ {
		for j := 0; j < len(chars); j++ {
			if s[i] == chars[j] {
				return true
			}
		}
	}
	return false
}
