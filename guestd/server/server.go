// Package server runs the guest side of the vmpersona protocol over the
// connections a transport yields: the handshake, heartbeats, request
// dispatch (activation, deactivation, exec) and the audit spool's delivery
// to the host.
package server

import (
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/audit"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/guestd/transport"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

// Defaults.
const (
	DefaultMaxInFlight  = 64
	DefaultWriteTimeout = 10 * time.Second
	// auditBatchMax bounds the events of one AuditBatch.
	auditBatchMax = 256
	// auditRetry is the pause before a refused or unanswered batch is sent
	// again.
	auditRetry = 2 * time.Second
	// auditAnswerTimeout bounds the wait for an AuditAck.
	auditAnswerTimeout = 30 * time.Second
)

// Config configures a Server.
type Config struct {
	Manager *activation.Manager
	Spool   *audit.Spool
	// Limiter bounds concurrent execs.
	Limiter *execute.Limiter
	BootID  string
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
	// reader is reused by each connection in turn (one at a time), Reset
	// in between so partial stale bytes are dropped.
	reader *protocol.Reader
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
	return &Server{cfg: cfg, log: cfg.Logger, reader: protocol.NewReader(nil, cfg.MaxPayload)}
}

// Serve accepts connections until ctx is done. A new connection replaces
// the current one. It returns nil after ctx is done and every handler has
// finished.
func (s *Server) Serve(ctx context.Context, l transport.Listener) error {
	var cur *conn
	defer func() {
		if cur != nil {
			cur.close()
			<-cur.done
		}
		s.handlers.Wait()
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
			<-cur.done
		}
		cur = s.newConn(ctx, rw)
		go cur.run()
	}
}

// conn is one connection; it holds at most one session at a time.
type conn struct {
	s      *Server
	log    *slog.Logger
	rw     io.ReadWriteCloser
	w      *protocol.Writer
	ctx    context.Context // cancelled when the connection ends: kills its execs
	cancel context.CancelFunc
	root   context.Context // the server's: activations finish even if the host leaves
	done   chan struct{}

	inflight chan struct{}
	lastRecv atomic.Int64
	nextID   atomic.Uint64
	kick     chan struct{}

	mu   sync.Mutex
	sess *session
}

type session struct {
	epoch     uint32
	heartbeat time.Duration
	// the audit batch waiting for its ack: request id and when it was sent
	auditID   uint64
	auditLast uint64 // highest seq of that batch
	auditSent time.Time
	auditHold time.Time // no new batch before this (after a refusal)
}

func (s *Server) newConn(root context.Context, rw io.ReadWriteCloser) *conn {
	ctx, cancel := context.WithCancel(root)
	return &conn{
		s: s, log: s.log, rw: rw, w: protocol.NewWriter(rw),
		ctx: ctx, cancel: cancel, root: root, done: make(chan struct{}),
		inflight: make(chan struct{}, s.cfg.MaxInFlight),
		kick:     make(chan struct{}, 1),
	}
}

func (c *conn) close() {
	c.cancel()
	c.rw.Close()
}

func (c *conn) run() {
	defer close(c.done)
	defer c.close()
	go c.watch()
	r := c.s.reader
	r.Reset(c.rw)
	defer r.Reset(nil)
	for {
		f, err := r.Next()
		if err != nil {
			var fe *protocol.FrameError
			if errors.As(err, &fe) {
				c.log.Warn("frame refused", "err", err)
				if fe.Header.Flags&protocol.FlagResponse == 0 {
					code := protocol.CodeTooLarge
					if errors.Is(err, protocol.ErrUnsupportedVersion) {
						code = protocol.CodeUnsupportedVersion
					}
					c.sendError(c.epoch(), fe.Header.ID, &protocol.Error{Code: code, Message: err.Error()})
				}
				continue
			}
			if errors.Is(err, io.EOF) {
				c.log.Debug("connection ended", "skipped_bytes", r.Skipped())
			} else if c.ctx.Err() == nil {
				c.log.Info("connection ended", "err", err)
			}
			return
		}
		c.lastRecv.Store(time.Now().UnixNano())
		c.handle(f)
	}
}

// watch ends the session when the host has been silent for three heartbeat
// intervals, and drives the audit delivery.
func (c *conn) watch() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.s.cfg.Spool.Notify():
		case <-c.kick:
		}
		c.mu.Lock()
		sess := c.sess
		c.mu.Unlock()
		if sess == nil {
			continue
		}
		if sess.heartbeat > 0 && time.Since(time.Unix(0, c.lastRecv.Load())) > 3*sess.heartbeat {
			c.log.Warn("host missed heartbeats; ending the session", "epoch", sess.epoch, "heartbeat", sess.heartbeat)
			c.close()
			return
		}
		c.sendAudit()
	}
}

