package protocol

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"
)

// ClientConfig configures the host side of a session.
type ClientConfig struct {
	// Epoch identifies the session; it must differ from the previous
	// session's on the same stream. 0 picks one from the clock.
	Epoch       uint32
	HostVersion string
	// Heartbeat is the ping interval (default 2 s); silence is probed and
	// ends the session as protocol §5.4 says.
	Heartbeat time.Duration
	// WriteTimeout bounds each frame write when the stream supports write
	// deadlines (default 10 s).
	WriteTimeout time.Duration
	MaxPayload   uint32
	// OutputBuffer bounds the ExecOutput bytes each call holds for its
	// consumer (default DefaultOutputBuffer); see Session.Call.
	OutputBuffer int
	// OnAudit receives each audit batch the guest sends, one at a time, and
	// returns the highest sequence number stored durably; that number is
	// acknowledged to the guest. An error leaves the batch unacknowledged
	// (the guest sends it again).
	OnAudit func(AuditBatch) (uint64, error)
	// OnProbe, when set, is told the outcome of each liveness probe.
	OnProbe func(answered bool)
	Logger  *slog.Logger
}

// Client is the host side of one session with a guest agent: a Session
// that has performed the handshake. It multiplexes requests by id, answers
// the guest's pings and audit batches, and pings the guest. It is safe for
// concurrent use.
type Client struct {
	*Session
	ack HelloAck
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := NewSession(conn, SessionConfig{
		Epoch:        cfg.Epoch,
		WriteTimeout: cfg.WriteTimeout,
		MaxPayload:   cfg.MaxPayload,
		OutputBuffer: cfg.OutputBuffer,
		Handlers:     map[Type]Handler{TypeAuditBatch: auditHandler(cfg)},
		Side:         "host",
		OnProbe:      cfg.OnProbe,
		Logger:       cfg.Logger,
	})
	var ack HelloAck
	err := s.Call(ctx, TypeHello, Hello{
		Epoch: cfg.Epoch, MinVersion: MinVersion, MaxVersion: Version,
		HostVersion: cfg.HostVersion, HeartbeatMillis: cfg.Heartbeat.Milliseconds(),
	}, &ack, nil)
	if err != nil {
		s.Close(err)
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if ack.ProtocolVersion < MinVersion || ack.ProtocolVersion > Version {
		err := fmt.Errorf("handshake: guest chose protocol version %d, host speaks %d..%d", ack.ProtocolVersion, MinVersion, Version)
		s.Close(err)
		return nil, err
	}
	s.startHeartbeat(cfg.Heartbeat)
	return &Client{Session: s, ack: ack}, nil
}

// Hello returns the guest's answer to the handshake.
func (c *Client) Hello() HelloAck { return c.ack }

// auditHandler serves the guest's AuditBatches one at a time, in arrival
// order, through cfg.OnAudit.
func auditHandler(cfg ClientConfig) Handler {
	return Handler{Answer: TypeAuditAck, Serial: true, Serve: func(_ context.Context, r *Request) (any, error) {
		var b AuditBatch
		if err := r.Decode(&b); err != nil {
			return nil, err
		}
		if cfg.OnAudit == nil {
			return nil, &Error{Code: CodeUnsupportedType, Message: "audit ingestion is not configured"}
		}
		upTo, err := cfg.OnAudit(b)
		if err != nil {
			cfg.Logger.Error("audit ingestion failed", "err", err)
			return nil, &Error{Code: CodeInternal, Message: err.Error()}
		}
		return AuditAck{UpToSeq: upTo}, nil
	}}
}
