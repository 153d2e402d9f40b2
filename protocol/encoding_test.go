package protocol

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEncodeOutputRoundTrip(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("héllo\n"), {0xff, 0xfe, 0, 'A', 'B'}, {0xe2, 0x82}} {
		s, enc := EncodeOutput(b)
		if utf8.Valid(b) != (enc == "") {
			t.Errorf("%q: encoding %q", b, enc)
		}
		got, err := DecodeOutput(s, enc)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%q: round trip gave %q, %v", b, got, err)
		}
	}
	if _, err := DecodeOutput("x", "gzip"); err == nil {
		t.Error("an unknown encoding was accepted")
	}
}

// A text stream cut at every possible place comes out as whole characters
// only, and any byte stream comes out byte for byte.
func TestTextSplitterNeverSplitsACharacter(t *testing.T) {
	text := []byte(strings.Repeat("aé€😀ж", 200))
	rng := rand.New(rand.NewPCG(1, 2))
	binary := make([]byte, 3000)
	for i := range binary {
		binary[i] = byte(rng.Uint32())
	}
	for name, in := range map[string][]byte{"text": text, "binary": binary} {
		for size := 1; size <= 7; size++ {
			var sp TextSplitter
			var out []byte
			emit := func(s, enc string) {
				if s == "" {
					return
				}
				if name == "text" && enc != "" {
					t.Fatalf("%s/%d: a text piece went as %s", name, size, enc)
				}
				if enc == "" && !utf8.ValidString(s) {
					t.Fatalf("%s/%d: piece %q is not whole characters", name, size, s)
				}
				b, err := DecodeOutput(s, enc)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, b...)
			}
			for i := 0; i < len(in); i += size {
				emit(sp.Next(in[i:min(i+size, len(in))]))
			}
			emit(sp.Flush())
			if !bytes.Equal(out, in) {
				t.Fatalf("%s/%d: bytes differ", name, size)
			}
		}
	}
}
