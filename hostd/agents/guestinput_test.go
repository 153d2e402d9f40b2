package agents

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

// The output bound holds for the bytes output stands for, whether the
// result carries them as text or in base64.
func TestCheckExecResultCountsBytes(t *testing.T) {
	bin := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("\xff", 1000)))
	if err := checkExecResult(&protocol.ExecResult{Stdout: bin, StdoutEncoding: protocol.EncodingBase64}, 1000); err != nil {
		t.Errorf("1000 bytes in base64 under a bound of 1000: %v", err)
	}
	if err := checkExecResult(&protocol.ExecResult{Stdout: strings.Repeat("x", 1001)}, 1000); err == nil {
		t.Error("1001 bytes under a bound of 1000 accepted")
	}
	if err := checkExecResult(&protocol.ExecResult{Stderr: base64.StdEncoding.EncodeToString(make([]byte, 1010)), StderrEncoding: protocol.EncodingBase64}, 1000); err == nil {
		t.Error("1010 bytes of base64 stderr under a bound of 1000 accepted")
	}
}
