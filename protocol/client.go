package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
)

// ErrClosed is returned by calls on a session that has ended: the stream
// closed, a heartbeat was missed, or Close was called. The cause is in
// Client.Err.
var ErrClosed = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "protocol: session closed")

// ErrNoSession is the cause of a session ended because the guest answered
// that it holds no session: its daemon restarted while the stream stayed open.
var ErrNoSession = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "protocol: the guest holds no session (agent restarted)")

// noSession reports whether an Error payload carries CodeNoSession.
func noSession(payload []byte) bool {
	var e Error
	return Unmarshal(payload, &e) == nil && e.Code == CodeNoSession
}

// ErrHeartbeat is the cause of a session ended because the peer stopped
// answering heartbeats.
var ErrHeartbeat = errdefs.New(errdefs.ErrUnavailable, "agent-unavailable", "protocol: peer missed heartbeats")

// ClientConfig configures the host side of a session.
type ClientConfig struct {
	// Epoch identifies the session; it must differ from the previous
	// session's on the same stream. 0 picks one from the clock.
	Epoch       uint32
	HostVersion string
	// Heartbeat is the ping interval (default 2 s); three silent intervals
	// end the session.
	Heartbeat time.Duration
	// WriteTimeout bounds each frame write when the stream supports write
	// deadlines (default 10 s).
	WriteTimeout time.Duration
	MaxPayload   uint32
	// OnAudit receives each audit batch the guest sends, one at a time, and
	// returns the highest sequence number stored durably; that number is
	// acknowledged to the guest. An error leaves the batch unacknowledged
	// (the guest sends it again).
	OnAudit func(AuditBatch) (uint64, error)
	Logger  *slog.Logger
}

// Client is the host side of one session with a guest agent: it performs the
// handshake, multiplexes requests by id, answers the guest's pings and audit
// batches, and pings the guest. It is safe for concurrent use.
type Client struct {
	cfg  ClientConfig
	conn io.ReadWriteCloser
	w    *Writer
	ack  HelloAck

	nextID   atomic.Uint64
	lastRecv atomic.Int64 // unix nanoseconds of the last frame received
	dropped  atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]*call

	audit     chan Frame
	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type call struct {
	frames chan Frame // responses, the last one without FlagMore
	done   chan struct{}
}

// Handshake starts a session on conn: it sends Hello, waits for HelloAck
// within ctx, and returns the running client. On failure conn is closed.
func Handshake(ctx context.Context, conn io.ReadWriteCloser, cfg ClientConfig) (*Client, error) {
	if cfg.Epoch == 0 {
		cfg.Epoch = uint32(time.Now().UnixNano()>>10) | 1
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 2 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Client{
		cfg: cfg, conn: conn, w: NewWriter(conn),
		pending: make(map[uint64]*call),
		// One batch waits while one is stored: a guest that floods audit
		// batches is held back by the stream, not buffered in the host.
		audit:  make(chan Frame, 1),
		closed: make(chan struct{}),
	}
	c.lastRecv.Store(time.Now().UnixNano())
	go c.readLoop(NewReader(conn, cfg.MaxPayload))

	var ack HelloAck
	err := c.Call(ctx, TypeHello, Hello{
		Epoch: cfg.Epoch, MinVersion: MinVersion, MaxVersion: Version,
		HostVersion: cfg.HostVersion, HeartbeatMillis: cfg.Heartbeat.Milliseconds(),
	}, &ack, nil)
	if err != nil {
		c.Close(err)
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if ack.ProtocolVersion < MinVersion || ack.ProtocolVersion > Version {
		err := fmt.Errorf("handshake: guest chose protocol version %d, host speaks %d..%d", ack.ProtocolVersion, MinVersion, Version)
		c.Close(err)
		return nil, err
	}
	c.ack = ack
	go c.auditLoop()
	go c.heartbeatLoop()
	return c, nil
}

// Hello returns the guest's answer to the handshake.
func (c *Client) Hello() HelloAck { return c.ack }

// Epoch returns the session epoch.
func (c *Client) Epoch() uint32 { return c.cfg.Epoch }

// Done is closed when the session ends.
func (c *Client) Done() <-chan struct{} { return c.closed }

// Err returns why the session ended, nil while it runs.
func (c *Client) Err() error {
	select {
	case <-c.closed:
		return c.closeErr
	default:
		return nil
	}
}

// Dropped reports frames dropped because they belonged to another session
// or answered a request nobody waits for any more.
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// Close ends the session with the given cause (nil for a plain close) and
// closes the stream. Calls in flight return ErrClosed.
func (c *Client) Close(cause error) {
	c.closeOnce.Do(func() {
		if cause == nil {
			cause = ErrClosed
		}
		c.closeErr = cause
		close(c.closed)
		c.conn.Close()
	})
}

func (c *Client) write(h Header, payload []byte) error {
	h.Epoch = c.cfg.Epoch
	if d, ok := c.conn.(interface{ SetWriteDeadline(time.Time) error }); ok {
		d.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	}
	if err := c.w.WriteFrame(h, payload); err != nil {
		// A failed write may have left half a frame on the stream.
		c.Close(fmt.Errorf("write: %w", err))
		return ErrClosed
	}
	return nil
}

// Call sends a request and waits for its answer, decoding the final response
// into resp (when non-nil). ExecOutput chunks are handed to onOutput (when
// non-nil) in order, from a goroutine of the client's: onOutput must not
// block for long. An Error answer is returned as *Error. The context bounds
// the whole call; its expiry returns ctx.Err() and the late answer is dropped.
//
// A nil req sends an empty payload (Ping).
func (c *Client) Call(ctx context.Context, t Type, req, resp any, onOutput func(stream byte, data []byte)) error {
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
	id := c.nextID.Add(1)
	cl := &call{frames: make(chan Frame, 64), done: make(chan struct{})}
	c.mu.Lock()
	c.pending[id] = cl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		close(cl.done)
	}()
	select {
	case <-c.closed:
		return ErrClosed
	default:
	}
	if err := c.write(Header{Type: t, ID: id}, payload); err != nil {
		return err
	}
	for {
		select {
		case f := <-cl.frames:
			if f.Type == TypeExecOutput {
				if onOutput != nil {
					if s, data, err := ParseExecOutput(f.Payload); err == nil {
						onOutput(s, data)
					}
				}
				continue
			}
			return decodeAnswer(f, resp)
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closed:
			return ErrClosed
		}
	}
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

func (c *Client) readLoop(r *Reader) {
	for {
		f, err := r.Next()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				c.refused(fe)
				continue
			}
			c.Close(fmt.Errorf("read: %w", err))
			return
		}
		if f.Epoch != c.cfg.Epoch {
			// Another session's frame proves nothing about this one's
			// peer: it does not count for the heartbeat either.
			c.dropped.Add(1)
			continue
		}
		c.lastRecv.Store(time.Now().UnixNano())
		if f.Flags&FlagResponse != 0 {
			if f.Type == TypePong && !c.waited(f.ID) {
				continue // pongs answer the heartbeat, which waits for none
			}
			if f.Type == TypeError && noSession(f.Payload) {
				// The guest daemon restarted behind a stream that stayed
				// open (a virtio-serial port): this session is gone.
				c.Close(ErrNoSession)
				return
			}
			c.deliver(f.Clone())
			continue
		}
		switch f.Type {
		case TypePing:
			c.write(Header{Type: TypePong, Flags: FlagResponse, ID: f.ID}, nil)
		case TypeAuditBatch:
			select {
			case c.audit <- f.Clone():
			case <-c.closed:
				return
			}
		default:
			c.answerError(f.ID, CodeUnsupportedType, "the host does not accept "+f.Type.String())
		}
	}
}

