package protocol_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

func frame(h protocol.Header, payload string) []byte {
	return protocol.AppendFrame(nil, h, []byte(payload))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// readAll returns every frame until the stream ends, cloned, and the error
// that ended it.
func readAll(r *protocol.Reader) ([]protocol.Frame, error) {
	var out []protocol.Frame
	for {
		f, err := r.Next()
		if err != nil {
			return out, err
		}
		out = append(out, f.Clone())
	}
}

func checkFrames(t *testing.T, got []protocol.Frame, want ...[]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d frames, want %d: %+v", len(got), len(want), got)
	}
	for i, f := range got {
		if enc := protocol.AppendFrame(nil, f.Header, f.Payload); !bytes.Equal(enc, want[i]) {
			t.Errorf("frame %d: got %x, want %x", i, enc, want[i])
		}
	}
}

// TestHeaderLayout checks the header byte by byte against the
// specification: offsets, big-endian fields, CRC-32C (Castagnoli).
func TestHeaderLayout(t *testing.T) {
	payload := []byte(`{"up_to_seq":42}`)
	b := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeAuditAck, Flags: protocol.FlagResponse | protocol.FlagMore,
		Epoch: 0x01020304, ID: 0x1112131415161718}, payload)
	if len(b) != protocol.HeaderSize+len(payload) {
		t.Fatalf("length %d", len(b))
	}
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	checks := []struct {
		field string
		got   uint64
		want  uint64
	}{
		{"magic", uint64(binary.BigEndian.Uint32(b[0:4])), 0x564d5046}, // "VMPF"
		{"version", uint64(b[4]), 1},
		{"type", uint64(b[5]), 0x31},
		{"flags", uint64(binary.BigEndian.Uint16(b[6:8])), 3},
		{"epoch", uint64(binary.BigEndian.Uint32(b[8:12])), 0x01020304},
		{"id", binary.BigEndian.Uint64(b[12:20]), 0x1112131415161718},
		{"length", uint64(binary.BigEndian.Uint32(b[20:24])), uint64(len(payload))},
		{"payload crc", uint64(binary.BigEndian.Uint32(b[24:28])), uint64(crc32.Checksum(payload, castagnoli))},
		{"header crc", uint64(binary.BigEndian.Uint32(b[28:32])), uint64(crc32.Checksum(b[:28], castagnoli))},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.field, c.got, c.want)
		}
	}
	if !bytes.Equal(b[32:], payload) {
		t.Errorf("payload %q", b[32:])
	}
	// Length in the Header passed to AppendFrame is ignored.
	if c := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypePing, Length: 99}, nil); binary.BigEndian.Uint32(c[20:24]) != 0 {
		t.Error("AppendFrame used Header.Length")
	}
}

// TestWorkedExample keeps README.md's worked example true: the golden file
// holds the hex dump of the frame the README shows.
func TestWorkedExample(t *testing.T) {
	b := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeHello, Epoch: 0x2a, ID: 1},
		[]byte(`{"epoch":42,"min_version":1,"max_version":1,"host_version":"0.1.0","heartbeat_ms":2000}`))
	got := hex.Dump(b)
	const golden = "testdata/hello_frame.hex"
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if got != string(want) {
		t.Errorf("frame\n%s\ndiffers from %s\n%s", got, golden, want)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, want) {
		t.Errorf("README.md does not contain the worked example of %s", golden)
	}
}

// TestCorruptionAtEveryByte flips every bit of a frame, one at a time: the
// corrupted frame is never returned and the next frame always is.
func TestCorruptionAtEveryByte(t *testing.T) {
	good := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 9, ID: 77}, `{"command":"ls","args":["-l"]}`)
	next := frame(protocol.Header{Type: protocol.TypePing, Epoch: 9, ID: 78}, "")
	for i := range good {
		for bit := range 8 {
			bad := bytes.Clone(good)
			bad[i] ^= 1 << bit
			r := protocol.NewReader(bytes.NewReader(cat(bad, next)), 0)
			got, err := readAll(r)
			if err != io.EOF {
				t.Fatalf("byte %d bit %d: stream ended with %v", i, bit, err)
			}
			checkFrames(t, got, next)
			if r.Skipped() != uint64(len(bad)) {
				t.Errorf("byte %d bit %d: skipped %d bytes, want %d", i, bit, r.Skipped(), len(bad))
			}
		}
	}
}

