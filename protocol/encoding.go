package protocol

import (
	"encoding/base64"
	"fmt"
	"unicode/utf8"
)

// EncodingBase64 marks a JSON string that carries bytes in standard base64
// (RFC 4648 §4, padded) because they are not valid UTF-8. An empty encoding
// means the string is the bytes themselves, as UTF-8 text.
//
// JSON strings hold Unicode text only: bytes that are not valid UTF-8 would
// be replaced by U+FFFD when encoded. Output and input that are text (the
// common case) stay readable and cost nothing extra; anything else goes in
// base64 and is marked, so every byte arrives as it left.
const EncodingBase64 = "base64"

// EncodeOutput returns b as a JSON string value and its encoding: the text
// itself when b is valid UTF-8, else base64 and EncodingBase64.
func EncodeOutput(b []byte) (s, encoding string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), EncodingBase64
}

// DecodeOutput reverses EncodeOutput.
func DecodeOutput(s, encoding string) ([]byte, error) {
	switch encoding {
	case "":
		return []byte(s), nil
	case EncodingBase64:
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("protocol: bad base64: %w", err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("protocol: unknown encoding %q (want %q or none)", encoding, EncodingBase64)
}

// StdoutBytes is the command's standard output as it was produced.
func (r ExecResult) StdoutBytes() ([]byte, error) { return DecodeOutput(r.Stdout, r.StdoutEncoding) }

// StderrBytes is the command's standard error as it was produced.
func (r ExecResult) StderrBytes() ([]byte, error) { return DecodeOutput(r.Stderr, r.StderrEncoding) }

// TextSplitter cuts a stream of bytes into pieces a JSON string can carry
// exactly: a piece never ends inside a UTF-8 character (the character's
// first bytes wait for the rest, at most 3 bytes), and bytes that are not
// UTF-8 come out in a piece of their own encoding. One splitter per stream.
type TextSplitter struct {
	carry []byte
}

// Next returns the string and encoding for data (plus any bytes held back
// from the previous call); s is empty when everything is held back.
func (t *TextSplitter) Next(data []byte) (s, encoding string) {
	b := data
	if len(t.carry) > 0 {
		b = append(t.carry, data...)
		t.carry = nil
	}
	// Hold back an incomplete character at the end, if what precedes it
	// is text.
	cut := len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				cut = i
			}
			break
		}
	}
	if utf8.Valid(b[:cut]) {
		if cut < len(b) {
			t.carry = append([]byte(nil), b[cut:]...)
		}
		return string(b[:cut]), ""
	}
	return base64.StdEncoding.EncodeToString(b), EncodingBase64
}

// Flush returns what was held back (an incomplete character at the end of
// the stream), base64 encoded; s is empty when nothing was held.
func (t *TextSplitter) Flush() (s, encoding string) {
	if len(t.carry) == 0 {
		return "", ""
	}
	b := t.carry
	t.carry = nil
	return EncodeOutput(b)
}
