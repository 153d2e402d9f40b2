package validate

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

// A persona whose environment execve would refuse (E2BIG on every exec) is
// refused when it is created, naming the field.
func TestEnvironmentFitsExecve(t *testing.T) {
	env := map[string]string{}
	for i := range 100 { // 100 × 30 KB = 3 MB, each value within its own bound
		env[fmt.Sprintf("V%03d", i)] = strings.Repeat("x", 30<<10)
	}
	err := Persona(&protocol.Persona{Name: "big", EnvironmentVariables: env})
	var ve *Error
	if !errors.As(err, &ve) || ve.Field != "environment_variables" || !strings.Contains(err.Error(), "E2BIG") {
		t.Fatalf("3 MB environment: %v, want an error naming environment_variables", err)
	}
	// Just under the bound is accepted.
	small := map[string]string{}
	for i := range 30 {
		small[fmt.Sprintf("V%03d", i)] = strings.Repeat("x", 30<<10)
	}
	if rules.EnvSize(small) > rules.MaxEnvTotal {
		t.Fatal("test environment too large")
	}
	if err := Persona(&protocol.Persona{Name: "ok", EnvironmentVariables: small}); err != nil {
		t.Fatalf("%d bytes of environment: %v", rules.EnvSize(small), err)
	}
}
