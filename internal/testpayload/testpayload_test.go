package testpayload

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/protocol"
)

// The set holds what the byte-exactness tests need: binary data that is not
// UTF-8, text that is and has multi-byte characters, the sizes named, and
// the same contents every time.
func TestSet(t *testing.T) {
	for _, large := range []int{LargeUnit, LargeVM} {
		a, b := Set(large), Set(large)
		sizes := map[string]int{"binary-1KiB": 1 << 10, "binary-1MiB": 1 << 20, LargeName(large): large}
		seen := 0
		for i, p := range a {
			if !bytes.Equal(p.Data, b[i].Data) {
				t.Errorf("%s differs between calls", p.Name)
			}
			if n, ok := sizes[p.Name]; ok {
				seen++
				if len(p.Data) != n || utf8.Valid(p.Data) {
					t.Errorf("%s: %d bytes, valid UTF-8 %v", p.Name, len(p.Data), utf8.Valid(p.Data))
				}
				continue
			}
			if !utf8.Valid(p.Data) || utf8.RuneCount(p.Data) == len(p.Data) {
				t.Errorf("%s is not multi-byte UTF-8 text", p.Name)
			}
		}
		if seen != len(sizes) {
			t.Errorf("Set(%d) holds %d of the %d binary payloads", large, seen, len(sizes))
		}
	}
}

// The unit tier's large payload is above every bound it is meant to cross
// (see LargeUnit), so that a smaller one cannot be chosen by mistake.
func TestLargeUnitCrossesTheBounds(t *testing.T) {
	bounds := map[string]int{
		"exec request document (hostd/api MaxExecBody, not imported here: it would link the host's API into this test)": 8 << 20,
		"output held for a slow consumer (protocol.DefaultOutputBuffer)":                                                protocol.DefaultOutputBuffer,
		"guest's input window (protocol.MaxInputWindow)":                                                                protocol.MaxInputWindow,
		"buffered answer (execute.DefaultMaxOutput)":                                                                    execute.DefaultMaxOutput,
	}
	for name, bound := range bounds {
		if LargeUnit <= bound {
			t.Errorf("LargeUnit (%d bytes) is not above the %s: %d bytes", LargeUnit, name, bound)
		}
	}
}
