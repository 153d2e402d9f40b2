// Package testpayload makes the contents the byte-exactness tests of exec
// send through the product: random binary data, which is not UTF-8, and
// text of one- to four-byte characters, the same at every call.
package testpayload

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Payload is one named content.
type Payload struct {
	Name string
	Data []byte
}

// Sizes of the largest binary payload of a set.
const (
	// LargeVM is the largest payload of the VM tier (`make integration`):
	// 20 MiB through a real VM's agent over virtio-serial.
	LargeVM = 20 << 20
	// LargeUnit is the largest payload of the tests in `make test`, with
	// the real daemons on this machine: 9 MiB, above every bound a
	// payload crosses on its way. Those are the 8 MiB request document
	// of an exec (hostd/api MaxExecBody: streamed standard input is not
	// counted in it), the 8 MiB of output one call holds for a slow
	// consumer (protocol DefaultOutputBuffer), the guest's 4 MiB input
	// window and the 1 MiB buffered answer (guestd/execute
	// DefaultMaxOutput). Every MiB costs about a second of CPU under the
	// race detector; the VM tier keeps 20 MiB.
	LargeUnit = 9 << 20
)

// Set is random binary data of 1 KiB, 1 MiB and large bytes (a whole
// number of MiB, named binary-NMiB), and 1 MiB of multi-byte UTF-8 text
// in lines of varying length.
func Set(large int) []Payload {
	if large <= 1<<20 || large%(1<<20) != 0 {
		panic(fmt.Sprintf("testpayload: large payload of %d bytes: want a whole number of MiB over 1 MiB", large))
	}
	src := rand.NewChaCha8([32]byte{15})
	random := func(n int) []byte {
		b := make([]byte, n)
		src.Read(b) // never fails
		return b
	}
	var text strings.Builder
	for text.Len() < 1<<20 {
		fmt.Fprintf(&text, "%d é€😀 жизнь 東京 %s\n", text.Len(), strings.Repeat("ß", text.Len()%37))
	}
	return []Payload{
		{"binary-1KiB", random(1 << 10)},
		{"binary-1MiB", random(1 << 20)},
		{LargeName(large), random(large)},
		{"utf8-text", []byte(text.String())},
	}
}

// LargeName is the name of the large payload of Set(large).
func LargeName(large int) string { return fmt.Sprintf("binary-%dMiB", large>>20) }