func (c *conn) epoch() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return 0
	}
	return c.sess.epoch
}

func (c *conn) kickAudit() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// send writes one frame within the write timeout; a failed write ends the
// connection (it may have left half a frame on the stream).
func (c *conn) send(h protocol.Header, payload []byte) error {
	if d, ok := c.rw.(interface{ SetWriteDeadline(time.Time) error }); ok {
		d.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
	}
	if err := c.w.WriteFrame(h, payload); err != nil {
		if c.ctx.Err() == nil {
			c.log.Warn("write failed; ending the connection", "err", err)
		}
		c.close()
		return err
	}
	return nil
}

func (c *conn) reply(epoch uint32, id uint64, t protocol.Type, msg any) error {
	payload, err := protocol.Marshal(msg)
	if err != nil {
		return err
	}
	return c.send(protocol.Header{Type: t, Flags: protocol.FlagResponse, Epoch: epoch, ID: id}, payload)
}

func (c *conn) sendError(epoch uint32, id uint64, e *protocol.Error) {
	c.reply(epoch, id, protocol.TypeError, e)
}

func (c *conn) handle(f protocol.Frame) {
	if f.Flags&protocol.FlagResponse != 0 {
		c.handleResponse(f)
		return
	}
	if f.Type == protocol.TypeHello {
		c.hello(f)
		return
	}
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		// Answer in the request's epoch: a host whose session outlived a
		// restart of this daemon learns at once that it must say Hello.
		c.sendError(f.Epoch, f.ID, &protocol.Error{Code: protocol.CodeNoSession, Message: "no session: send Hello first"})
		return
	}
	if f.Epoch != sess.epoch {
		c.log.Debug("request of another session ignored", "type", f.Type, "epoch", f.Epoch, "session", sess.epoch)
		return
	}
	epoch := sess.epoch
	switch f.Type {
	case protocol.TypePing:
		c.send(protocol.Header{Type: protocol.TypePong, Flags: protocol.FlagResponse, Epoch: epoch, ID: f.ID}, nil)
	case protocol.TypeActivate:
		var req protocol.Activate
		if !c.decode(epoch, f, &req) {
			return
		}
		c.spawn(epoch, f.ID, func() (protocol.Type, any) {
			return protocol.TypeActivateResult, c.s.cfg.Manager.Activate(c.root, req)
		})
	case protocol.TypeDeactivate:
		var req protocol.Deactivate
		if !c.decode(epoch, f, &req) {
			return
		}
		c.spawn(epoch, f.ID, func() (protocol.Type, any) {
			return protocol.TypeActivateResult, c.s.cfg.Manager.Deactivate(c.root, req)
		})
	case protocol.TypeDryRun:
		var req protocol.DryRun
		if !c.decode(epoch, f, &req) {
			return
		}
		c.reply(epoch, f.ID, protocol.TypeDryRunResult, c.s.cfg.Manager.Diff(req))
	case protocol.TypeExec:
		var req protocol.Exec
		if !c.decode(epoch, f, &req) {
			return
		}
		c.spawn(epoch, f.ID, func() (protocol.Type, any) { return c.exec(epoch, f.ID, req) })
	default:
		c.sendError(epoch, f.ID, &protocol.Error{Code: protocol.CodeUnsupportedType, Message: "the guest does not accept " + f.Type.String()})
	}
}

