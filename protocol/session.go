package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/internal/ktimer"
)

// ErrClosed is returned by calls on a session that has ended: the stream
// closed, a heartbeat was missed, or Close was called. The cause is in
// Session.Err.
var ErrClosed = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "protocol: session closed")

// ErrNoSession is the cause of a session ended because the guest answered
// that it holds no session: its daemon restarted while the stream stayed open.
var ErrNoSession = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "protocol: the guest holds no session (agent restarted)")

// ErrHeartbeat is the cause of a session ended because the peer stopped
// answering heartbeats.
var ErrHeartbeat = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "protocol: peer missed heartbeats")

// ErrReplaced fails the calls a guest had in flight when a new Hello
// replaced its session on the same stream (their answers would carry the
// old epoch).
var ErrReplaced = errors.New("protocol: a new Hello replaced the session")

// ErrOutputOverflow fails a call whose consumer of ExecOutput fell behind by
// more than the session's per-call output buffer (SessionConfig.OutputBuffer).
// Only that call fails: the session and its other calls go on, and the rest
// of the call's output is dropped as it arrives.
var ErrOutputOverflow = errdefs.New(errdefs.ErrTooLarge, "output-buffer-full", "protocol: exec output arrived faster than the caller consumed it (per-call output buffer full)")

// Defaults of a session.
const (
	DefaultWriteTimeout = 10 * time.Second
	DefaultMaxInFlight  = 64
	// DefaultOutputBuffer bounds the ExecOutput bytes one call holds for a
	// consumer that has not taken them yet.
	DefaultOutputBuffer = 8 << 20
	// serialQueue is how many Serial requests wait behind the one running
	// before the read loop waits for them.
	serialQueue = 8
)

// Liveness (§5.4 of the README). A peer is silent when nothing of it has
// been received: no frame of the session, and no byte of a frame still
// arriving. After SilenceIntervals heartbeat intervals of silence the
// watch probes (a Ping sent ahead of queued writes) and waits
// ProbeIntervals more intervals for any sign of life before it ends the
// session. Time in which this end itself got no CPU does not count
// against the peer: a watch that wakes up late gives the read loop as
// long again to catch up before it judges, and a silence is never
// counted while the read loop is busy with what it already received.
const (
	SilenceIntervals = 3
	ProbeIntervals   = 3
	// lateSlack is how late a watch timer may fire before this end counts
	// itself as starved of CPU.
	lateSlack = 50 * time.Millisecond
)

// Handler serves one request type on a session.
type Handler struct {
	// Answer is the message type of a successful answer.
	Answer Type
	// Serial handlers of a session run one at a time, in arrival order, on
	// one goroutine; while one runs, up to 8 more wait and then the
	// read loop waits, so a peer that floods is held back by the stream.
	// Other handlers run concurrently, at most SessionConfig.MaxInFlight at
	// once (beyond that a request is answered busy).
	Serial bool
	// Input handlers' requests may be followed by ExecInput frames: the
	// handler reads them through Request.Input.
	Input bool
	// Serve returns the answer, or an error: a *Error is sent as it is,
	// any other error as an Error of code internal. ctx ends when the
	// session does.
	Serve func(ctx context.Context, r *Request) (any, error)
}

// Request is one request being served.
type Request struct {
	Type  Type
	ID    uint64
	Epoch uint32
	// Payload belongs to the handler.
	Payload []byte
	s       *Session
	win     *window
	in      *Input
}

// Decode decodes the JSON payload; it fails with a *Error of code
// bad_request, which a handler may return as it is.
func (r *Request) Decode(v any) error { return Unmarshal(r.Payload, v) }

// Output sends one ExecOutput chunk of this request's answer. It waits
// until the chunk is written (the stream holds a slow host back), and fails
// once the session has ended.
//
// After SetWindow, it also waits until the host has acknowledged enough of
// the earlier output (ExecCredit), and fails with ErrOutputStopped once the
// host has stopped reading.
func (r *Request) Output(stream byte, data []byte) error {
	if r.win != nil {
		if err := r.win.take(r.s, len(data)); err != nil {
			return err
		}
	}
	return r.s.send(r.s.ctx, Header{Type: TypeExecOutput, Flags: FlagResponse | FlagMore, Epoch: r.Epoch, ID: r.ID},
		AppendExecOutput(make([]byte, 0, len(data)+1), stream, data))
}

// ErrOutputStopped fails Output once the host has said it reads no more of
// this answer's output (an ExecCredit with negative bytes).
var ErrOutputStopped = errors.New("protocol: the host stopped reading this output")

// SetWindow paces this request's output: at most n bytes may be sent beyond
// those the host has acknowledged with ExecCredit (Exec.Window). n <= 0
// leaves the output unpaced.
func (r *Request) SetWindow(n int) {
	if n <= 0 || r.win != nil {
		return
	}
	w := &window{size: n, changed: make(chan struct{})}
	r.s.mu.Lock()
	r.s.windows[r.ID] = w
	r.s.mu.Unlock()
	r.win = w
}

// window is the output credit of one request being served (the guest's
// end).
type window struct {
	size int

	mu sync.Mutex
	// changed is closed (and replaced) at every update: both of a
	// command's streams may be waiting, and each must look again.
	changed chan struct{}
	ahead   int  // bytes sent and not acknowledged
	stopped bool // the host reads no more
	ended   bool // the handler returned
}

// take waits until n more bytes may go. The host acknowledges in batches
// of a quarter window, so a sender with less than that ahead never waits
// (whatever n): the two ends cannot wait for each other.
func (w *window) take(s *Session, n int) error {
	for {
		w.mu.Lock()
		switch {
		case w.stopped:
			w.mu.Unlock()
			return ErrOutputStopped
		case w.ended:
			w.mu.Unlock()
			return ErrClosed
		case w.ahead < w.size/4 || w.ahead+n <= w.size:
			w.ahead += n
			w.mu.Unlock()
			return nil
		}
		changed := w.changed
		w.mu.Unlock()
		select {
		case <-changed:
		case <-s.closed:
			return ErrClosed
		}
	}
}

func (w *window) update(f func(*window)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f(w)
	close(w.changed)
	w.changed = make(chan struct{})
}

