package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// fuzzMaxPayload keeps the fuzzed reader's memory small.
const fuzzMaxPayload = 4096

func seedFrames() [][]byte {
	var seeds [][]byte
	add := func(h Header, payload string) []byte {
		b := AppendFrame(nil, h, []byte(payload))
		seeds = append(seeds, b)
		return b
	}
	hello := add(Header{Type: TypeHello, Epoch: 7, ID: 1}, `{"epoch":7,"min_version":1,"max_version":1,"host_version":"x","heartbeat_ms":2000}`)
	ack := add(Header{Type: TypeHelloAck, Flags: FlagResponse, Epoch: 7, ID: 1}, `{"protocol_version":1,"active":null}`)
	ping := add(Header{Type: TypePing, Epoch: 7, ID: 2}, "")
	out := add(Header{Type: TypeExecOutput, Flags: FlagResponse | FlagMore, Epoch: 7, ID: 3}, "\x01some output\x00\xff")
	stale := AppendFrame(nil, Header{Type: TypeExec, Epoch: 6, ID: 9}, bytes.Repeat([]byte("x"), 300))
	add(Header{Version: 2, Type: TypeExec, Epoch: 7, ID: 4}, `{}`)
	add(Header{Type: TypeExec, Flags: 0x80, Epoch: 7, ID: 5}, `{}`)
	seeds = append(seeds,
		bytes.Join([][]byte{hello, ack, ping, out}, nil),
		bytes.Join([][]byte{[]byte("garbageVMPF"), hello, []byte("VMP"), ping}, nil),
		append(stale[:100:100], hello...),
		append(hello[:40:40], ack...),
		hello[:HeaderSize], hello[:10], out[:len(out)-1],
	)
	tooLarge := AppendFrame(nil, Header{Type: TypeExec, Epoch: 7, ID: 6}, bytes.Repeat([]byte("y"), fuzzMaxPayload+1))
	seeds = append(seeds, append(tooLarge, ping...))
	return seeds
}

// FuzzReader feeds arbitrary bytes to Reader.Next until it fails. It checks
// that nothing panics, that every frame returned is present verbatim in the
// input where it was read (so both its checksums were right) and re-encodes to the same bytes,
// that refused frames are within their rules, that only the expected errors
// end the stream, and that the buffer stays bounded.
func FuzzReader(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, oneByte bool) {
		br := bytes.NewReader(data)
		var src io.Reader = br
		if oneByte {
			src = iotest.OneByteReader(src)
		}
		r := NewReader(src, fuzzMaxPayload)
		for range len(data) + 1 {
			fr, err := r.Next()
			if limit := max(64<<10, 2*(HeaderSize+fuzzMaxPayload)); cap(r.buf) > limit {
				t.Fatalf("buffer grew to %d bytes (limit %d)", cap(r.buf), limit)
			}
			if err != nil {
				var fe *FrameError
				switch {
				case err == io.EOF || err == io.ErrUnexpectedEOF:
					return
				case errors.As(err, &fe) && errors.Is(err, ErrFrameTooLarge):
					if fe.Header.Length <= fuzzMaxPayload {
						t.Fatalf("refused a %d-byte frame as too large", fe.Header.Length)
					}
					continue
				case errors.As(err, &fe) && errors.Is(err, ErrUnsupportedVersion):
					if fe.Header.Version == Version && fe.Header.Flags&^knownFlags == 0 {
						t.Fatalf("refused a frame of a supported version: %+v", fe.Header)
					}
					continue
				default:
					t.Fatalf("unexpected error %v", err)
				}
			}
			if fr.Length != uint32(len(fr.Payload)) || fr.Length > fuzzMaxPayload {
				t.Fatalf("header length %d, payload %d", fr.Length, len(fr.Payload))
			}
			if fr.Version != Version || fr.Flags&^knownFlags != 0 {
				t.Fatalf("returned a frame of version %d flags %#x", fr.Version, fr.Flags)
			}
			// The frame ends where the reader has consumed the input to:
			// it must be there verbatim, checksums included.
			enc := AppendFrame(nil, fr.Header, fr.Payload)
			end := len(data) - br.Len() - r.Buffered()
			if end < len(enc) || !bytes.Equal(data[end-len(enc):end], enc) {
				t.Fatalf("returned a frame that is not in the input where it was read: %x", enc)
			}
			back, err := NewReader(bytes.NewReader(enc), fuzzMaxPayload).Next()
			if err != nil {
				t.Fatalf("re-encoded frame does not parse: %v", err)
			}
			if back.Header != fr.Header || !bytes.Equal(back.Payload, fr.Payload) {
				t.Fatalf("re-encoded frame parses as %+v, want %+v", back.Header, fr.Header)
			}
		}
		t.Fatal("more calls to Next than input bytes")
	})
}

