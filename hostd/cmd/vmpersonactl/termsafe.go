package main

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// Everything vmpersonactl prints from the server (tables, descriptions,
// messages, problem details) may carry text a guest made up: a persona name
// or an audit detail with escape sequences that would drive the operator's
// terminal, or bidirectional controls that make text read differently from
// what it is. termSafe escapes them on the way out: C0 and C1 control
// characters other than newline and tab, DEL, the Unicode bidirectional
// controls, and bytes that are not UTF-8. Escapes are written as \xNN
// (bytes) and \uXXXX (characters), which JSON output reads back as the same
// characters. A command's own output (exec) and the editor go to the
// terminal unaltered.

type termSafeWriter struct{ w io.Writer }

func termSafe(w io.Writer) io.Writer {
	if w == nil {
		return nil
	}
	return termSafeWriter{w}
}

// unsafeRune reports whether r must not reach a terminal as it is.
func unsafeRune(r rune) bool {
	switch {
	case r == '\n' || r == '\t':
		return false
	case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0):
		return true
	case r == 0x061c || r == 0x200e || r == 0x200f: // ALM, LRM, RLM
		return true
	case r >= 0x202a && r <= 0x202e: // LRE, RLE, PDF, LRO, RLO
		return true
	case r >= 0x2066 && r <= 0x2069: // LRI, RLI, FSI, PDI
		return true
	}
	return false
}

// escapeTerminal returns s with unsafe characters escaped (s itself when
// there are none).
func escapeTerminal(s []byte) []byte {
	clean := true
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRune(s[i:])
		if (r == utf8.RuneError && n == 1) || unsafeRune(r) {
			clean = false
			break
		}
		i += n
	}
	if clean {
		return s
	}
	out := make([]byte, 0, len(s)+16)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRune(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			out = fmt.Appendf(out, `\x%02x`, s[i])
		case r < 0x80 && unsafeRune(r):
			out = fmt.Appendf(out, `\x%02x`, r)
		case unsafeRune(r):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, s[i:i+n]...)
		}
		i += n
	}
	return out
}

func (t termSafeWriter) Write(p []byte) (int, error) {
	if _, err := t.w.Write(escapeTerminal(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}