// TestResyncAfterGarbage: garbage (including broken magics and headers)
// before, between and after frames is skipped.
func TestResyncAfterGarbage(t *testing.T) {
	f1 := frame(protocol.Header{Type: protocol.TypeHello, Epoch: 1, ID: 1}, `{"epoch":1}`)
	f2 := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 1, ID: 2}, `{"command":"x"}`)
	hdrOnly := bytes.Clone(f2[:protocol.HeaderSize])
	hdrOnly[29] ^= 0xff
	rng := rand.New(rand.NewPCG(1, 2))
	noise := make([]byte, 3000)
	for i := range noise {
		noise[i] = byte(rng.IntN(256))
	}
	tests := []struct {
		name   string
		stream []byte
	}{
		{"leading noise", cat(noise, f1, f2)},
		{"magic fragments", cat([]byte("VMPVMPFVMVMPF\x01VMP"), f1, []byte("VM"), f2)},
		{"broken header", cat(hdrOnly, f1, hdrOnly, f2)},
		{"noise between and after", cat(f1, noise[:100], f2, noise[100:200])},
		{"truncated frame before", cat(f2[:protocol.HeaderSize-3], f1, f2)},
		{"magic at the very end", cat(f1, f2, []byte("VMPF"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, src := range wholeAndByteByByte(tc.stream) {
				r := protocol.NewReader(src, 0)
				got, err := readAll(r)
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("ended with %v", err)
				}
				checkFrames(t, got, f1, f2)
				if want := uint64(len(tc.stream) - len(f1) - len(f2)); r.Skipped()+uint64(r.Buffered()) != want {
					t.Errorf("skipped %d + buffered %d, want %d", r.Skipped(), r.Buffered(), want)
				}
			}
		})
	}
}

// TestStalePartialFrame: a complete header whose payload was cut short (a
// peer that died mid-write; virtio-serial delivers such bytes to the next
// reader) followed by valid frames.
func TestStalePartialFrame(t *testing.T) {
	big := strings.Repeat("x", 5000)
	stale := frame(protocol.Header{Type: protocol.TypeActivate, Epoch: 1, ID: 9}, big)
	hello := frame(protocol.Header{Type: protocol.TypeHello, Epoch: 2, ID: 1}, `{"epoch":2}`)
	ack := frame(protocol.Header{Type: protocol.TypeHelloAck, Flags: protocol.FlagResponse, Epoch: 2, ID: 1}, `{"protocol_version":1}`)
	exec := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 2, ID: 2}, `{"command":"ls"}`)
	many := make([][]byte, 0, 200)
	for i := range cap(many) {
		many = append(many, frame(protocol.Header{Type: protocol.TypeExec, Epoch: 1, ID: uint64(i)}, `{"command":"ls"}`))
	}
	tests := []struct {
		name   string
		stream []byte
		want   [][]byte
	}{
		// The new session's bytes complete the stale frame's length: the
		// payload checksum fails and the reader rescans inside it.
		{"enough bytes follow", cat(stale[:100], cat(many...)), many},
		// Only a Hello follows, far fewer bytes than the stale header
		// announced: the reader must not wait for the rest (the peer
		// waits for the answer and sends nothing more).
		{"new session's hello", cat(stale[:100], hello), [][]byte{hello}},
		{"hello then a request", cat(stale[:200], hello, exec), [][]byte{hello, exec}},
		{"host reading a new helloack", cat(stale[:40], ack), [][]byte{ack}},
		{"stale header alone", cat(stale[:protocol.HeaderSize], hello), [][]byte{hello}},
		{"torn header", cat(stale[:20], hello), [][]byte{hello}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, src := range wholeAndByteByByte(tc.stream) {
				got, err := readAll(protocol.NewReader(src, 0))
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("ended with %v", err)
				}
				checkFrames(t, got, tc.want...)
			}
		})
	}
}

// TestStaleFrameOverLiveStream: the same over a stream that stays open, as
// virtio-serial does: the Hello must come out without any further byte.
func TestStaleFrameOverLiveStream(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	stale := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 7, ID: 3}, strings.Repeat("s", 1<<20))
	hello := frame(protocol.Header{Type: protocol.TypeHello, Epoch: 8, ID: 1}, `{"epoch":8}`)
	go func() {
		a.Write(stale[:64<<10])
		a.Write(hello)
	}()
	b.SetReadDeadline(time.Now().Add(10 * time.Second)) // fail, not hang, if the reader waits
	r := protocol.NewReader(b, 0)
	f, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	checkFrames(t, []protocol.Frame{f}, hello)
}

