// Package qmp finds and follows plain QEMU instances (--qmp NAME=PATH)
// through their QMP sockets: it locates the virtserialport named
// org.vmpersona.agent.0 and the unix socket chardev behind it, follows the
// run state (query-status, STOP/RESUME/SHUTDOWN events) and feeds the agent
// manager.
//
// The QMP client is Monitor: it implements go-qemu's qmp.Monitor interface,
// so go-qemu's generated raw commands run over it, but unlike go-qemu's
// SocketMonitor it bounds every step with a deadline (a QEMU whose monitor
// is taken by another client accepts the connection and never greets; one
// that hangs never answers) and matches answers to commands by id, so an
// answer that arrives after its command gave up is never taken for the
// next command's.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/vmpersona/vmpersona/errdefs"
)

// Errors of the QMP client.
var (
	// ErrClosed: the QMP connection ended (QEMU exited or Disconnect).
	ErrClosed = errdefs.New(errdefs.ErrUnavailable, "qmp-unavailable", "qmp connection closed")
	// ErrProtocol: QEMU said something that is not QMP.
	ErrProtocol = errdefs.New(errdefs.ErrUpstream, "qmp-protocol", "qmp protocol error")
)

// maxLine bounds one QMP message; the answers this package asks for are a
// few kilobytes.
const maxLine = 1 << 20

// DefaultTimeout bounds a command run through Run (the qmp.Monitor method,
// which takes no context) and the greeting in Dial when ctx has no deadline.
const DefaultTimeout = 5 * time.Second

// CommandError is an error answer from QEMU.
type CommandError struct {
	Command string
	Class   string
	Desc    string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Monitor is a QMP connection. Its methods are safe for concurrent use.
type Monitor struct {
	// Version and Capabilities are from QEMU's greeting.
	Version      goqmp.Version
	Capabilities []string

	conn    net.Conn
	timeout time.Duration

	wmu sync.Mutex // one writer at a time

	mu      sync.Mutex
	pending map[uint64]chan []byte
	nextID  uint64

	events     chan goqmp.Event
	lostEvents atomic.Uint64
	done       chan struct{} // closed when the reader ends
	readErr    error         // set before done is closed
}

var _ goqmp.Monitor = (*Monitor)(nil)

// Dial connects to the QMP socket at path, reads QEMU's greeting and
// negotiates capabilities, all within ctx (or DefaultTimeout when ctx has
// no deadline). timeout bounds each later command run through Run (0:
// DefaultTimeout).
func Dial(ctx context.Context, path string, timeout time.Duration) (*Monitor, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp dial %s: %w", path, err)
	}
	dl, _ := ctx.Deadline()
	conn.SetDeadline(dl)
	// Closing the connection is what unblocks a read when ctx ends early.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	var greeting struct {
		QMP *struct {
			Version      goqmp.Version `json:"version"`
			Capabilities []string      `json:"capabilities"`
		} `json:"QMP"`
	}
	if err := readJSON(sc, &greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: greeting: %w", path, ctxErr(ctx, err))
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %s: first message is not a QMP greeting", ErrProtocol, path)
	}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities","id":0}` + "\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp %s: capabilities: %w", path, ctxErr(ctx, err))
	}
	// Events may come before the answer; none are expected before
	// capabilities are negotiated, but skip them if they do.
	for {
		var ans struct {
			Event  string          `json:"event"`
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := readJSON(sc, &ans); err != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp %s: capabilities: %w", path, ctxErr(ctx, err))
		}
		if ans.Event != "" {
			continue
		}
		if ans.Error != nil {
			conn.Close()
			return nil, &CommandError{Command: "qmp_capabilities", Class: ans.Error.Class, Desc: ans.Error.Desc}
		}
		break
	}
	if !stop() {
		// ctx ended just as the handshake finished: the connection is
		// closed or about to be.
		conn.Close()
		return nil, fmt.Errorf("qmp %s: %w", path, ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	m := &Monitor{
		Version: greeting.QMP.Version, Capabilities: greeting.QMP.Capabilities,
		conn: conn, timeout: timeout, pending: make(map[uint64]chan []byte), nextID: 1,
		events: make(chan goqmp.Event, 64), done: make(chan struct{}),
	}
	go m.read(sc)
	return m, nil
}

func readJSON(sc *bufio.Scanner, v any) error {
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return err
		}
		return ErrClosed
	}
	if err := json.Unmarshal(sc.Bytes(), v); err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	return nil
}

// ctxErr prefers ctx's error to the I/O error its cancellation or deadline
// caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

