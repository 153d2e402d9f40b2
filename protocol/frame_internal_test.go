package protocol

import (
	"bytes"
	"testing"
)

// TestReaderGivesMemoryBack: after a large frame has been consumed, the
// reader's buffer returns to its initial size instead of pinning it.
func TestReaderGivesMemoryBack(t *testing.T) {
	big := AppendFrame(nil, Header{Type: TypeExecResult, Flags: FlagResponse, Epoch: 1, ID: 1}, make([]byte, 8<<20))
	small := AppendFrame(nil, Header{Type: TypePing, Epoch: 1, ID: 2}, nil)
	r := NewReader(bytes.NewReader(append(big, small...)), 0)
	f, err := r.Next()
	if err != nil || len(f.Payload) != 8<<20 {
		t.Fatalf("large frame: %v", err)
	}
	if cap(r.buf) < 8<<20 {
		t.Fatalf("buffer of %d bytes held an 8 MiB frame?", cap(r.buf))
	}
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if cap(r.buf) > initialBuffer {
		t.Errorf("buffer still %d bytes after the large frame was consumed", cap(r.buf))
	}
}