// TestEmbeddedFrameSameEpoch: a binary payload that happens to contain a
// frame of its own session is delivered whole, even when it arrives in
// pieces.
func TestEmbeddedFrameSameEpoch(t *testing.T) {
	inner := frame(protocol.Header{Type: protocol.TypeHelloAck, Flags: protocol.FlagResponse, Epoch: 4, ID: 1}, `{}`)
	outer := frame(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, Epoch: 4, ID: 2},
		string(protocol.AppendExecOutput(nil, protocol.StreamStdout, cat(inner, inner))))
	got, err := readAll(protocol.NewReader(iotest.OneByteReader(bytes.NewReader(outer)), 0))
	if err != io.EOF {
		t.Fatal(err)
	}
	checkFrames(t, got, outer)
}

// TestSplitReads: frames split across 1-byte reads, half reads and reads
// that return data with io.EOF.
func TestSplitReads(t *testing.T) {
	var stream []byte
	var want [][]byte
	for i, tc := range messageCases() {
		f := frame(protocol.Header{Type: tc.typ, Flags: tc.flags, Epoch: 3, ID: uint64(i)}, tc.json)
		stream = append(stream, f...)
		want = append(want, f)
	}
	big := frame(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, Epoch: 3, ID: 99},
		strings.Repeat("\x01big output ", 20000))
	stream = append(stream, big...)
	want = append(want, big)
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"one byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data+EOF": iotest.DataErrReader,
	} {
		t.Run(name, func(t *testing.T) {
			got, err := readAll(protocol.NewReader(wrap(bytes.NewReader(stream)), 0))
			if err != io.EOF {
				t.Fatalf("ended with %v", err)
			}
			checkFrames(t, got, want...)
		})
	}
}

func TestTruncatedStream(t *testing.T) {
	f := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 3, ID: 1}, `{"command":"ls"}`)
	for n := 1; n < len(f); n++ {
		_, err := protocol.NewReader(bytes.NewReader(f[:n]), 0).Next()
		if err != io.ErrUnexpectedEOF {
			t.Fatalf("cut at %d: %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	if _, err := protocol.NewReader(bytes.NewReader(nil), 0).Next(); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
	boom := errors.New("boom")
	if _, err := protocol.NewReader(iotest.ErrReader(boom), 0).Next(); err != boom {
		t.Fatalf("failing stream: %v, want the transport's error", err)
	}
}

// zeros is a stream of n zero bytes produced without memory.
type zeros struct{ n uint64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := min(uint64(len(p)), z.n)
	clear(p[:k])
	z.n -= k
	return int(k), nil
}

// largeHeader is a valid header announcing length bytes of payload.
func largeHeader(typ protocol.Type, flags protocol.Flags, length uint32) []byte {
	h := protocol.AppendFrame(nil, protocol.Header{Type: typ, Flags: flags, Epoch: 5, ID: 66}, nil)
	binary.BigEndian.PutUint32(h[20:24], length)
	binary.BigEndian.PutUint32(h[28:32], crc32.Checksum(h[:28], crc32.MakeTable(crc32.Castagnoli)))
	return h
}

// TestTooLarge: a length above the limit is refused before anything is
// allocated for it, its payload is skipped without buffering, and the
// stream stays in step.
func TestTooLarge(t *testing.T) {
	after := frame(protocol.Header{Type: protocol.TypePing, Epoch: 5, ID: 67}, "")
	for _, tc := range []struct {
		name   string
		max    uint32
		length uint32
	}{
		{"just over", 1024, 1025},
		{"4 GiB over the default", 0, 1<<32 - 1},
		{"17 MiB over the default", 0, 17 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := io.MultiReader(bytes.NewReader(largeHeader(protocol.TypeExec, 0, tc.length)), &zeros{uint64(tc.length)}, bytes.NewReader(after))
			r := protocol.NewReader(src, tc.max)
			var before, afterStats runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := r.Next()
			runtime.ReadMemStats(&afterStats)
			var fe *protocol.FrameError
			if !errors.As(err, &fe) || !errors.Is(err, protocol.ErrFrameTooLarge) {
				t.Fatalf("got %v, want a *FrameError wrapping ErrFrameTooLarge", err)
			}
			if fe.Header.Length != tc.length || fe.Header.ID != 66 || fe.Header.Type != protocol.TypeExec {
				t.Errorf("FrameError header %+v", fe.Header)
			}
			if grew := afterStats.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("refusing a %d-byte frame allocated %d bytes", tc.length, grew)
			}
			f, err := r.Next()
			if err != nil {
				t.Fatalf("after the refused frame: %v", err)
			}
			checkFrames(t, []protocol.Frame{f}, after)
		})
	}
}

