package main

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestTermSafe(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain text, tabs\tand\nnewlines", "plain text, tabs\tand\nnewlines"},
		{"héllo ✓", "héllo ✓"},
		{"\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"bell\x07 cr\r del\x7f nul\x00", `bell\x07 cr\x0d del\x7f nul\x00`},
		{"c1\u009b2J", `c1\u009b2J`},
		{"evil\u202egnp.exe", `evil\u202egnp.exe`},
		{"\u2066isolate\u2069 \u200fmark", `\u2066isolate\u2069 \u200fmark`},
		{"bad \xff utf8", `bad \xff utf8`},
	} {
		var b bytes.Buffer
		n, err := termSafe(&b).Write([]byte(tc.in))
		if err != nil || n != len(tc.in) || b.String() != tc.want {
			t.Errorf("termSafe(%q) = %q (%d, %v), want %q", tc.in, b.String(), n, err, tc.want)
		}
	}
	// JSON output through it stays JSON and reads back the same text.
	var b bytes.Buffer
	in := map[string]string{"detail": "x\u202ey\u0085z\x1b"}
	if err := writeJSON(termSafe(&b), in); err != nil {
		t.Fatal(err)
	}
	var out map[string]string
	if err := json.Unmarshal(b.Bytes(), &out); err != nil || out["detail"] != in["detail"] {
		t.Fatalf("JSON through termSafe: %s → %q, %v", b.Bytes(), out["detail"], err)
	}
}
