// Package protocol is the wire format spoken between vmpersona-hostd and
// vmpersona-guestd over one byte stream (a virtio-serial port, a vsock
// connection or a unix socket). The format is specified in README.md beside
// this file; this package is its reference implementation.
//
// A stream carries frames. Each frame is a fixed 32-byte header followed by a
// payload whose length the header gives. Both the header and the payload carry
// a CRC-32C, so a receiver that starts reading in the middle of a stale frame
// (virtio-serial keeps bytes written before the peer opened the port) skips
// forward to the next valid header instead of desynchronising.
package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"slices"
	"sync"
	"syscall"
	"unsafe"

	"github.com/vmpersona/vmpersona/errdefs"
)

// Version is the protocol version this package speaks. It is the value of the
// header's version byte and the highest version offered in a Hello.
const Version uint8 = 1

// MinVersion is the oldest protocol version this package still speaks.
const MinVersion uint8 = 1

// HeaderSize is the size of the fixed frame header in bytes.
const HeaderSize = 32

// DefaultMaxPayload is the largest payload a Reader accepts unless told
// otherwise (16 MiB).
const DefaultMaxPayload = 16 << 20

// magic opens every frame: "VMPF".
var magic = [4]byte{'V', 'M', 'P', 'F'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the decoded fixed part of a frame.
type Header struct {
	Version uint8  // protocol version of this frame
	Type    Type   // message type
	Flags   Flags  // see Flag constants
	Epoch   uint32 // session epoch, set by the host's Hello; 0 before a session exists
	ID      uint64 // request id; a response carries the id of its request
	Length  uint32 // payload length in bytes
}

// Flags is the header's 16-bit flag field.
type Flags uint16

const (
	// FlagResponse marks a frame that answers the request with the same ID.
	FlagResponse Flags = 1 << 0
	// FlagMore marks a response that is not the last one for its request
	// (streamed exec output). The final response has FlagMore clear.
	FlagMore Flags = 1 << 1
)

// knownFlags are the flags version 1 defines; the others must be zero.
const knownFlags = FlagResponse | FlagMore

// Frame is a header with its payload. Payloads returned by Reader.Next alias
// the reader's buffer and are valid only until the next call to Next; use
// Clone to keep one.
type Frame struct {
	Header
	Payload []byte
}

// Clone returns a copy of f whose payload does not alias any buffer.
func (f Frame) Clone() Frame {
	f.Payload = bytes.Clone(f.Payload)
	return f
}

// Errors the framing layer reports.
var (
	// ErrFrameTooLarge: a frame's length prefix exceeds the reader's limit.
	// The reader skipped the payload without buffering it; the stream stays
	// in step. It is returned wrapped in a *FrameError carrying the header.
	ErrFrameTooLarge = errdefs.New(errdefs.ErrTooLarge, "frame-too-large", "protocol: frame payload exceeds the limit")
	// ErrUnsupportedVersion: a frame's header names a version this peer does
	// not speak. Returned wrapped in a *FrameError; the payload was skipped.
	ErrUnsupportedVersion = errdefs.New(errdefs.ErrUnavailable, "unsupported-version", "protocol: unsupported protocol version")
)

// FrameError reports a well-formed header whose frame could not be delivered.
// The stream is still in step: the next Next reads the following frame.
type FrameError struct {
	Header Header
	Err    error
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("%v (type %s, id %d, length %d)", e.Err, e.Header.Type, e.Header.ID, e.Header.Length)
}

func (e *FrameError) Unwrap() error { return e.Err }

// AppendFrame appends the encoding of one frame (header and payload) to dst.
// h.Length is ignored and taken from len(payload); h.Version 0 means Version.
func AppendFrame(dst []byte, h Header, payload []byte) []byte {
	dst = slices.Grow(dst, HeaderSize+len(payload))
	n := len(dst)
	dst = dst[:n+HeaderSize]
	putHeader(dst[n:], h, payload)
	return append(dst, payload...)
}

// putHeader encodes h into hdr[0:HeaderSize]. (A slice, not an array: an
// array handed to crc32.Checksum would escape and cost an allocation.)
func putHeader(hdr []byte, h Header, payload []byte) {
	hdr = hdr[:HeaderSize]
	if h.Version == 0 {
		h.Version = Version
	}
	copy(hdr[0:4], magic[:])
	hdr[4] = h.Version
	hdr[5] = byte(h.Type)
	binary.BigEndian.PutUint16(hdr[6:8], uint16(h.Flags))
	binary.BigEndian.PutUint32(hdr[8:12], h.Epoch)
	binary.BigEndian.PutUint64(hdr[12:20], h.ID)
	binary.BigEndian.PutUint32(hdr[20:24], uint32(len(payload)))
	binary.BigEndian.PutUint32(hdr[24:28], crc32.Checksum(payload, castagnoli))
	binary.BigEndian.PutUint32(hdr[28:32], crc32.Checksum(hdr[0:28], castagnoli))
}

// parseHeader checks magic and header checksum of b (at least HeaderSize
// bytes) and returns the header and the payload checksum it announces.
func parseHeader(b []byte) (h Header, payloadCRC uint32, ok bool) {
	if b[0] != magic[0] || b[1] != magic[1] || b[2] != magic[2] || b[3] != magic[3] {
		return h, 0, false
	}
	if crc32.Checksum(b[0:28], castagnoli) != binary.BigEndian.Uint32(b[28:32]) {
		return h, 0, false
	}
	h.Version = b[4]
	h.Type = Type(b[5])
	h.Flags = Flags(binary.BigEndian.Uint16(b[6:8]))
	h.Epoch = binary.BigEndian.Uint32(b[8:12])
	h.ID = binary.BigEndian.Uint64(b[12:20])
	h.Length = binary.BigEndian.Uint32(b[20:24])
	return h, binary.BigEndian.Uint32(b[24:28]), true
}

// Reader decodes frames from a byte stream. It is not safe for concurrent use.
type Reader struct {
	r          io.Reader
	buf        []byte
	start, end int // buffered, unconsumed bytes are buf[start:end]
	maxPayload uint32
	skipped    uint64
}

// initialBuffer is a Reader's buffer size: frames up to this size (all but
// bulk ones) are read without allocating.
const initialBuffer = 64 << 10

// NewReader returns a Reader over r that refuses payloads above maxPayload
// bytes (DefaultMaxPayload when maxPayload is 0).
func NewReader(r io.Reader, maxPayload uint32) *Reader {
	if maxPayload == 0 {
		maxPayload = DefaultMaxPayload
	}
	// A frame must fit in an int (32-bit platforms).
	if uint64(maxPayload) > uint64(math.MaxInt-HeaderSize) {
		limit := math.MaxInt - HeaderSize // reached only where int has 32 bits
		maxPayload = uint32(limit)
	}
	return &Reader{r: r, buf: make([]byte, 0, initialBuffer), maxPayload: maxPayload}
}

// Reset drops any buffered bytes (a partial frame from a session that ended)
// and reads from r from now on.
func (r *Reader) Reset(rd io.Reader) {
	r.r = rd
	r.start, r.end = 0, 0
}

// Skipped reports how many bytes the reader has discarded while looking for
// a valid header (garbage, stale partial frames, bad checksums).
func (r *Reader) Skipped() uint64 { return r.skipped }

// Buffered reports how many bytes are buffered but not yet returned.
func (r *Reader) Buffered() int { return r.end - r.start }

// fill makes at least n bytes available in buf[start:end]. It allocates only
// when the buffer is smaller than n, and n is bounded by HeaderSize+maxPayload.
func (r *Reader) fill(n int) error {
	for r.end-r.start < n {
		if err := r.readOnce(n); err != nil {
			return err
		}
	}
	return nil
}

// readOnce makes room for n buffered bytes and reads once from the stream.
// It returns an error only when the read failed and fewer than n bytes are
// buffered.
func (r *Reader) readOnce(n int) error {
	if r.start+n > cap(r.buf) {
		if n > cap(r.buf) {
			nb := make([]byte, 0, max(n, 2*cap(r.buf)))
			r.buf = append(nb, r.buf[r.start:r.end]...)
		} else {
			r.buf = append(r.buf[:0], r.buf[r.start:r.end]...)
		}
		r.end -= r.start
		r.start = 0
	}
	m, err := r.r.Read(r.buf[r.end:cap(r.buf)])
	r.end += m
	r.buf = r.buf[:r.end]
	if err != nil {
		if r.end-r.start >= n {
			return nil
		}
		if errors.Is(err, io.EOF) && r.end-r.start > 0 {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// fillPayload makes the n bytes of the frame whose header h starts the
// buffer available. While they are incomplete it watches the bytes already
// buffered behind the header for the start of a new session (see
// newSession): then the frame is a stale one whose payload was cut short and
// will never be completed, and fillPayload reports stale instead of waiting
// for bytes that may never come.
func (r *Reader) fillPayload(h Header, n int) (stale bool, err error) {
	scan := HeaderSize // bytes before start+scan have been searched
	for r.end-r.start < n {
		if r.newSession(h, &scan) {
			return true, nil
		}
		if err := r.readOnce(n); err != nil {
			return false, err
		}
	}
	return false, nil
}

// newSession reports whether the buffered bytes after the current header,
// from offset *scan on, hold a complete, valid header that opens a session
// other than h's: a Hello request or a HelloAck response with an epoch that
// differs from h.Epoch. It advances *scan past what has been searched.
//
// Payloads encoded by encoding/json cannot contain a header (the version
// byte is a raw control character), so only binary payloads (ExecOutput)
// could hold such bytes by accident.
func (r *Reader) newSession(h Header, scan *int) bool {
	b := r.buf[r.start:r.end]
	for *scan+len(magic) <= len(b) {
		i := bytes.Index(b[*scan:], magic[:])
		if i < 0 {
			// Keep a tail that may be the start of a magic.
			*scan = max(*scan, len(b)-len(magic)+1)
			return false
		}
		p := *scan + i
		if p+HeaderSize > len(b) {
			*scan = p // check again when the header is complete
			return false
		}
		*scan = p + 1
		o, _, ok := parseHeader(b[p : p+HeaderSize])
		if !ok || o.Epoch == h.Epoch {
			continue
		}
		if (o.Type == TypeHello && o.Flags&FlagResponse == 0) ||
			(o.Type == TypeHelloAck && o.Flags&FlagResponse != 0) {
			return true
		}
	}
	return false
}

// shrinkAbove is the buffer capacity above which a Reader gives the memory
// back once the large frame that needed it has been consumed, so that one
// large frame does not pin megabytes for the life of a connection.
const shrinkAbove = 4 << 20

func (r *Reader) shrink() {
	if cap(r.buf) > shrinkAbove && r.end-r.start <= initialBuffer {
		r.buf = append(make([]byte, 0, initialBuffer), r.buf[r.start:r.end]...)
		r.end -= r.start
		r.start = 0
	}
}

func (r *Reader) discard(n int) {
	r.start += n
	if r.start == r.end {
		r.start, r.end = 0, 0
		r.buf = r.buf[:0]
	}
}

// skipStream discards n bytes of the stream without buffering them.
func (r *Reader) skipStream(n uint64) error {
	for n > 0 {
		if r.end == r.start {
			if err := r.fill(1); err != nil {
				return err
			}
		}
		k := min(n, uint64(r.end-r.start))
		r.discard(int(k))
		n -= k
	}
	return nil
}

// Next returns the next valid frame. Bytes that do not form a valid frame
// (bad magic, bad header or payload checksum) are skipped. A header whose
// length exceeds the limit or whose version is not spoken here yields a
// *FrameError after its payload was skipped; the caller may go on reading.
// Transport errors (io.EOF, a closed connection) are returned as they are.
func (r *Reader) Next() (Frame, error) {
	r.shrink()
	for {
		if err := r.fill(HeaderSize); err != nil {
			return Frame{}, err
		}
		b := r.buf[r.start:r.end]
		h, payloadCRC, ok := parseHeader(b)
		if !ok {
			// Skip to the next possible magic; keep a tail that may be
			// the start of one.
			i := bytes.Index(b[1:], magic[:])
			if i < 0 {
				i = len(b) - len(magic)
			} else {
				i++
			}
			r.skipped += uint64(i)
			r.discard(i)
			continue
		}
		if h.Length > r.maxPayload {
			r.discard(HeaderSize)
			if err := r.skipStream(uint64(h.Length)); err != nil {
				return Frame{}, err
			}
			return Frame{}, &FrameError{Header: h, Err: ErrFrameTooLarge}
		}
		n := HeaderSize + int(h.Length)
		stale, err := r.fillPayload(h, n)
		if err != nil {
			return Frame{}, err
		}
		if !stale {
			b = r.buf[r.start : r.start+n]
		}
		if stale || crc32.Checksum(b[HeaderSize:], castagnoli) != payloadCRC {
			// A stale header whose payload was cut short: the bytes after
			// the header may hold the next real frame (a new session's
			// Hello). Skip one byte and look for the next magic.
			r.skipped++
			r.discard(1)
			continue
		}
		r.discard(n)
		if h.Version < MinVersion || h.Version > Version || h.Flags&^knownFlags != 0 {
			return Frame{}, &FrameError{Header: h, Err: ErrUnsupportedVersion}
		}
		return Frame{Header: h, Payload: b[HeaderSize:]}, nil
	}
}

// Writer encodes frames onto a byte stream. It is safe for concurrent use:
// each frame is written whole, never interleaved with another.
type Writer struct {
	w   io.Writer
	mu  sync.Mutex
	buf []byte
}

// NewWriter returns a Writer onto w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, 4096)}
}

// largeFrame is the payload size above which header and payload are written
// with two calls instead of being copied into one buffer.
const largeFrame = 64 << 10

// WriteFrame writes one frame.
func (w *Writer) WriteFrame(h Header, payload []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writeFrame(h, payload)
}

// TryWriteFrame writes one frame if no other write is in progress, and
// reports whether it did.
func (w *Writer) TryWriteFrame(h Header, payload []byte) (bool, error) {
	if !w.mu.TryLock() {
		return false, nil
	}
	defer w.mu.Unlock()
	return true, w.writeFrame(h, payload)
}

// TryWriteFrameNow writes one frame, if no other write is in progress, with
// one write that does not wait (through rc, the stream's raw descriptor).
// It returns wrote=false when nothing was written (another write in
// progress, or no room in the stream's buffer). When only part of the frame
// fit, finish is non-nil: it writes the rest (waiting for room) and must be
// called, by any goroutine, before any other frame can be written; until
// then the Writer stays locked.
func (w *Writer) TryWriteFrameNow(rc syscall.RawConn, h Header, payload []byte) (wrote bool, finish func() error, err error) {
	if len(payload) > largeFrame || !w.mu.TryLock() {
		return false, nil, nil
	}
	w.buf = AppendFrame(w.buf[:0], h, payload)
	var n int
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		// A raw system call: the descriptor never blocks, and the Go
		// scheduler's monitor thread is not woken for it.
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.buf))), uintptr(len(w.buf)))
			if e == syscall.EINTR {
				continue
			}
			n, werr = int(r), nil
			if e != 0 {
				n, werr = 0, e
			}
			return true // one attempt: never wait here
		}
	}); err != nil {
		w.mu.Unlock()
		return false, nil, nil
	}
	switch {
	case n == len(w.buf):
		w.mu.Unlock()
		return true, nil, nil
	case n <= 0 && (werr == syscall.EAGAIN || werr == nil):
		w.mu.Unlock()
		return false, nil, nil
	case n <= 0:
		w.mu.Unlock()
		return true, nil, werr
	}
	rest := w.buf[n:]
	return true, func() error {
		defer w.mu.Unlock()
		_, err := w.w.Write(rest)
		return err
	}, nil
}

func (w *Writer) writeFrame(h Header, payload []byte) error {
	if len(payload) > largeFrame {
		hdr := w.buf[:HeaderSize]
		putHeader(hdr, h, payload)
		if _, err := w.w.Write(hdr); err != nil {
			return err
		}
		_, err := w.w.Write(payload)
		return err
	}
	w.buf = AppendFrame(w.buf[:0], h, payload)
	_, err := w.w.Write(w.buf)
	return err
}