// boundedReader fails the test if the Reader ever buffers more than limit
// bytes ahead: it serves at most what was asked and records the largest
// buffer it was handed.
type boundedReader struct {
	r       io.Reader
	largest int
}

func (b *boundedReader) Read(p []byte) (int, error) {
	b.largest = max(b.largest, len(p))
	return b.r.Read(p)
}

func TestTooLargeKeepsBufferSmall(t *testing.T) {
	after := frame(protocol.Header{Type: protocol.TypePing, Epoch: 5, ID: 67}, "")
	br := &boundedReader{r: io.MultiReader(bytes.NewReader(largeHeader(protocol.TypeExecResult, protocol.FlagResponse, 100<<20)), &zeros{100 << 20}, bytes.NewReader(after))}
	r := protocol.NewReader(br, 1<<20)
	if _, err := r.Next(); !errors.Is(err, protocol.ErrFrameTooLarge) {
		t.Fatal(err)
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if br.largest > 64<<10 {
		t.Errorf("the reader offered a %d-byte buffer while skipping; its initial buffer is 64 KiB", br.largest)
	}
}

// TestTooLargeAllocs: in steady state, refusing a too-large frame costs one
// allocation (the *FrameError), whatever its length.
func TestTooLargeAllocs(t *testing.T) {
	stream := cat(largeHeader(protocol.TypeExec, 0, 1<<20), make([]byte, 1<<20), frame(protocol.Header{Type: protocol.TypePing, Epoch: 5, ID: 1}, ""))
	src := bytes.NewReader(stream)
	r := protocol.NewReader(src, 4096)
	allocs := testing.AllocsPerRun(20, func() {
		src.Reset(stream)
		r.Reset(src)
		if _, err := r.Next(); !errors.Is(err, protocol.ErrFrameTooLarge) {
			t.Fatal(err)
		}
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("%v allocations per refused frame, want at most 1", allocs)
	}
}

func TestUnsupportedVersionAndFlags(t *testing.T) {
	after := frame(protocol.Header{Type: protocol.TypePing, Epoch: 5, ID: 9}, "")
	for _, tc := range []struct {
		name string
		h    protocol.Header
	}{
		{"version 2", protocol.Header{Version: 2, Type: protocol.TypeHello, Epoch: 5, ID: 1}},
		{"version 255", protocol.Header{Version: 255, Type: protocol.TypeExec, Epoch: 5, ID: 1}},
		{"unknown flag", protocol.Header{Type: protocol.TypeExec, Flags: 1 << 5, Epoch: 5, ID: 1}},
		{"high flag", protocol.Header{Type: protocol.TypeExec, Flags: protocol.FlagResponse | 1<<15, Epoch: 5, ID: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := protocol.NewReader(bytes.NewReader(cat(frame(tc.h, `{"x":1}`), after)), 0)
			_, err := r.Next()
			var fe *protocol.FrameError
			if !errors.As(err, &fe) || !errors.Is(err, protocol.ErrUnsupportedVersion) {
				t.Fatalf("got %v, want a *FrameError wrapping ErrUnsupportedVersion", err)
			}
			want := tc.h
			want.Length = 7
			if want.Version == 0 {
				want.Version = protocol.Version
			}
			if fe.Header != want {
				t.Errorf("header %+v, want %+v", fe.Header, want)
			}
			f, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			checkFrames(t, []protocol.Frame{f}, after)
		})
	}
	// Version 0 is not a version either (AppendFrame turns 0 into Version,
	// so build the header by hand).
	h := largeHeader(protocol.TypeExec, 0, 0)
	h[4] = 0
	binary.BigEndian.PutUint32(h[28:32], crc32.Checksum(h[:28], crc32.MakeTable(crc32.Castagnoli)))
	if _, err := protocol.NewReader(bytes.NewReader(h), 0).Next(); !errors.Is(err, protocol.ErrUnsupportedVersion) {
		t.Errorf("version 0: %v", err)
	}
}

func TestReset(t *testing.T) {
	f := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 1, ID: 1}, `{"command":"ls"}`)
	r := protocol.NewReader(bytes.NewReader(f[:40]), 0)
	if _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("partial frame: %v", err)
	}
	if r.Buffered() != 40 {
		t.Fatalf("buffered %d, want 40", r.Buffered())
	}
	// Without Reset, the partial frame would swallow the start of the new
	// stream; with it, the new stream's frames come out whole.
	hello := frame(protocol.Header{Type: protocol.TypeHello, Epoch: 2, ID: 1}, `{"epoch":2}`)
	r.Reset(bytes.NewReader(hello))
	if r.Buffered() != 0 {
		t.Fatalf("buffered %d after Reset", r.Buffered())
	}
	got, err := readAll(r)
	if err != io.EOF {
		t.Fatal(err)
	}
	checkFrames(t, got, hello)
}