// decode decodes a request payload (before the reader's buffer is reused),
// answering bad_request when it does not decode.
func (c *conn) decode(epoch uint32, f protocol.Frame, v any) bool {
	if err := protocol.Unmarshal(f.Payload, v); err != nil {
		c.sendError(epoch, f.ID, &protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
		return false
	}
	return true
}

// spawn runs a request handler concurrently within the in-flight bound.
// The handler returns its final answer, which is sent after the request's
// slots are free: a host that has its answer may send the next request at
// once without being told busy.
func (c *conn) spawn(epoch uint32, id uint64, fn func() (protocol.Type, any)) {
	select {
	case c.inflight <- struct{}{}:
	default:
		c.sendError(epoch, id, &protocol.Error{Code: protocol.CodeBusy, Message: "too many requests in flight"})
		return
	}
	c.s.handlers.Add(1)
	go func() {
		defer c.s.handlers.Done()
		t, msg := fn()
		<-c.inflight
		c.reply(epoch, id, t, msg)
	}()
}

func (c *conn) hello(f protocol.Frame) {
	var h protocol.Hello
	if err := protocol.Unmarshal(f.Payload, &h); err != nil {
		c.sendError(f.Epoch, f.ID, &protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()})
		return
	}
	if h.Epoch == 0 {
		c.sendError(f.Epoch, f.ID, &protocol.Error{Code: protocol.CodeBadRequest, Message: "hello: epoch 0"})
		return
	}
	hi, lo := min(h.MaxVersion, protocol.Version), max(h.MinVersion, protocol.MinVersion)
	if hi < lo {
		c.sendError(h.Epoch, f.ID, &protocol.Error{Code: protocol.CodeUnsupportedVersion,
			Message: fmt.Sprintf("the guest speaks protocol versions %d..%d, the host %d..%d", protocol.MinVersion, protocol.Version, h.MinVersion, h.MaxVersion)})
		return
	}
	view := c.s.cfg.Manager.View()
	ack := protocol.HelloAck{
		ProtocolVersion: hi,
		AgentVersion:    protocol.SoftwareVersion,
		Capabilities:    []string{protocol.CapExecStream, protocol.CapAllowlist, protocol.CapAuditSpool, protocol.CapProfile, protocol.CapDryRun},
		BootID:          c.s.cfg.BootID,
		SpoolID:         c.s.cfg.Spool.ID(),
		Active:          view.Active,
		PendingAudit:    c.s.cfg.Spool.Len(),
	}
	c.mu.Lock()
	c.sess = &session{epoch: h.Epoch, heartbeat: time.Duration(h.HeartbeatMillis) * time.Millisecond}
	c.mu.Unlock()
	c.log.Info("session started", "epoch", h.Epoch, "host_version", h.HostVersion, "protocol", hi, "heartbeat_ms", h.HeartbeatMillis)
	if c.reply(h.Epoch, f.ID, protocol.TypeHelloAck, ack) == nil {
		c.kickAudit()
	}
}

func (c *conn) handleResponse(f protocol.Frame) {
	c.mu.Lock()
	sess := c.sess
	if sess == nil || f.Epoch != sess.epoch || f.ID == 0 || f.ID != sess.auditID {
		c.mu.Unlock()
		return // a pong, or an answer nobody waits for
	}
	last := sess.auditLast
	c.mu.Unlock()
	// Persisting the acknowledgement (file I/O) happens without c.mu, which
	// request handling and the audit sender take. The batch counts as unanswered until
	// then (sess.auditID stays set), so sendAudit does not send the same
	// events again meanwhile. Only this goroutine handles responses.
	done := func(holdOff bool) {
		c.mu.Lock()
		if sess.auditID == f.ID {
			sess.auditID = 0
		}
		if holdOff {
			sess.auditHold = time.Now().Add(auditRetry)
		}
		c.mu.Unlock()
	}
	hold := func() { done(true) }
	switch f.Type {
	case protocol.TypeAuditAck:
		var ack protocol.AuditAck
		if err := protocol.Unmarshal(f.Payload, &ack); err != nil {
			c.log.Warn("bad audit ack", "err", err)
			hold()
			return
		}
		if err := c.s.cfg.Spool.Ack(ack.UpToSeq); err != nil {
			c.log.Error("audit ack could not be persisted", "err", err)
			hold()
			return
		}
		if ack.UpToSeq < last {
			// The host kept only part of the batch: send the rest later,
			// not in a tight loop.
			hold()
			return
		}
		done(false)
		c.kickAudit()
	case protocol.TypeError:
		var e protocol.Error
		protocol.Unmarshal(f.Payload, &e)
		c.log.Warn("host refused an audit batch; will retry", "code", e.Code, "message", e.Message)
		hold()
	default:
		done(false)
	}
}

