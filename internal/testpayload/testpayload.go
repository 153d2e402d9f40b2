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

// Set is random binary data of 1 KiB, 1 MiB and 20 MiB, and 1 MiB of
// multi-byte UTF-8 text in lines of varying length.
func Set() []Payload {
	rng := rand.New(rand.NewPCG(15, 15))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	var text strings.Builder
	for text.Len() < 1<<20 {
		fmt.Fprintf(&text, "%d é€😀 жизнь 東京 %s\n", text.Len(), strings.Repeat("ß", text.Len()%37))
	}
	return []Payload{
		{"binary-1KiB", random(1 << 10)},
		{"binary-1MiB", random(1 << 20)},
		{"binary-20MiB", random(20 << 20)},
		{"utf8-text", []byte(text.String())},
	}
}