func TestFrameClone(t *testing.T) {
	a := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 1, ID: 1}, `{"command":"a"}`)
	b := frame(protocol.Header{Type: protocol.TypeExec, Epoch: 1, ID: 2}, `{"command":"b"}`)
	r := protocol.NewReader(bytes.NewReader(cat(a, b)), 0)
	f1, _ := r.Next()
	kept := f1.Clone()
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if string(kept.Payload) != `{"command":"a"}` {
		t.Errorf("clone changed: %q", kept.Payload)
	}
}

// TestWriterConcurrent: frames from many goroutines never interleave, small
// ones (one write) and large ones (header and payload written separately).
func TestWriterConcurrent(t *testing.T) {
	a, b := socketPair(t)
	w := protocol.NewWriter(a)
	const writers, each = 8, 40
	payloadFor := func(g, i int) []byte {
		n := 10 + (g*each+i)%7*3000
		if i%10 == 0 {
			n = 70000 + g // above the Writer's single-write limit
		}
		return bytes.Repeat([]byte{byte(g), byte(i)}, n/2)
	}
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				if err := w.WriteFrame(protocol.Header{Type: protocol.TypeExecOutput, Flags: protocol.FlagResponse | protocol.FlagMore, Epoch: 1, ID: uint64(g<<16 | i)}, payloadFor(g, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); a.Close() }()
	r := protocol.NewReader(b, 0)
	next := make([]int, writers)
	for range writers * each {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		g, i := int(f.ID>>16), int(f.ID&0xffff)
		if g >= writers || i != next[g] {
			t.Fatalf("frame %d of writer %d out of order (want %d)", i, g, next[g])
		}
		next[g]++
		if !bytes.Equal(f.Payload, payloadFor(g, i)) {
			t.Fatalf("frame %d of writer %d: payload differs", i, g)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last frame: %v", err)
	}
	if r.Skipped() != 0 {
		t.Errorf("skipped %d bytes: frames interleaved", r.Skipped())
	}
}

func TestWriterError(t *testing.T) {
	boom := errors.New("boom")
	w := protocol.NewWriter(failWriter{boom})
	for _, n := range []int{0, 100, 100000} {
		if err := w.WriteFrame(protocol.Header{Type: protocol.TypeExec}, make([]byte, n)); err != boom {
			t.Errorf("payload %d: %v, want the stream's error", n, err)
		}
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestFrameErrorString(t *testing.T) {
	err := &protocol.FrameError{Header: protocol.Header{Type: protocol.TypeExec, ID: 4, Length: 99}, Err: protocol.ErrFrameTooLarge}
	want := fmt.Sprintf("%v (type exec, id 4, length 99)", protocol.ErrFrameTooLarge)
	if err.Error() != want {
		t.Errorf("%q, want %q", err.Error(), want)
	}
}

// wholeAndByteByByte reads stream at once, and a byte a read.
func wholeAndByteByByte(stream []byte) []io.Reader {
	return []io.Reader{bytes.NewReader(stream), iotest.OneByteReader(bytes.NewReader(stream))}
}