// waited reports whether a call waits for answers to id.
func (c *Client) waited(id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[id] != nil
}

// deliver hands a response to the call waiting for it, or drops it.
func (c *Client) deliver(f Frame) {
	c.mu.Lock()
	cl := c.pending[f.ID]
	c.mu.Unlock()
	if cl == nil {
		c.dropped.Add(1)
		return
	}
	select {
	case cl.frames <- f:
	case <-cl.done:
		c.dropped.Add(1)
	case <-c.closed:
	}
}

// refused handles a frame the reader could not deliver (too large, or a
// version or flags this package does not speak). A request is answered with
// an Error; a response fails the call waiting for it at once instead of
// leaving it to its deadline.
func (c *Client) refused(fe *FrameError) {
	h := fe.Header
	if h.Epoch != c.cfg.Epoch {
		c.dropped.Add(1)
		return
	}
	c.lastRecv.Store(time.Now().UnixNano())
	c.cfg.Logger.Warn("agent frame refused", "err", fe)
	code := CodeTooLarge
	if errors.Is(fe, ErrUnsupportedVersion) {
		code = CodeUnsupportedVersion
	}
	if h.Flags&FlagResponse == 0 {
		c.answerError(h.ID, code, fe.Error())
		return
	}
	payload, _ := Marshal(Error{Code: code, Message: fe.Error()})
	c.deliver(Frame{Header: Header{Version: Version, Type: TypeError, Flags: FlagResponse, Epoch: h.Epoch, ID: h.ID, Length: uint32(len(payload))}, Payload: payload})
}

func (c *Client) answerError(id uint64, code, msg string) {
	payload, _ := Marshal(Error{Code: code, Message: msg})
	c.write(Header{Type: TypeError, Flags: FlagResponse, ID: id}, payload)
}

func (c *Client) auditLoop() {
	for {
		select {
		case f := <-c.audit:
			var b AuditBatch
			if err := Unmarshal(f.Payload, &b); err != nil {
				c.answerError(f.ID, CodeBadRequest, err.Error())
				continue
			}
			if c.cfg.OnAudit == nil {
				c.answerError(f.ID, CodeUnsupportedType, "audit ingestion is not configured")
				continue
			}
			upTo, err := c.cfg.OnAudit(b)
			if err != nil {
				c.cfg.Logger.Error("audit ingestion failed", "err", err)
				c.answerError(f.ID, CodeInternal, err.Error())
				continue
			}
			payload, _ := Marshal(AuditAck{UpToSeq: upTo})
			c.write(Header{Type: TypeAuditAck, Flags: FlagResponse, ID: f.ID}, payload)
		case <-c.closed:
			return
		}
	}
}

func (c *Client) heartbeatLoop() {
	t := time.NewTicker(c.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if time.Since(time.Unix(0, c.lastRecv.Load())) > 3*c.cfg.Heartbeat {
				c.Close(ErrHeartbeat)
				return
			}
			// The pong is matched by no caller; its arrival refreshes lastRecv.
			c.write(Header{Type: TypePing, ID: c.nextID.Add(1)}, nil)
		case <-c.closed:
			return
		}
	}
}