// sendAudit sends the oldest unacknowledged events when no batch waits for
// its answer.
func (c *conn) sendAudit() {
	c.mu.Lock()
	sess := c.sess
	if sess == nil || time.Now().Before(sess.auditHold) {
		c.mu.Unlock()
		return
	}
	if sess.auditID != 0 {
		if time.Since(sess.auditSent) < auditAnswerTimeout {
			c.mu.Unlock()
			return
		}
		c.log.Warn("audit batch unanswered; sending again", "id", sess.auditID)
	}
	events := c.s.cfg.Spool.Pending(auditBatchMax)
	if len(events) == 0 {
		sess.auditID = 0
		c.mu.Unlock()
		return
	}
	id := c.nextID.Add(1)
	sess.auditID, sess.auditSent, sess.auditLast = id, time.Now(), events[len(events)-1].Seq
	epoch := sess.epoch
	c.mu.Unlock()
	payload, err := protocol.Marshal(protocol.AuditBatch{SpoolID: c.s.cfg.Spool.ID(), Events: events})
	if err != nil {
		return
	}
	c.send(protocol.Header{Type: protocol.TypeAuditBatch, Epoch: epoch, ID: id}, payload)
}

func (c *conn) record(ev protocol.AuditEvent) {
	if _, err := c.s.cfg.Spool.Record(ev); err != nil {
		c.log.Error("audit record failed", "err", err)
	}
}

// exec runs one Exec request through the routing table and returns the
// final answer (ExecOutput chunks, when streaming, are sent on the way).
func (c *conn) exec(epoch uint32, id uint64, req protocol.Exec) (protocol.Type, any) {
	fail := func(code, msg string) (protocol.Type, any) {
		return protocol.TypeError, &protocol.Error{Code: code, Message: msg, Command: req.Command}
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
		return fail(protocol.CodeBadRequest, "exec: cwd "+cwd+" is not a directory")
	}
	for k, v := range req.Env {
		if err := errors.Join(rules.EnvName(k), rules.ExecEnvValue(v)); err != nil {
			return fail(protocol.CodeBadRequest, fmt.Sprintf("exec: bad environment variable %q: %v", k, err))
		}
	}

	// At the limit the exec waits for a slot (in a bounded queue), within
	// its own timeout: the time spent waiting counts against it. After a
	// wait the command is routed again, under the persona active then.
	timeout := c.s.cfg.ExecTimeout
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
		view = c.s.cfg.Manager.View()
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
			c.record(ev)
			return protocol.TypeError, &protocol.Error{Code: protocol.CodeDenied, Message: protocol.DeniedMessage, Command: req.Command, Persona: persona}
		case routing.NotFound:
			return fail(protocol.CodeNotFound, "command not found")
		case routing.NotExecutable:
			return fail(protocol.CodeNotExecutable, "command is not executable: "+view.Table.Path(req.Command, cwd, d))
		}
		var err error
		if release, err = c.s.cfg.Limiter.TryAcquire(); err == nil {
			break
		}
		wctx, cancel := context.WithDeadline(c.ctx, deadline)
		release, err = c.s.cfg.Limiter.Acquire(wctx)
		cancel()
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

	route := protocol.RouteDefault
	path := ""
	if d.Kind == routing.Override {
		route, path = protocol.RouteOverride, d.Override.Path
		ev.Type, ev.Route = protocol.AuditOverride, route
		ev.Detail = "runs " + path
		if d.Override.Inline {
			ev.Detail = "runs the inline override script"
		}
		c.record(ev)
	} else {
		path = view.Table.Path(req.Command, cwd, d)
		if c.s.cfg.AuditExec {
			ev.Type, ev.Route = protocol.AuditExec, route
			c.record(ev)
		}
	}
	env := activation.ComposeEnv(view.Env, req.Env)
	maxOut := c.s.cfg.MaxOutput
	if req.MaxOutput > 0 {
		maxOut = min(req.MaxOutput, c.s.cfg.MaxOutput)
	}
	spec := execute.Spec{
		Path: path, Args: append([]string{req.Command}, req.Args...), Env: env, Dir: cwd,
		Stdin: req.Stdin, Timeout: timeout, MaxOutput: maxOut,
	}
	if req.Stream {
		spec.OnOutput = func(stream byte, data []byte) {
			c.send(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, Epoch: epoch, ID: id},
				protocol.AppendExecOutput(make([]byte, 0, len(data)+1), stream, data))
		}
	}
	res, err := execute.Run(c.ctx, spec)
	if err != nil {
		code := protocol.CodeNotExecutable
		if errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOEXEC) {
			code = protocol.CodeNotFound
		}
		return fail(code, err.Error())
	}
	out := protocol.ExecResult{
		ExitCode: res.ExitCode, Signal: res.Signal, TimedOut: res.TimedOut,
		Stdout: string(res.Stdout), Stderr: string(res.Stderr),
		StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
		Route: route, DurationMillis: float64(res.Duration.Microseconds()) / 1000,
	}
	if persona != "" {
		out.Persona = &persona
	}
	return protocol.TypeExecResult, out
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