// credit applies an ExecCredit to the request it names.
func (s *Session) credit(f Frame) {
	var c ExecCredit
	if Unmarshal(f.Payload, &c) != nil {
		return
	}
	s.mu.Lock()
	w := s.windows[f.ID]
	s.mu.Unlock()
	if w == nil {
		return // the answer is complete already
	}
	w.update(func(w *window) {
		if c.Bytes < 0 {
			w.stopped = true
		} else {
			w.ahead = max(w.ahead-c.Bytes, 0)
		}
	})
}

// served forgets the window of a request whose handler returned; an output
// still waiting for credit gives up.
func (s *Session) served(r *Request) {
	if r.in != nil {
		s.mu.Lock()
		delete(s.inputs, r.ID)
		s.mu.Unlock()
		r.in.close(false)
	}
	if r.win == nil {
		return
	}
	s.mu.Lock()
	delete(s.windows, r.ID)
	s.mu.Unlock()
	r.win.update(func(w *window) { w.ended = true })
}

// SessionConfig configures one end of a session.
type SessionConfig struct {
	// Epoch, when not 0, is the session's epoch from the start: the host's
	// end, which chose it for its Hello. Frames of other epochs are dropped
	// and counted, and an Error no_session ends the session (ErrNoSession).
	//
	// With Epoch 0 the session is the guest's end: it acts on nothing but a
	// Hello (OnHello) until one arrives, answers every other request with
	// Error no_session stamped with the request's epoch, and a later Hello
	// replaces the session (§5.2 of the README).
	Epoch uint32
	// Heartbeat, on the host's end, is the ping interval; silence ends
	// the session as §5.4 says. The guest's end takes the host's interval
	// from its Hello.
	Heartbeat time.Duration
	// WriteTimeout bounds each frame write when the stream supports write
	// deadlines (default 10 s). A write that fails ends the session.
	WriteTimeout time.Duration
	MaxPayload   uint32
	// MaxInFlight bounds the concurrent handlers (default 64).
	MaxInFlight int
	// OutputBuffer bounds the ExecOutput bytes each call holds for its
	// consumer (default 8 MiB); past it that call fails with
	// ErrOutputOverflow.
	OutputBuffer int
	// Handlers serve requests by type. Ping is always answered; a request
	// of a type without a handler is answered unsupported_type.
	Handlers map[Type]Handler
	// OnHello (the guest's end) describes the guest for a HelloAck; the
	// session fills in the negotiated protocol version.
	OnHello func(Hello) HelloAck
	// OnSession (the guest's end) is called after a HelloAck was sent.
	OnSession func(epoch uint32)
	// OnProbe, when set, is told the outcome of each liveness probe
	// (§5.4): answered in time (a slow peer) or not (the session ends).
	OnProbe func(answered bool)
	// Side names this end in answers ("host" or "guest").
	Side   string
	Logger *slog.Logger
	// KernelTimer makes the liveness watch wait on a timer the kernel
	// keeps (package ktimer) instead of a Go runtime timer, so that an
	// idle session's watch wakes no thread but the one waiting for frames
	// (the guest daemon). Not under testing/synctest: its clock does not
	// move a kernel timer.
	KernelTimer bool
}

// Session is one end of a framed session on a byte stream: the read loop
// with resynchronisation, handlers by message type, calls matched by id
// with answers in any order, heartbeats, refused-frame answers, and a
// single writer that callers wait for within their context. Both daemons
// use it: the host through Handshake, the guest through NewSession. It is
// safe for concurrent use.
type Session struct {
	cfg   SessionConfig
	guest bool
	conn  io.ReadWriteCloser
	// raw is the stream's descriptor when it is a network connection (its
	// descriptor never blocks): frames are then written with one
	// non-blocking attempt by the sender itself.
	raw  syscall.RawConn
	w    *Writer
	r    *Reader
	ctx  context.Context // ends with the session
	stop context.CancelFunc

	epoch     atomic.Uint32
	heartbeat atomic.Int64 // nanoseconds; 0: no heartbeat watch
	nextID    atomic.Uint64
	dropped   atomic.Uint64
	// Liveness, unix nanoseconds: the last frame of the session received,
	// the last byte received at all, the last frame sent; reading is true
	// while the read loop waits in a Read of the stream, busySince is when
	// it last left one (it is busy with what it received). partial: bytes
	// of an incomplete frame are buffered.
	lastRecv  atomic.Int64
	lastBytes atomic.Int64
	lastSent  atomic.Int64
	reading   atomic.Bool
	busySince atomic.Int64
	partial   atomic.Bool
	// hbSet wakes the watch when the heartbeat is set (the guest's Hello);
	// nudge is the watch's kernel timer: fired for the same reason, and
	// moved on by each Ping.
	hbSet chan struct{}
	nudge atomic.Pointer[kernelClock]
	// probes counts the probes sent; probeAnswered those answered in time
	// (a slow peer told from a dead one).
	probes        atomic.Uint64
	probesAnswerd atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]*call
	windows map[uint64]*window // paced answers being served (guest)
	inputs  map[uint64]*Input  // standard inputs of requests being served (guest)

	writes chan *outFrame
	urgent chan *outFrame // heartbeats: written before queued frames
	work   chan job       // to an idle handler worker
	idle   atomic.Int32   // idle handler workers
	serial chan *Request
	// serialOnce starts serialLoop.
	serialOnce sync.Once
	inflight   chan struct{}
	handlers   sync.WaitGroup
	loops      sync.WaitGroup

	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// NewSession starts a session on conn: its read loop, its writer and (with