// messageTypes maps each JSON message type to its payload struct.
var messageTypes = map[Type]func() any{
	TypeHello: func() any { return new(Hello) }, TypeHelloAck: func() any { return new(HelloAck) },
	TypeActivate: func() any { return new(Activate) }, TypeActivateResult: func() any { return new(ActivateResult) },
	TypeDeactivate: func() any { return new(Deactivate) }, TypeExec: func() any { return new(Exec) },
	TypeExecResult: func() any { return new(ExecResult) }, TypeAuditBatch: func() any { return new(AuditBatch) },
	TypeAuditAck: func() any { return new(AuditAck) }, TypeError: func() any { return new(Error) },
}

// FuzzMessages decodes arbitrary payloads as every message type: no panic;
// a payload that decodes re-encodes to JSON that decodes to the same value
// (the encoding is stable after one round); ExecOutput chunks split and
// rebuild exactly.
func FuzzMessages(f *testing.F) {
	f.Add([]byte(`{"epoch":7,"min_version":1,"max_version":1,"host_version":"x","heartbeat_ms":2000}`))
	f.Add([]byte(`{"persona":{"name":"p","environment_variables":{"A":"1"},"command_overrides":{"ls":"/bin/x"},"created_at":"2026-01-02T03:04:05Z"},"revision":2}`))
	f.Add([]byte(`{"command":"ls","args":["-l"],"stdin":"aGkA","env":{"A":"\u0000"},"timeout_ms":-1}`))
	f.Add([]byte(`{"spool_id":"s","events":[{"seq":1,"time":"2026-11-26T09:30:00.123+01:00","type":"exec"}]}`))
	f.Add([]byte(`{"exit_code":1,"persona":null,"duration_ms":1e308}`))
	f.Add([]byte("\x01binary\xff"))
	f.Add([]byte(`{"active":{"persona":{},"activated_at":"0001-01-01T00:00:00Z"}}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		for typ, mk := range messageTypes {
			v := mk()
			if err := Unmarshal(payload, v); err != nil {
				var pe *Error
				if !errors.As(err, &pe) || pe.Code != CodeBadRequest {
					t.Fatalf("%s: error %v is not a bad_request *Error", typ, err)
				}
				continue
			}
			first, err := Marshal(v)
			if err != nil {
				// A decoded time can be outside what RFC 3339 encodes
				// (year 10000 after a zone shift); refusing it is fine.
				continue
			}
			w := mk()
			if err := Unmarshal(first, w); err != nil {
				t.Fatalf("%s: own encoding %s does not decode: %v", typ, first, err)
			}
			second, err := Marshal(w)
			if err != nil || !bytes.Equal(first, second) {
				t.Fatalf("%s: encoding not stable:\n%s\n%s (%v)", typ, first, second, err)
			}
			if !json.Valid(first) {
				t.Fatalf("%s: invalid JSON %s", typ, first)
			}
		}
		if s, data, err := ParseExecOutput(payload); err == nil {
			if !bytes.Equal(AppendExecOutput(nil, s, data), payload) {
				t.Fatal("ExecOutput does not rebuild")
			}
		}
	})
}
