package rules_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

var (
	names = map[string]bool{
		"a": true, "0": true, "a-b": true, "a.b": true, "a_b": true, "web-1.prod_x": true,
		strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
		"": false, "-a": false, ".a": false, "_a": false, "A": false, "aB": false, "a b": false,
		"a/b": false, "../a": false, "..": false, "a\n": false, "a\x00": false, "ä": false, "ａ": false,
	}
	envNames = map[string]bool{
		"A": true, "_": true, "_1": true, "A1": true, "a": true, "PATH": true, "APP_ENV2": true,
		strings.Repeat("A", 255): true, strings.Repeat("A", 256): false,
		"": false, "1A": false, "A-B": false, "A=B": false, "A B": false, "A\x00": false,
		"Ä": false, "A\n": false, "ＡＢ": false, "A.B": false,
	}
	envValues = map[string]bool{
		"": true, "x": true, "it's \"$HOME\"\n": true, "ä": true, strings.Repeat("x", 32<<10): true,
		strings.Repeat("x", 32<<10+1): false, "x\x00y": false, "\xff": false,
	}
	scripts = map[string]bool{
		"": true, "#!/bin/sh\necho ok\n": true, strings.Repeat("x", 1<<20): true,
		strings.Repeat("x", 1<<20+1): false, "#!/bin/sh\x00": false, "#!/bin/sh\n\xfe": false,
	}
)

func printable(s string) string {
	if len(s) > 40 {
		return s[:20] + "…"
	}
	return s
}

// TestRules pins what each rule accepts.
func TestRules(t *testing.T) {
	for _, tc := range []struct {
		rule  string
		check func(string) error
		cases map[string]bool
	}{
		{"PersonaName", rules.PersonaName, names},
		{"EnvName", rules.EnvName, envNames},
		{"EnvValue", rules.EnvValue, envValues},
		{"Script", rules.Script, scripts},
	} {
		for in, ok := range tc.cases {
			err := tc.check(in)
			if (err == nil) != ok {
				t.Errorf("%s(%q, %d bytes) = %v, want accepted %v", tc.rule, printable(in), len(in), err, ok)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%s(%q): %v is not of class invalid", tc.rule, printable(in), err)
			}
		}
	}
	if rules.ExecEnvValue("\xff any bytes") != nil || rules.ExecEnvValue("a\x00") == nil {
		t.Error("ExecEnvValue: any bytes but NUL")
	}
}

// TestDaemonsAgree: the host's validation (before storing a persona) and
// the guest's (before applying it) accept and refuse the same inputs.
func TestDaemonsAgree(t *testing.T) {
	agree := func(what string, in string, p protocol.Persona) {
		t.Helper()
		host := validate.Persona(&p)
		guest := activation.CheckPersona(&p)
		if (host == nil) != (guest == nil) {
			t.Errorf("%s %q (%d bytes): host says %v, guest says %v", what, printable(in), len(in), host, guest)
		}
	}
	for n := range names {
		agree("name", n, protocol.Persona{Name: n})
		if (validate.Name(n) == nil) != (rules.PersonaName(n) == nil) {
			t.Errorf("validate.Name(%q) and rules.PersonaName disagree", printable(n))
		}
	}
	for k := range envNames {
		agree("environment variable", k, protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{k: "v"}})
		if (validate.EnvName(k) == nil) != (rules.EnvName(k) == nil) {
			t.Errorf("validate.EnvName(%q) and rules.EnvName disagree", printable(k))
		}
	}
	for v := range envValues {
		agree("environment value", v, protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{"K": v}})
	}
	for s := range scripts {
		agree("pre-activation script", s, protocol.Persona{Name: "p", PreActivationScript: s})
		agree("post-activation script", s, protocol.Persona{Name: "p", PostActivationScript: s})
	}
}

func TestUserName(t *testing.T) {
	for _, ok := range []string{"", "root", "nobody", "1000", "www-data", "svc.app", "_apt", "host$"} {
		if err := rules.UserName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"a b", "-x", "x:y", "../etc", "a$b", strings.Repeat("a", 33)} {
		if rules.UserName(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
