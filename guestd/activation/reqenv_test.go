package activation

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

func TestExecEnvRefusesStartupVariables(t *testing.T) {
	v := &View{Env: []string{"PATH=/usr/bin", "A=base"}}
	for _, k := range []string{"LD_PRELOAD", "LD_AUDIT", "BASH_ENV", "ENV", "PATH", "IFS", "PYTHONPATH", "PERL5OPT",
		"RUBYOPT", "NODE_OPTIONS", "GCONV_PATH", "GLIBC_TUNABLES", "MALLOC_CHECK_", "BASH_FUNC_f%%", "GIT_SSH_COMMAND"} {
		_, err := v.ExecEnv(map[string]string{k: "x", "APP": "1"})
		if !errors.Is(err, ErrRequestEnv) || !strings.Contains(err.Error(), k) {
			t.Errorf("%s: %v", k, err)
		}
	}
	env, err := v.ExecEnv(map[string]string{"APP": "1", "A": "req"})
	if err != nil || Lookup(env, "APP") != "1" || Lookup(env, "A") != "req" || Lookup(env, "PATH") != "/usr/bin" {
		t.Fatalf("%v %v", env, err)
	}
	// A persona accepts a name by listing it.
	v.Active = &protocol.ActiveState{Persona: protocol.Persona{Name: "p", RequestEnv: []string{"LD_LIBRARY_PATH"}}}
	if env, err := v.ExecEnv(map[string]string{"LD_LIBRARY_PATH": "/opt/lib"}); err != nil || Lookup(env, "LD_LIBRARY_PATH") != "/opt/lib" {
		t.Fatalf("accepted name: %v %v", env, err)
	}
	if _, err := v.ExecEnv(map[string]string{"LD_PRELOAD": "x"}); err == nil {
		t.Fatal("a name not listed was accepted")
	}
}
