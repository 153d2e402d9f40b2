package protocol

import (
	"context"
	"errors"
	"io"
	"sync"
)

// ErrInputOverflow fails the reading of a request's input when the host sent
// more than the window it was given: the command's input ends there.
var ErrInputOverflow = errors.New("protocol: the host sent more standard input than its window")

// Input is the standard input of a request being served (the guest's end),
// as the host's ExecInput frames bring it. It holds at most the window the
// handler opened it with (Request.Input) and acknowledges what its reader
// took a quarter window at a time, so the host sends more only as the
// command reads. It is an io.ReadCloser for one reader.
type Input struct {
	s     *Session
	epoch uint32
	id    uint64

	mu      sync.Mutex
	changed chan struct{} // closed (and replaced) at every change
	chunks  [][]byte
	held    int
	window  int // 0 until the handler opens the input
	taken   int // bytes read and not yet acknowledged
	eof     bool
	closed  bool
	over    bool
}

// Input opens the request's standard input with a window of n bytes (at
// most MaxInputWindow): how much the host may send beyond what was
// acknowledged. It returns nil for a request of a handler without Input, or
// when n <= 0.
func (r *Request) Input(n int) *Input {
	if r.in == nil || n <= 0 {
		return nil
	}
	in := r.in
	in.mu.Lock()
	in.window = min(n, MaxInputWindow)
	in.mu.Unlock()
	return in
}

// input hands an ExecInput frame to the request it names.
func (s *Session) input(f Frame) {
	s.mu.Lock()
	in := s.inputs[f.ID]
	s.mu.Unlock()
	if in == nil {
		s.dropped.Add(1) // the request has been answered, or never took input
		return
	}
	in.push(f.Payload, f.Flags&FlagMore != 0)
}

func (in *Input) push(data []byte, more bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed || in.eof || in.over {
		return
	}
	limit := in.window
	if limit == 0 {
		limit = MaxInputWindow
	}
	if in.held+len(data) > limit {
		in.over, in.chunks, in.held = true, nil, 0
		in.s.cfg.Logger.Warn("standard input beyond its window; the command's input ends", "id", in.id, "window", limit)
	} else if len(data) > 0 {
		in.chunks = append(in.chunks, append([]byte(nil), data...))
		in.held += len(data)
	}
	if !more {
		in.eof = true
	}
	in.notify()
}

func (in *Input) notify() {
	close(in.changed)
	in.changed = make(chan struct{})
}

// Read reads input as it arrives; it returns io.EOF at the input's end,
// ErrInputOverflow when the host broke its window, and ErrClosed when the
// session ended.
func (in *Input) Read(p []byte) (int, error) {
	for {
		in.mu.Lock()
		switch {
		case len(in.chunks) > 0:
			n := copy(p, in.chunks[0])
			if n == len(in.chunks[0]) {
				in.chunks[0] = nil
				in.chunks = in.chunks[1:]
			} else {
				in.chunks[0] = in.chunks[0][n:]
			}
			in.held -= n
			in.taken += n
			ack := 0
			if in.taken >= max(in.window/4, 1) {
				ack, in.taken = in.taken, 0
			}
			in.mu.Unlock()
			if ack > 0 {
				in.ack(in.s.ctx, ack)
			}
			return n, nil
		case in.over:
			in.mu.Unlock()
			return 0, ErrInputOverflow
		case in.eof, in.closed:
			in.mu.Unlock()
			return 0, io.EOF
		}
		changed := in.changed
		in.mu.Unlock()
		select {
		case <-changed:
		case <-in.s.closed:
			return 0, ErrClosed
		}
	}
}

// Close ends the reading: what is held and what still arrives is dropped,
// and the host is told to send no more.
func (in *Input) Close() error {
	in.close(true)
	return nil
}

// close ends the input; tell: say so to the host, unless its input ended.
func (in *Input) close(tell bool) {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return
	}
	ended := in.eof || in.over
	in.closed, in.chunks, in.held = true, nil, 0
	in.notify()
	in.mu.Unlock()
	if tell && !ended {
		go func() {
			// Bounded: send returns when the session ends.
			ctx, cancel := context.WithTimeout(in.s.ctx, in.s.cfg.WriteTimeout)
			defer cancel()
			in.ack(ctx, -1)
		}()
	}
}

func (in *Input) ack(ctx context.Context, n int) {
	payload, _ := Marshal(ExecCredit{Bytes: n})
	in.s.send(ctx, Header{Type: TypeExecInputAck, Flags: FlagResponse | FlagMore, Epoch: in.epoch, ID: in.id}, payload)
}