// read delivers answers to their commands and events to the events channel
// until the connection ends.
func (m *Monitor) read(sc *bufio.Scanner) {
	defer close(m.events)
	defer close(m.done)
	for sc.Scan() {
		line := sc.Bytes()
		var head struct {
			Event string          `json:"event"`
			ID    json.RawMessage `json:"id"`
		}
		if json.Unmarshal(line, &head) != nil {
			continue // not JSON: nothing to match it to
		}
		if head.Event != "" {
			var ev goqmp.Event
			if json.Unmarshal(line, &ev) != nil {
				continue
			}
			select {
			case m.events <- ev:
			default:
				m.lostEvents.Add(1)
			}
			continue
		}
		id, err := strconv.ParseUint(string(head.ID), 10, 64)
		if err != nil {
			continue // an answer to a command this client did not send
		}
		m.mu.Lock()
		ch := m.pending[id]
		delete(m.pending, id)
		m.mu.Unlock()
		if ch != nil {
			ch <- append([]byte(nil), line...) // ch has room for one
		}
	}
	if err := sc.Err(); err != nil {
		m.readErr = fmt.Errorf("%w: %v", ErrClosed, err)
	} else {
		m.readErr = ErrClosed
	}
}

// Connect is part of qmp.Monitor; Dial has already connected, so it does
// nothing.
func (m *Monitor) Connect() error { return nil }

// Disconnect closes the connection and waits for its reader to end.
func (m *Monitor) Disconnect() error {
	err := m.conn.Close()
	<-m.done
	return err
}

// Done is closed when the connection has ended.
func (m *Monitor) Done() <-chan struct{} { return m.done }

// Events returns the channel of QMP events; it is closed when the
// connection ends. There is one channel per Monitor: read it from one
// goroutine. Events that arrive while it is full are dropped and counted
// (LostEvents); a caller that cares re-reads the state it follows.
func (m *Monitor) Events(context.Context) (<-chan goqmp.Event, error) {
	return m.events, nil
}

// LostEvents is how many events were dropped because Events was not read.
func (m *Monitor) LostEvents() uint64 { return m.lostEvents.Load() }

// Run runs a QMP command (JSON with "execute" and optional "arguments")
// within the monitor's command timeout and returns QEMU's whole answer; a
// QEMU error answer is a *CommandError.
func (m *Monitor) Run(command []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), m.timeout)
	defer cancel()
	return m.RunContext(ctx, command)
}

// RunContext is Run bounded by ctx instead of the monitor's timeout.
func (m *Monitor) RunContext(ctx context.Context, command []byte) ([]byte, error) {
	var cmd map[string]json.RawMessage
	if err := json.Unmarshal(command, &cmd); err != nil {
		return nil, fmt.Errorf("qmp command is not a JSON object: %w", err)
	}
	var name string
	json.Unmarshal(cmd["execute"], &name)
	if name == "" {
		return nil, errors.New(`qmp command without "execute"`)
	}
	ch := make(chan []byte, 1)
	m.mu.Lock()
	id := m.nextID
	m.nextID++
	m.pending[id] = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.pending, id)
		m.mu.Unlock()
	}()
	cmd["id"] = json.RawMessage(strconv.FormatUint(id, 10))
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	b = append(b, '\n')

	m.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		m.conn.SetWriteDeadline(dl)
	}
	_, err = m.conn.Write(b)
	m.conn.SetWriteDeadline(time.Time{})
	m.wmu.Unlock()
	if err != nil {
		// The connection is unusable (QEMU went away, or a write
		// timed out mid-command): end it so that every caller sees
		// ErrClosed.
		m.conn.Close()
		<-m.done
		return nil, fmt.Errorf("qmp %s: %w (%v)", name, ErrClosed, err)
	}

	select {
	case ans := <-ch:
		var r struct {
			Error *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(ans, &r); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrProtocol, name, err)
		}
		if r.Error != nil {
			return nil, &CommandError{Command: name, Class: r.Error.Class, Desc: r.Error.Desc}
		}
		return ans, nil
	case <-m.done:
		return nil, fmt.Errorf("qmp %s: %w", name, m.readErr)
	case <-ctx.Done():
		return nil, fmt.Errorf("qmp %s: %w", name, ctx.Err())
	}
}

// Execute runs a command with arguments (nil for none) within ctx and
// decodes its "return" into ret (nil to ignore it).
func (m *Monitor) Execute(ctx context.Context, command string, args, ret any) error {
	c := goqmp.Command{Execute: command, Args: args}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	ans, err := m.RunContext(ctx, b)
	if err != nil {
		return err
	}
	if ret == nil {
		return nil
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(ans, &r); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrProtocol, command, err)
	}
	if err := json.Unmarshal(r.Return, ret); err != nil {
		return fmt.Errorf("%w: %s answer: %v", ErrProtocol, command, err)
	}
	return nil
}
