package execute

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// Without input the process reads the shared /dev/null, and output larger
// than one read is captured whole and then bounded.
func TestDevNullStdinAndLargeOutput(t *testing.T) {
	for range 3 {
		res, err := Run(context.Background(), Spec{
			Path: "/bin/sh", Args: []string{"sh", "-c", `readlink /proc/self/fd/0; wc -c; head -c 100000 /dev/zero`},
			MaxOutput: 90000,
		})
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(res.Stdout), "\n", 3)
		if len(lines) < 3 || lines[0] != "/dev/null" || strings.TrimSpace(lines[1]) != "0" {
			t.Fatalf("stdin: %q", res.Stdout[:min(len(res.Stdout), 40)])
		}
		if len(res.Stdout) != 90000 || !res.StdoutTruncated || !bytes.Equal([]byte(lines[2]), make([]byte, len(lines[2]))) {
			t.Fatalf("stdout %d bytes, truncated %v", len(res.Stdout), res.StdoutTruncated)
		}
	}
	if devNull() == nil {
		t.Fatal("/dev/null not shared")
	}
}

func BenchmarkRunTrue(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Run(context.Background(), Spec{Path: "/bin/true"}); err != nil {
			b.Fatal(err)
		}
	}
}