// a heartbeat) its heartbeat watch run until the session ends.
func NewSession(conn io.ReadWriteCloser, cfg SessionConfig) *Session {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.OutputBuffer <= 0 {
		cfg.OutputBuffer = DefaultOutputBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Side == "" {
		cfg.Side = "host"
		if cfg.Epoch == 0 {
			cfg.Side = "guest"
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Session{
		cfg: cfg, guest: cfg.Epoch == 0, conn: conn,
		w:   NewWriter(conn),
		ctx: ctx, stop: stop,
		pending:  make(map[uint64]*call),
		windows:  make(map[uint64]*window),
		inputs:   make(map[uint64]*Input),
		writes:   make(chan *outFrame),
		urgent:   make(chan *outFrame),
		work:     make(chan job),
		serial:   make(chan *Request, serialQueue),
		inflight: make(chan struct{}, cfg.MaxInFlight),
		closed:   make(chan struct{}),
		hbSet:    make(chan struct{}, 1),
	}
	s.r = NewReader(lifeReader{s, conn}, cfg.MaxPayload)
	if nc, ok := conn.(net.Conn); ok {
		if sc, ok := nc.(syscall.Conn); ok {
			if rc, err := sc.SyscallConn(); err == nil {
				s.raw = rc
			}
		}
	}
	s.epoch.Store(cfg.Epoch)
	now := time.Now().UnixNano()
	s.lastRecv.Store(now)
	s.lastBytes.Store(now)
	s.lastSent.Store(now)
	s.busySince.Store(now)
	s.loops.Add(1)
	s.handlers.Add(1)
	go s.readLoop()
	go s.writeLoop()
	if s.guest {
		// Idle until a Hello sets the heartbeat; then one timer, armed
		// for the end of the host's allowed silence.
		s.loops.Add(1)
		go s.watchLoop(false)
	} else if cfg.Heartbeat > 0 {
		s.startHeartbeat(cfg.Heartbeat)
	}
	return s
}

// startHeartbeat starts the host's pings (after its handshake).
func (s *Session) startHeartbeat(d time.Duration) {
	s.heartbeat.Store(int64(d))
	s.loops.Add(1)
	go s.watchLoop(true)
}

// lifeReader is the session's stream as its read loop sees it: every byte
// received is a sign of the peer's life, and the time the loop spends
// outside Read is time in which it was not listening.
type lifeReader struct {
	s *Session
	r io.Reader
}

func (l lifeReader) Read(p []byte) (int, error) {
	l.s.reading.Store(true)
	n, err := l.r.Read(p)
	now := time.Now().UnixNano()
	l.s.busySince.Store(now)
	l.s.reading.Store(false)
	if n > 0 {
		// Until the read loop has taken the frames these bytes complete,
		// they may be the start of one still arriving.
		l.s.lastBytes.Store(now)
		l.s.partial.Store(true)
	}
	return n, err
}

// Probes reports the liveness probes this end sent after a silence, and how
// many of them the peer answered in time (a slow peer, not a dead one).
func (s *Session) Probes() (sent, answered uint64) {
	return s.probes.Load(), s.probesAnswerd.Load()
}

// Epoch returns the session epoch (on the guest's end, 0 before a Hello).
func (s *Session) Epoch() uint32 { return s.epoch.Load() }

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.closed }

// Err returns why the session ended, nil while it runs.
func (s *Session) Err() error {
	select {
	case <-s.closed:
		return s.closeErr
	default:
		return nil
	}
}

// Dropped reports frames dropped because they belonged to another session
// or answered a request nobody waits for any more.
func (s *Session) Dropped() uint64 { return s.dropped.Load() }

// Skipped reports the bytes the reader discarded while resynchronising.
func (s *Session) Skipped() uint64 { return s.r.Skipped() }

// Close ends the session with the given cause (nil for a plain close) and
// closes the stream. Calls in flight return ErrClosed; handlers' contexts
// end.
func (s *Session) Close(cause error) {
	s.closeOnce.Do(func() {
		if cause == nil {
			cause = ErrClosed
		}
		s.closeErr = cause
		close(s.closed)
		s.stop()
		s.conn.Close()
	})
}

// Wait blocks until the session's read loop and heartbeat watch have ended
// (after Close, or after the stream ended): nothing reads from the stream
// any more. A write in progress may still be finishing (bounded by
// WriteTimeout); WaitHandlers waits for it too.
func (s *Session) Wait() { s.loops.Wait() }

// WaitHandlers blocks until every handler started by the session has
// returned and the writer has stopped.
func (s *Session) WaitHandlers() { s.handlers.Wait() }

// outFrame is one frame handed to the writer.
type outFrame struct {
	h       Header
	payload []byte
	done    chan error
}

// send hands a frame to the writer and waits until it is written, ctx
// ends, or the session ends. A frame the writer has not taken when ctx ends
// is never written; one it has taken is written whole (or the write fails
// and ends the session): either way the stream stays in step.
//
// A frame of at most directFrame bytes is written by the calling goroutine
// itself when no frame is being written: the writer goroutine would
// otherwise be woken on another thread for it, and the caller woken again
// when it is done, on the path of every request and every answer. On a
// network connection that write is one attempt that never waits (a frame
// that does not fit goes to the writer; the rest of one that fits only in
// part is written by a goroutine of its own while the caller waits as for
// the writer, so a caller still returns when its context ends); on another
// stream only a frame sent within the session's own context (an answer, an
// output chunk, an acknowledgement) is, and that write ends when the
// session does or at WriteTimeout, as the writer's. Frames of one goroutine
// stay in order either way (each send waits for its write); frames of
// different goroutines were never ordered.
func (s *Session) send(ctx context.Context, h Header, payload []byte) error {
	if len(payload) <= directFrame && (s.raw != nil || ctx == s.ctx) {
		select {
		case <-s.closed:
			return ErrClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.raw != nil {
			if wrote, err := s.tryWriteNow(ctx, h, payload); wrote {
				return err
			}
		} else if wrote, err := s.tryWrite(h, payload); wrote {
			return err
		}
	}
	f := &outFrame{h: h, payload: payload, done: make(chan error, 1)}
	q := s.writes
	if h.Type == TypePing || h.Type == TypePong {
		// Heartbeats pass frames queued for writing (output, large
		// answers): a busy session is not a silent one.
		q = s.urgent
	}
	select {
	case q <- f:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return ErrClosed
	}
	select {
	case err := <-f.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return ErrClosed
	}
}

// writeLoop is the session's only writer.
func (s *Session) writeLoop() {
	defer s.handlers.Done()
	d, deadlines := s.conn.(interface{ SetWriteDeadline(time.Time) error })
	for {
		var f *outFrame
		select {
		case f = <-s.urgent:
		default:
			select {
			case f = <-s.urgent:
			case f = <-s.writes:
			case <-s.closed:
				return
			}
		}
		if deadlines {
			d.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		}
		if err := s.w.WriteFrame(f.h, f.payload); err != nil {
			// A failed write may have left half a frame on the stream.
			if s.ctx.Err() == nil {
				s.cfg.Logger.Warn("write failed; ending the session", "err", err)
			}
			s.Close(fmt.Errorf("write: %w", err))
			f.done <- ErrClosed
			return
		}
		s.lastSent.Store(time.Now().UnixNano())
		f.done <- nil
	}
}

// call is one request waiting for its answer. The read loop hands it
// frames without ever waiting: output chunks queue up to the session's
// OutputBuffer, and the caller's goroutine takes them.
type call struct {
	epoch  uint32
	output bool // the caller takes ExecOutput
	ready  chan struct{}

	mu     sync.Mutex
	chunks [][]byte // ExecOutput payloads not yet taken
	bytes  int
	final  *Frame
	err    error

	// Standard input sent with the call (CallOptions.Input): bytes the
	// guest acknowledged, whether it wants no more; inReady wakes the
	// sender.
	inAcked   int
	inStopped bool
	// inErr is Input's own failure, kept before the end of the input is
	// sent (so before the guest can answer).
	inErr   error
	inReady chan struct{}
}

// inputAck applies an ExecInputAck (cl.mu held).
func (cl *call) inputAck(payload []byte) {
	var c ExecCredit
	if cl.inReady == nil || Unmarshal(payload, &c) != nil {
		return
	}
	if c.Bytes < 0 {
		cl.inStopped = true
	} else {
		cl.inAcked += c.Bytes
	}
	select {
	case cl.inReady <- struct{}{}:
	default:
	}
}

func (cl *call) signal() {
	select {
	case cl.ready <- struct{}{}:
	default:
	}
}

// Call sends a request and waits for its answer, decoding the final response
// into resp (when non-nil). ExecOutput chunks are handed to onOutput (when
// non-nil) in order, on the caller's goroutine; onOutput has returned for
// the last time when Call returns. A consumer slower than the stream delays
// no one else: its chunks wait in the call's own buffer, and when more than
// SessionConfig.OutputBuffer bytes wait, the call fails with
// ErrOutputOverflow. An Error answer is returned as *Error. The context
// bounds the whole call, the write of the request included; its expiry
// returns ctx.Err() and a late answer is dropped.
//
// A nil req sends an empty payload (Ping).
func (s *Session) Call(ctx context.Context, t Type, req, resp any, onOutput func(stream byte, data []byte)) error {
	return s.CallWith(ctx, t, req, resp, CallOptions{Output: onOutput})
}

// CallPaced is Call for a streamed Exec whose Window is window (> 0), to a
// guest announcing CapExecWindow: as onOutput takes the output, the call
// acknowledges it with ExecCredit a quarter window at a time, so the guest
// never has more than about a window of output on its way, however slow
// onOutput is. A call that ends before its answer tells the guest to drop
// the rest of the output.
func (s *Session) CallPaced(ctx context.Context, t Type, req, resp any, onOutput func(stream byte, data []byte), window int) error {
	return s.CallWith(ctx, t, req, resp, CallOptions{Output: onOutput, Window: window})
}

// CallOptions are the streams of a call beside its request and answer.
type CallOptions struct {
	// Output receives the answer's ExecOutput chunks, as Call says.
	Output func(stream byte, data []byte)
	// Window, when > 0, paces the output as CallPaced says.
	Window int
	// Input, with InputWindow > 0, is sent after the request in ExecInput
	// frames (an Exec whose InputWindow is the same, to a guest announcing
	// CapExecStdin): at most InputWindow bytes beyond those the guest has
	// acknowledged, so a command that reads slowly holds Input back rather
	// than filling memory on either side. Input's end (io.EOF) ends the
	// command's input; another error ends it too, and fails the call with
	// an error wrapping ErrInput once the answer is in. The guest saying
	// the command's input is closed stops the reading.
	Input       io.Reader
	InputWindow int
	// StopInput, when set, is called if the call ends while a Read of
	// Input still waits, and must make it return: the call returns only
	// after Input is no longer read.
	StopInput func()
}

// ErrInput fails a call whose Input failed before its end.
var ErrInput = errdefs.New(errdefs.ErrInvalidArgument, "stdin-failed", "protocol: the standard input to send could not be read to its end")

// inputChunk is the most input one ExecInput frame carries.
const inputChunk = 64 << 10

// CallWith is Call with the streams of o.
func (s *Session) CallWith(ctx context.Context, t Type, req, resp any, o CallOptions) (err error) {
	onOutput, window := o.Output, o.Window
	if err := ctx.Err(); err != nil {
		return err
	}
	var payload []byte
	if req != nil {
		var err error
		if payload, err = Marshal(req); err != nil {
			return err
		}
	}
	epoch := s.epoch.Load()
	if epoch == 0 {
		return fmt.Errorf("%w: no session yet", ErrClosed)
	}
	id := s.nextID.Add(1)
	cl := &call{epoch: epoch, output: onOutput != nil, ready: make(chan struct{}, 1)}
	withInput := o.Input != nil && o.InputWindow > 0
	if withInput {
		cl.inReady = make(chan struct{}, 1)
	}
	s.mu.Lock()
	s.pending[id] = cl
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}()
	select {
	case <-s.closed:
		return ErrClosed
	default:
	}
	ended, answered, taken := false, false, 0
	if window > 0 {
		defer func() {
			if !answered {
				s.stopOutput(epoch, id)
			}
		}()
	}
	if err := s.send(ctx, Header{Type: t, Epoch: epoch, ID: id}, payload); err != nil {
		if !errors.Is(err, ErrClosed) {
			return err
		}
		// The session ended after the request left, maybe after its
		// answer came: look once.
		ended = true
	}
	if withInput && !ended {
		pctx, stop := context.WithCancel(ctx)
		pumped := make(chan error, 1)
		go func() { pumped <- s.sendInput(pctx, cl, epoch, id, o.Input, o.InputWindow) }()
		defer func() {
			stop()
			var inErr error
			select {
			case inErr = <-pumped:
			default:
				// The answer may come before the input's goroutine
				// returns: a failure it kept before sending the end of
				// the input is the input's own; one after StopInput is
				// the stop's.
				cl.mu.Lock()
				inErr = cl.inErr
				cl.mu.Unlock()
				if inErr == nil && o.StopInput != nil {
					o.StopInput()
				}
				<-pumped
			}
			if err == nil && inErr != nil {
				err = fmt.Errorf("%w: %w", ErrInput, inErr)
			}
		}()
	}
	for {
		cl.mu.Lock()
		chunks, final, err := cl.chunks, cl.final, cl.err
		cl.chunks, cl.bytes = nil, 0
		cl.mu.Unlock()
		if err != nil {
			return err
		}
		for _, c := range chunks {
			if st, data, err := ParseExecOutput(c); err == nil {
				onOutput(st, data)
				taken += len(data)
			}
		}
		if final != nil {
			answered = true
			return decodeAnswer(*final, resp)
		}
		if window > 0 && taken >= window/4 {
			if err := s.sendCredit(ctx, epoch, id, taken); err != nil && !errors.Is(err, ErrClosed) {
				return err
			}
			taken = 0
		}
		if ended {
			return ErrClosed
		}
		select {
		case <-cl.ready:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.closed:
			// An answer read just before the stream ended still counts
			// (an AuditAck the guest must record): look once more.
			ended = true
		}
	}
}

// sendInput sends in as the standard input of call id, within window bytes
// beyond those the guest acknowledged, until its end, the guest's "no
// more", or ctx's end. It returns in's error other than io.EOF.
func (s *Session) sendInput(ctx context.Context, cl *call, epoch uint32, id uint64, in io.Reader, window int) error {
	buf := make([]byte, min(inputChunk, window))
	sent := 0
	for {
		var room int
		for {
			cl.mu.Lock()
			stop := cl.inStopped || cl.final != nil || cl.err != nil
			room = window - (sent - cl.inAcked)
			cl.mu.Unlock()
			if stop {
				return nil
			}
			if room > 0 {
				break
			}
			select {
			case <-cl.inReady:
			case <-ctx.Done():
				return nil
			case <-s.closed:
				return nil
			}
		}
		n, err := in.Read(buf[:min(len(buf), room)])
		if n > 0 {
			if s.send(ctx, Header{Type: TypeExecInput, Flags: FlagMore, Epoch: epoch, ID: id}, buf[:n]) != nil {
				return nil
			}
			sent += n
		}
		if err != nil {
			// The end of the input, also when reading it failed: the
			// command is not left waiting for more.
			if !errors.Is(err, io.EOF) {
				cl.mu.Lock()
				cl.inErr = err
				cl.mu.Unlock()
			}
			s.send(ctx, Header{Type: TypeExecInput, Epoch: epoch, ID: id}, nil)
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func (s *Session) sendCredit(ctx context.Context, epoch uint32, id uint64, n int) error {
	payload, _ := Marshal(ExecCredit{Bytes: n})
	return s.send(ctx, Header{Type: TypeExecCredit, Epoch: epoch, ID: id}, payload)
}

// stopOutput tells the guest, without waiting, that a paced call reads no
// more of its output.
func (s *Session) stopOutput(epoch uint32, id uint64) {
	go func() {
		// Bounded: send returns when the session ends.
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.WriteTimeout)
		defer cancel()
		s.sendCredit(ctx, epoch, id, -1)
	}()
}

func decodeAnswer(f Frame, resp any) error {
	if f.Type == TypeError {
		var e Error
		if err := Unmarshal(f.Payload, &e); err != nil {
			return err
		}
		return &e
	}
	if resp == nil {
		return nil
	}
	return Unmarshal(f.Payload, resp)
}

// noSession reports whether an Error payload carries CodeNoSession.
func noSession(payload []byte) bool {
	var e Error
	return Unmarshal(payload, &e) == nil && e.Code == CodeNoSession
}

func (s *Session) touch() { s.lastRecv.Store(time.Now().UnixNano()) }

// pong answers a Ping, from the read loop when no frame is being written.
func (s *Session) pong(epoch uint32, id uint64) {
	h := Header{Type: TypePong, Flags: FlagResponse, Epoch: epoch, ID: id}
	if !s.writeNow(h) {
		s.send(s.ctx, h, nil)
	}
	if c := s.nudge.Load(); c != nil {
		if hb := time.Duration(s.heartbeat.Load()); hb > 0 {
			c.reset(SilenceIntervals * hb)
		}
	}
}

func (s *Session) readLoop() {
	defer s.loops.Done()
	for {
		f, err := s.r.Next()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				s.refused(fe)
				continue
			}
			if s.guest && errors.Is(err, io.EOF) {
				s.cfg.Logger.Debug("connection ended", "skipped_bytes", s.r.Skipped())
			} else if s.guest && s.ctx.Err() == nil {
				s.cfg.Logger.Info("connection ended", "err", err)
			}
			s.Close(fmt.Errorf("read: %w", err))
			s.r.Reset(nil)
			return
		}
		s.partial.Store(s.r.Buffered() > 0)
		s.dispatch(f)
	}
}

// dispatch acts on one frame; f's payload aliases the reader's buffer.
func (s *Session) dispatch(f Frame) {
	epoch := s.epoch.Load()
	if s.guest {
		// Any frame is a sign of life of the host's stream.
		s.touch()
	} else {
		if f.Epoch != epoch {
			// Another session's frame proves nothing about this one's
			// peer: it does not count for the heartbeat either.
			s.dropped.Add(1)
			return
		}
		s.touch()
	}
	if f.Flags&FlagResponse != 0 {
		if epoch == 0 || f.Epoch != epoch {
			return // an answer to another session: nobody waits for it
		}
		if f.Type == TypePong && !s.waited(f.ID) {
			return // pongs answer the heartbeat, which waits for none
		}
		if !s.guest && f.Type == TypeError && noSession(f.Payload) {
			// The guest daemon restarted behind a stream that stayed
			// open (a virtio-serial port): this session is gone.
			s.Close(ErrNoSession)
			return
		}
		s.deliver(f)
		return
	}
	if s.guest && f.Type == TypeHello && s.cfg.OnHello != nil {
		s.hello(f)
		return
	}
	if epoch == 0 {
		// Answer in the request's epoch: a host whose session outlived a
		// restart of this daemon learns at once that it must say Hello.
		s.answerError(f.Epoch, f.ID, &Error{Code: CodeNoSession, Message: "no session: send Hello first"})
		return
	}
	if f.Epoch != epoch {
		s.cfg.Logger.Debug("request of another session ignored", "type", f.Type, "epoch", f.Epoch, "session", epoch)
		return
	}
	if f.Type == TypePing {
		s.pong(epoch, f.ID)
		return
	}
	if f.Type == TypeExecCredit {
		s.credit(f)
		return
	}
	if f.Type == TypeExecInput {
		s.input(f)
		return
	}
	h, ok := s.cfg.Handlers[f.Type]
	if !ok || h.Serve == nil {
		s.answerError(epoch, f.ID, &Error{Code: CodeUnsupportedType, Message: "the " + s.cfg.Side + " does not accept " + f.Type.String()})
		return
	}
	r := &Request{Type: f.Type, ID: f.ID, Epoch: epoch, Payload: f.Clone().Payload, s: s}
	if h.Serial {
		// The serial loop starts with the first Serial request: a session
		// that never gets one (every guest's) keeps one goroutine fewer.
		s.serialOnce.Do(func() {
			s.loops.Add(1)
			go s.serialLoop()
		})
		select {
		case s.serial <- r:
		case <-s.closed:
		}
		return
	}
	select {
	case s.inflight <- struct{}{}:
	default:
		s.answerError(epoch, f.ID, &Error{Code: CodeBusy, Message: "too many requests in flight"})
		return
	}
	if h.Input {
		// Registered before the handler starts: the input's first frames
		// may arrive before it looks for them.
		r.in = &Input{s: s, epoch: epoch, id: f.ID, changed: make(chan struct{})}
		s.mu.Lock()
		s.inputs[f.ID] = r.in
		s.mu.Unlock()
	}
	j := job{h: h, r: r}
	select {
	case s.work <- j: // an idle worker takes it
	default:
		s.handlers.Add(1)
		go s.worker(j)
	}
}

// job is one request for a handler worker.
type job struct {
	h Handler
	r *Request
}

// maxIdleWorkers is how many handler goroutines a session keeps waiting
// for the next request. A worker keeps the stack it grew (JSON decoding
// grows a new goroutine's stack, and copying it cost a tenth of an exec's
// CPU in the guest); a waiting goroutine costs no wakeups.
const maxIdleWorkers = 4

// worker serves j, then further requests while it is one of the idle
// workers the session keeps.
func (s *Session) worker(j job) {
	defer s.handlers.Done()
	for {
		v, err := j.h.Serve(s.ctx, j.r)
		s.served(j.r)
		// The slot is free before the answer leaves: a peer that has its
		// answer may send the next request at once without being told busy.
		<-s.inflight
		s.answer(j.r, j.h.Answer, v, err)
		if s.idle.Add(1) > maxIdleWorkers {
			s.idle.Add(-1)
			return
		}
		select {
		case j = <-s.work:
			s.idle.Add(-1)
		case <-s.closed:
			s.idle.Add(-1)
			return
		}
	}
}

func (s *Session) serialLoop() {
	defer s.loops.Done()
	for {
		select {
		case r := <-s.serial:
			h := s.cfg.Handlers[r.Type]
			s.handlers.Add(1)
			v, err := h.Serve(s.ctx, r)
			s.served(r)
			s.answer(r, h.Answer, v, err)
			s.handlers.Done()
		case <-s.closed:
			return
		}
	}
}

// answer sends a handler's answer.
func (s *Session) answer(r *Request, t Type, v any, err error) {
	if err != nil {
		var pe *Error
		if !errors.As(err, &pe) {
			pe = &Error{Code: CodeInternal, Message: err.Error()}
		}
		s.answerError(r.Epoch, r.ID, pe)
		return
	}
	payload, err := Marshal(v)
	if err != nil {
		s.answerError(r.Epoch, r.ID, &Error{Code: CodeInternal, Message: err.Error()})
		return
	}
	s.send(s.ctx, Header{Type: t, Flags: FlagResponse, Epoch: r.Epoch, ID: r.ID}, payload)
}

func (s *Session) answerError(epoch uint32, id uint64, e *Error) {
	payload, _ := Marshal(e)
	s.send(s.ctx, Header{Type: TypeError, Flags: FlagResponse, Epoch: epoch, ID: id}, payload)
}

// hello starts (or replaces) the guest's session (§5.1).
func (s *Session) hello(f Frame) {
	var h Hello
	if err := Unmarshal(f.Payload, &h); err != nil {
		s.answerError(f.Epoch, f.ID, &Error{Code: CodeBadRequest, Message: err.Error()})
		return
	}
	if h.Epoch == 0 {
		s.answerError(f.Epoch, f.ID, &Error{Code: CodeBadRequest, Message: "hello: epoch 0"})
		return
	}
	hi, lo := min(h.MaxVersion, Version), max(h.MinVersion, MinVersion)
	if hi < lo {
		s.answerError(h.Epoch, f.ID, &Error{Code: CodeUnsupportedVersion,
			Message: fmt.Sprintf("the guest speaks protocol versions %d..%d, the host %d..%d", MinVersion, Version, h.MinVersion, h.MaxVersion)})
		return
	}
	ack := s.cfg.OnHello(h)
	ack.ProtocolVersion = hi
	s.heartbeat.Store(int64(time.Duration(h.HeartbeatMillis) * time.Millisecond))
	s.lastRecv.Store(time.Now().UnixNano())
	select {
	case s.hbSet <- struct{}{}:
	default:
	}
	if c := s.nudge.Load(); c != nil {
		c.reset(0)
	}
	if old := s.epoch.Swap(h.Epoch); old != 0 && old != h.Epoch {
		s.failCalls(ErrReplaced)
	}
	s.cfg.Logger.Info("session started", "epoch", h.Epoch, "host_version", h.HostVersion, "protocol", hi, "heartbeat_ms", h.HeartbeatMillis)
	payload, err := Marshal(ack)
	if err != nil {
		s.answerError(h.Epoch, f.ID, &Error{Code: CodeInternal, Message: err.Error()})
		return
	}
	if s.send(s.ctx, Header{Type: TypeHelloAck, Flags: FlagResponse, Epoch: h.Epoch, ID: f.ID}, payload) == nil && s.cfg.OnSession != nil {
		s.cfg.OnSession(h.Epoch)
	}
}

// failCalls fails every call in flight.
func (s *Session) failCalls(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cl := range s.pending {
		cl.mu.Lock()
		if cl.final == nil && cl.err == nil {
			cl.err = err
		}
		cl.mu.Unlock()
		cl.signal()
	}
}

// waited reports whether a call waits for answers to id.
func (s *Session) waited(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending[id] != nil
}

// deliver hands a response to the call waiting for it, or drops it. It
// never waits for the caller.
func (s *Session) deliver(f Frame) {
	s.mu.Lock()
	cl := s.pending[f.ID]
	s.mu.Unlock()
	if cl == nil || cl.epoch != f.Epoch {
		s.dropped.Add(1)
		return
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	switch {
	case cl.final != nil || cl.err != nil:
		s.dropped.Add(1)
		return
	case f.Type == TypeExecInputAck:
		cl.inputAck(f.Payload)
		return
	case f.Type != TypeExecOutput:
		final := f.Clone()
		cl.final = &final
	case !cl.output:
		return
	case cl.bytes+len(f.Payload) > s.cfg.OutputBuffer:
		cl.err = ErrOutputOverflow
		cl.chunks, cl.bytes = nil, 0
		s.cfg.Logger.Warn("call failed: its output consumer fell behind", "type", f.Type, "id", f.ID, "buffer_bytes", s.cfg.OutputBuffer)
	default:
		cl.chunks = append(cl.chunks, f.Clone().Payload)
		cl.bytes += len(f.Payload)
	}
	cl.signal()
}

// refused handles a frame the reader could not deliver (too large, or a
// version or flags this package does not speak). A request is answered with
// an Error; a response fails the call waiting for it at once instead of
// leaving it to its deadline.
func (s *Session) refused(fe *FrameError) {
	h := fe.Header
	epoch := s.epoch.Load()
	if !s.guest {
		if h.Epoch != epoch {
			s.dropped.Add(1)
			return
		}
		s.touch()
	}
	s.cfg.Logger.Warn("frame refused", "err", fe)
	code := CodeTooLarge
	if errors.Is(fe, ErrUnsupportedVersion) {
		code = CodeUnsupportedVersion
	}
	if h.Flags&FlagResponse == 0 {
		s.answerError(epoch, h.ID, &Error{Code: code, Message: fe.Error()})
		return
	}
	if epoch == 0 || h.Epoch != epoch {
		return
	}
	payload, _ := Marshal(Error{Code: code, Message: fe.Error()})
	s.deliver(Frame{Header: Header{Version: Version, Type: TypeError, Flags: FlagResponse, Epoch: h.Epoch, ID: h.ID, Length: uint32(len(payload))}, Payload: payload})
}

// lastLife is the last time the peer showed life, as far as this end can
// tell at now: a frame of the session, or a byte of a frame still
// arriving (on the guest's end any byte: the host's stream carries nothing
// else), and now itself while the read loop is busy with what it received
// (what the peer sent since waits unread: no silence of the peer's).
func (s *Session) lastLife(now time.Time, bound time.Duration) time.Time {
	last := s.lastRecv.Load()
	if b := s.lastBytes.Load(); b > last && (s.guest || s.partial.Load()) {
		last = b
	}
	if !s.reading.Load() {
		// Busy, but not for ever: a read loop stuck for a whole bound
		// behind a handler is no proof of the peer's life.
		if busy := s.busySince.Load(); now.UnixNano()-busy < int64(bound) && busy > last {
			last = now.UnixNano()
		}
	}
	return time.Unix(0, last)
}

// watchLoop watches the peer's liveness with one timer, armed for the end of
// the allowed silence and re-armed when it fires: an idle session wakes up
// only when something is due. On the host's end it also pings whenever
// nothing was sent for a heartbeat interval. After SilenceIntervals silent
// intervals it probes, and ends the session (ErrHeartbeat) when the probe
// too goes unanswered for ProbeIntervals intervals.
func (s *Session) watchLoop(ping bool) {
	defer s.loops.Done()
	t := s.newWatchClock()
	defer t.stop()
	var (
		due     time.Time // when the timer was meant to fire
		probeAt time.Time // the outstanding probe, zero for none
		credit  time.Duration
	)
	for {
		hb := time.Duration(s.heartbeat.Load())
		if hb <= 0 {
			select {
			case <-s.hbSet:
				continue
			case <-s.closed:
				return
			}
		}
		bound, probeWait := SilenceIntervals*hb, ProbeIntervals*hb
		now := time.Now()
		var next time.Time
		last := s.lastLife(now, bound)
		if !probeAt.IsZero() && last.After(probeAt) {
			s.probesAnswerd.Add(1)
			if s.cfg.OnProbe != nil {
				s.cfg.OnProbe(true)
			}
			s.cfg.Logger.Info("peer answered the liveness probe: slow, not gone", "epoch", s.epoch.Load(), "after", now.Sub(probeAt).Round(time.Millisecond))
			probeAt = time.Time{}
		}
		silent := now.Sub(last)
		judge := silent >= bound && (probeAt.IsZero() || now.Sub(probeAt) >= probeWait)
		late := now.Sub(due)
		switch {
		case judge && !due.IsZero() && late > lateSlack && credit < bound:
			// This end got no CPU for a while, and its read loop most
			// likely neither: give the loop as long again to read what
			// arrived before judging the peer.
			extra := min(late, bound-credit)
			credit += extra
			next = earliest(next, now.Add(extra))
		case silent < bound:
			credit = 0
			next = earliest(next, last.Add(bound))
		case !judge:
			next = earliest(next, probeAt.Add(probeWait))
		case probeAt.IsZero():
			probeAt = now
			s.probes.Add(1)
			s.cfg.Logger.Info("peer silent; probing before giving up", "epoch", s.epoch.Load(), "silent", silent.Round(time.Millisecond), "heartbeat", hb)
			s.sendPing(hb)
			next = earliest(next, now.Add(probeWait))
		default:
			if s.guest {
				s.cfg.Logger.Warn("host missed heartbeats and the probe; ending the session", "epoch", s.epoch.Load(), "heartbeat", hb)
			}
			if s.cfg.OnProbe != nil {
				s.cfg.OnProbe(false)
			}
			s.Close(ErrHeartbeat)
			return
		}
		if ping {
			// The host's heartbeat: a Ping whenever nothing else (a
			// probe included) was sent for an interval.
			sent := time.Unix(0, s.lastSent.Load())
			if time.Since(sent) >= hb {
				s.sendPing(hb)
				sent = time.Now()
			}
			next = earliest(next, pingSlot(sent.Add(hb), hb))
		}
		arm(t, next)
		if !t.wait() {
			return
		}
		due = t.due()
	}
}

// pingSlot is when a Ping due at at is sent: at rounded up to a tenth of
// the interval on the clock, so that the pings of a host's idle sessions
// share their wakeups (one per slot instead of one per session; 1,000
// agents at 2 s woke the host daemon 500 times a second).
func pingSlot(at time.Time, hb time.Duration) time.Time {
	grid := hb / 10
	if grid <= 0 {
		return at
	}
	slot := at.Truncate(grid)
	if slot.Before(at) {
		slot = slot.Add(grid)
	}
	return slot
}

// earliest is the earlier of two times, a zero one not counting.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// arm sets the timer to fire at at (at once when past).
func arm(t watchClock, at time.Time) {
	t.reset(max(time.Until(at), 0))
}

// watchClock is the liveness watch's one timer.
type watchClock interface {
	reset(d time.Duration)
	// wait waits for the timer or a change of heartbeat; false when the
	// session ended.
	wait() bool
	// due is when the timer was last meant to fire.
	due() time.Time
	stop()
}

// newWatchClock returns the watch's timer: with KernelTimer one the kernel
// keeps (its expiry wakes no thread but the one waiting for frames, where a
// runtime timer wakes the Go runtime's monitor too), else, or where that
// fails, a runtime timer.
func (s *Session) newWatchClock() watchClock {
	if s.cfg.KernelTimer {
		if t, err := ktimer.New(); err == nil {
			c := &kernelClock{t: t, s: s, release: context.AfterFunc(s.ctx, func() { t.Close() })}
			s.nudge.Store(c)
			return c
		}
	}
	return &runtimeClock{t: time.NewTimer(time.Hour), s: s}
}

type runtimeClock struct {
	t  *time.Timer
	s  *Session
	at time.Time
}

func (c *runtimeClock) reset(d time.Duration) { c.at = time.Now().Add(d); c.t.Reset(d) }
func (c *runtimeClock) due() time.Time        { return c.at }
func (c *runtimeClock) stop()                 { c.t.Stop() }

func (c *runtimeClock) wait() bool {
	select {
	case <-c.t.C:
		return true
	case <-c.s.hbSet:
		c.t.Stop()
		return true
	case <-c.s.closed:
		return false
	}
}

// kernelClock: a change of heartbeat fires the timer at once, and each
// Ping from the host moves it to the end of the silence allowed after that
// Ping (Session.nudge, Session.pong): while the host pings, the watch never
// wakes. The end of the session closes it.
type kernelClock struct {
	t       *ktimer.Timer
	s       *Session
	release func() bool
	mu      sync.Mutex   // the timer and at move together
	at      atomic.Int64 // due, UnixNano
}

func (c *kernelClock) reset(d time.Duration) {
	c.mu.Lock()
	c.at.Store(time.Now().Add(d).UnixNano())
	c.t.Reset(d)
	c.mu.Unlock()
}

func (c *kernelClock) due() time.Time { return time.Unix(0, c.at.Load()) }

func (c *kernelClock) stop() {
	c.s.nudge.Store(nil)
	c.release()
	c.t.Close()
}

func (c *kernelClock) wait() bool {
	err := c.t.Wait()
	select {
	case <-c.s.hbSet:
	default:
	}
	return err == nil && c.s.ctx.Err() == nil
}

// sendPing sends a Ping ahead of queued frames, waiting at most one interval
// for the writer. The Pong is matched by no caller: its arrival is the
// sign of life.
func (s *Session) sendPing(hb time.Duration) {
	ctx, cancel := context.WithTimeout(s.ctx, hb)
	s.send(ctx, Header{Type: TypePing, Epoch: s.epoch.Load(), ID: s.nextID.Add(1)}, nil)
	cancel()
}

// directFrame bounds the frames send writes from the calling goroutine: a
// larger one goes through the writer.
const directFrame = 64 << 10

// tryWriteNow is tryWrite on a network connection, in one attempt that
// does not wait for room; a frame that fit only in part is finished by a
// goroutine of its own, and the caller waits for it as for the writer.
func (s *Session) tryWriteNow(ctx context.Context, h Header, payload []byte) (bool, error) {
	wrote, finish, err := s.w.TryWriteFrameNow(s.raw, h, payload)
	switch {
	case !wrote:
		return false, nil
	case err != nil || finish == nil:
		return true, s.wrote(err)
	}
	done := make(chan error, 1)
	go func() {
		if d, ok := s.conn.(interface{ SetWriteDeadline(time.Time) error }); ok {
			d.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		}
		done <- s.wrote(finish())
	}()
	select {
	case err := <-done:
		return true, err
	case <-ctx.Done():
		return true, ctx.Err()
	case <-s.closed:
		return true, ErrClosed
	}
}

// writeFailed ends the session after a failed write (it may have left half
// a frame on the stream).
func (s *Session) writeFailed(err error) {
	if s.ctx.Err() == nil {
		s.cfg.Logger.Warn("write failed; ending the session", "err", err)
	}
	s.Close(fmt.Errorf("write: %w", err))
}

// tryWrite writes one frame from the calling goroutine if no other write is
// in progress, and reports whether it did; a failed write ends the session
// (it may have left half a frame on the stream) and is ErrClosed, as from
// the writer.
func (s *Session) tryWrite(h Header, payload []byte) (bool, error) {
	if d, ok := s.conn.(interface{ SetWriteDeadline(time.Time) error }); ok {
		d.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	}
	wrote, err := s.w.TryWriteFrame(h, payload)
	if !wrote {
		return false, nil
	}
	return true, s.wrote(err)
}

// wrote takes the outcome of a frame written outside the writer: a failed
// write ends the session and is ErrClosed; a done one counts as sent.
func (s *Session) wrote(err error) error {
	if err != nil {
		s.writeFailed(err)
		return ErrClosed
	}
	s.lastSent.Store(time.Now().UnixNano())
	return nil
}

// writeNow writes a frame without payload from the calling goroutine when
// no frame is being written, and reports whether it did: the read loop's
// Pong, which the writer goroutine would otherwise write after being woken
// on a second thread, for every heartbeat of an idle session. Like send,
// it waits for the write (bounded by WriteTimeout).
func (s *Session) writeNow(h Header) bool {
	if s.raw != nil {
		wrote, _ := s.tryWriteNow(s.ctx, h, nil)
		return wrote
	}
	wrote, _ := s.tryWrite(h, nil)
	return wrote
}
