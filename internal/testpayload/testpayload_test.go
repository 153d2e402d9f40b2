package testpayload

import (
	"bytes"
	"testing"
	"unicode/utf8"
)

// The set holds what the byte-exactness tests need: binary data that is not
// UTF-8, text that is and has multi-byte characters, the sizes named, and
// the same contents every time.
func TestSet(t *testing.T) {
	a, b := Set(), Set()
	sizes := map[string]int{"binary-1KiB": 1 << 10, "binary-1MiB": 1 << 20, "binary-20MiB": 20 << 20}
	for i, p := range a {
		if !bytes.Equal(p.Data, b[i].Data) {
			t.Errorf("%s differs between calls", p.Name)
		}
		if n, ok := sizes[p.Name]; ok {
			if len(p.Data) != n || utf8.Valid(p.Data) {
				t.Errorf("%s: %d bytes, valid UTF-8 %v", p.Name, len(p.Data), utf8.Valid(p.Data))
			}
			continue
		}
		if !utf8.Valid(p.Data) || utf8.RuneCount(p.Data) == len(p.Data) {
			t.Errorf("%s is not multi-byte UTF-8 text", p.Name)
		}
	}
}
