package validate

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

// wholePersona marks an expected error about the persona as a whole (its
// Field is the empty path).
const wholePersona = "(persona)"

// good is a persona that passes every rule; each case changes one thing.
func good() protocol.Persona {
	return protocol.Persona{
		Name:                 "hardened",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging", "_x1": ""},
		PreActivationScript:  "#!/bin/sh\necho preparing",
		PostActivationScript: "#!/bin/sh\ntest -n \"$APP_ENV\"",
		CommandOverrides: map[string]string{
			"deploy": "#!/bin/sh\necho dry-run: \"$@\"",
			"ls":     "/usr/local/bin/safe-ls",
		},
		RestrictedCommands: []string{"rm", "shutdown", "/sbin/reboot"},
		AllowedCommands:    []string{"ls", "/usr/bin/env"},
	}
}

func manyEnv(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("V%d", i)] = "x"
	}
	return m
}

func manyOverrides(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("c%d", i)] = "/bin/true"
	}
	return m
}

func manyCommands(n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = "cmd"
	}
	return s
}

func TestPersona(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *protocol.Persona)
		field  string // "" = valid
	}{
		{"contract example", func(p *protocol.Persona) {}, ""},
		{"minimal", func(p *protocol.Persona) { *p = protocol.Persona{Name: "a"} }, ""},
		{"empty scripts", func(p *protocol.Persona) { p.PreActivationScript, p.PostActivationScript = "", "" }, ""},
		{"script without shebang", func(p *protocol.Persona) { p.PreActivationScript = "echo hi" }, ""},

		// name
		{"name empty", func(p *protocol.Persona) { p.Name = "" }, "name"},
		{"name 63", func(p *protocol.Persona) { p.Name = strings.Repeat("a", 63) }, ""},
		{"name 64", func(p *protocol.Persona) { p.Name = strings.Repeat("a", 64) }, "name"},
		{"name digits and punctuation", func(p *protocol.Persona) { p.Name = "0a_b.c-d" }, ""},
		{"name upper case", func(p *protocol.Persona) { p.Name = "Hardened" }, "name"},
		{"name leading dash", func(p *protocol.Persona) { p.Name = "-x" }, "name"},
		{"name leading dot", func(p *protocol.Persona) { p.Name = ".x" }, "name"},
		{"name leading underscore", func(p *protocol.Persona) { p.Name = "_x" }, "name"},
		{"name slash", func(p *protocol.Persona) { p.Name = "a/b" }, "name"},
		{"name space", func(p *protocol.Persona) { p.Name = "a b" }, "name"},
		{"name non-ASCII", func(p *protocol.Persona) { p.Name = "é" }, "name"},

		// environment
		{"env name digit first", func(p *protocol.Persona) { p.EnvironmentVariables["1X"] = "" }, "environment_variables.1X"},
		{"env name dash", func(p *protocol.Persona) { p.EnvironmentVariables["A-B"] = "" }, "environment_variables.A-B"},
		{"env name equals", func(p *protocol.Persona) { p.EnvironmentVariables["A=B"] = "" }, `environment_variables["A=B"]`},
		{"env name empty", func(p *protocol.Persona) { p.EnvironmentVariables[""] = "" }, `environment_variables[""]`},
		{"env name NUL", func(p *protocol.Persona) { p.EnvironmentVariables["A\x00"] = "" }, `environment_variables["A\x00"]`},
		{"env name 255", func(p *protocol.Persona) { p.EnvironmentVariables[strings.Repeat("A", 255)] = "" }, ""},
		{"env name 256", func(p *protocol.Persona) { p.EnvironmentVariables[strings.Repeat("A", 256)] = "" },
			"environment_variables." + strings.Repeat("A", 256)},
		{"env value NUL", func(p *protocol.Persona) { p.EnvironmentVariables["FOO"] = "a\x00b" }, "environment_variables.FOO"},
		{"env value bad UTF-8", func(p *protocol.Persona) { p.EnvironmentVariables["FOO"] = "\xff" }, "environment_variables.FOO"},
		{"env value 32 KiB", func(p *protocol.Persona) { p.EnvironmentVariables["FOO"] = strings.Repeat("v", 32<<10) }, ""},
		{"env value 32 KiB + 1", func(p *protocol.Persona) { p.EnvironmentVariables["FOO"] = strings.Repeat("v", 32<<10+1) }, "environment_variables.FOO"},
		{"env value newline", func(p *protocol.Persona) { p.EnvironmentVariables["FOO"] = "a\nb" }, ""},
		{"env 4096 vars", func(p *protocol.Persona) { p.EnvironmentVariables = manyEnv(4096) }, ""},
		{"env 4097 vars", func(p *protocol.Persona) { p.EnvironmentVariables = manyEnv(4097) }, "environment_variables"},
		{"env first bad key in sorted order", func(p *protocol.Persona) {
			p.EnvironmentVariables["9B"] = ""
			p.EnvironmentVariables["8A"] = ""
		}, "environment_variables.8A"},

		// scripts
		{"pre script NUL", func(p *protocol.Persona) { p.PreActivationScript = "#!/bin/sh\x00" }, "pre_activation_script"},
		{"post script NUL", func(p *protocol.Persona) { p.PostActivationScript = "\x00" }, "post_activation_script"},
		{"pre script bad UTF-8", func(p *protocol.Persona) { p.PreActivationScript = "#!/bin/sh\n\xc3\x28" }, "pre_activation_script"},
		{"post script 1 MiB", func(p *protocol.Persona) { p.PostActivationScript = strings.Repeat("#", 1<<20) }, ""},
		{"post script 1 MiB + 1", func(p *protocol.Persona) { p.PostActivationScript = strings.Repeat("#", 1<<20+1) }, "post_activation_script"},

		// overrides: keys
		{"override key slash", func(p *protocol.Persona) { p.CommandOverrides["bin/ls"] = "/bin/ls" }, `command_overrides["bin/ls"]`},
		{"override key dot", func(p *protocol.Persona) { p.CommandOverrides["."] = "/bin/ls" }, `command_overrides["."]`},
		{"override key dotdot", func(p *protocol.Persona) { p.CommandOverrides[".."] = "/bin/ls" }, `command_overrides[".."]`},
		{"override key empty", func(p *protocol.Persona) { p.CommandOverrides[""] = "/bin/ls" }, `command_overrides[""]`},
		{"override key NUL", func(p *protocol.Persona) { p.CommandOverrides["l\x00s"] = "/bin/ls" }, `command_overrides["l\x00s"]`},
		{"override key dotted name", func(p *protocol.Persona) { p.CommandOverrides["python3.11"] = "/bin/ls" }, ""},
		{"override key 255", func(p *protocol.Persona) { p.CommandOverrides[strings.Repeat("c", 255)] = "/bin/ls" }, ""},
		{"override key 256", func(p *protocol.Persona) { p.CommandOverrides[strings.Repeat("c", 256)] = "/bin/ls" },
			"command_overrides." + strings.Repeat("c", 256)},
		// overrides: targets
		{"override relative path", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "bin/deploy" }, "command_overrides.deploy"},
		{"override empty", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "" }, "command_overrides.deploy"},
		{"override dotdot", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "/usr/../bin/sh" }, "command_overrides.deploy"},
		{"override unclean", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "/usr//bin/sh" }, "command_overrides.deploy"},
		{"override trailing slash", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "/usr/bin/" }, "command_overrides.deploy"},
		{"override root", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "/" }, "command_overrides.deploy"},
		{"override path NUL", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "/bin/sh\x00" }, "command_overrides.deploy"},
		{"override path 4097", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "/" + strings.Repeat("a", 4096) }, "command_overrides.deploy"},
		{"override script NUL", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "#!/bin/sh\n\x00" }, "command_overrides.deploy"},
		{"override script 1 MiB", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "#!" + strings.Repeat("x", 1<<20-2) }, ""},
		{"override script 1 MiB + 1", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "#!" + strings.Repeat("x", 1<<20-1) }, "command_overrides.deploy"},
		{"override script without shebang", func(p *protocol.Persona) { p.CommandOverrides["deploy"] = "echo hi" }, "command_overrides.deploy"},
		{"4096 overrides", func(p *protocol.Persona) { p.CommandOverrides = manyOverrides(4096) }, ""},
		{"4097 overrides", func(p *protocol.Persona) { p.CommandOverrides = manyOverrides(4097) }, "command_overrides"},

		// command lists
		{"restricted empty entry", func(p *protocol.Persona) { p.RestrictedCommands[2] = "" }, "restricted_commands[2]"},
		{"restricted relative path", func(p *protocol.Persona) { p.RestrictedCommands[1] = "sbin/halt" }, "restricted_commands[1]"},
		{"restricted dotdot path", func(p *protocol.Persona) { p.RestrictedCommands[2] = "/sbin/../bin/rm" }, "restricted_commands[2]"},
		{"restricted dotdot name", func(p *protocol.Persona) { p.RestrictedCommands[0] = ".." }, "restricted_commands[0]"},
		{"restricted unclean path", func(p *protocol.Persona) { p.RestrictedCommands[2] = "/sbin/./reboot" }, "restricted_commands[2]"},
		{"restricted NUL", func(p *protocol.Persona) { p.RestrictedCommands[0] = "r\x00m" }, "restricted_commands[0]"},
		{"restricted path 4096", func(p *protocol.Persona) { p.RestrictedCommands[0] = "/" + strings.Repeat("a", 4095) }, ""},
		{"restricted path 4097", func(p *protocol.Persona) { p.RestrictedCommands[0] = "/" + strings.Repeat("a", 4096) }, "restricted_commands[0]"},
		{"restricted name 256", func(p *protocol.Persona) { p.RestrictedCommands[0] = strings.Repeat("a", 256) }, "restricted_commands[0]"},
		{"restricted 10000", func(p *protocol.Persona) { p.RestrictedCommands = manyCommands(10000) }, ""},
		{"restricted 10001", func(p *protocol.Persona) { p.RestrictedCommands = manyCommands(10001) }, "restricted_commands"},
		{"allowed empty entry", func(p *protocol.Persona) { p.AllowedCommands[1] = "" }, "allowed_commands[1]"},
		{"allowed relative path", func(p *protocol.Persona) { p.AllowedCommands[0] = "./ls" }, "allowed_commands[0]"},
		{"rollout neither manual nor auto", func(p *protocol.Persona) { p.Rollout = "sometimes" }, "rollout"},
		{"allowed 10001", func(p *protocol.Persona) { p.AllowedCommands = manyCommands(10001) }, "allowed_commands"},

		// aggregate
		{"total text over 16 MiB", func(p *protocol.Persona) {
			p.CommandOverrides = map[string]string{}
			for i := range 17 {
				p.CommandOverrides[fmt.Sprintf("c%d", i)] = "#!" + strings.Repeat("x", 1<<20-2)
			}
		}, wholePersona},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := good()
			tc.change(&p)
			err := Persona(&p)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Persona() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Persona() = nil, want an error on %s", tc.field)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			var ve *Error
			if !errors.As(err, &ve) {
				t.Fatalf("error %T is not a *validate.Error", err)
			}
			want := tc.field
			if want == wholePersona {
				want = ""
			}
			if ve.Field != want {
				t.Errorf("Field = %q, want %q (detail %q)", ve.Field, want, ve.Detail)
			}
			if ve.Detail == "" {
				t.Error("Detail is empty")
			}
		})
	}
}

func TestPersonaNil(t *testing.T) {
	if err := Persona(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Persona(nil) = %v, want ErrInvalid", err)
	}
}

func TestName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"web-1.prod_x", true}, {strings.Repeat("z", 63), true},
		{"", false}, {strings.Repeat("z", 64), false}, {"A", false}, {"-a", false}, {"a/b", false},
		{"a\x00", false}, {"..", false}, {"a b", false},
	} {
		err := Name(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("Name(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil {
			var ve *Error
			if !errors.As(err, &ve) || ve.Field != "name" || !errors.Is(err, ErrInvalid) {
				t.Errorf("Name(%q) = %#v, want *Error on field name matching ErrInvalid", tc.name, err)
			}
		}
	}
}

func TestEnvName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"PATH", true}, {"_", true}, {"a1_B2", true}, {strings.Repeat("A", 255), true},
		{"", false}, {"1A", false}, {"A-B", false}, {"A=B", false}, {"A\x00", false}, {"É", false},
		{strings.Repeat("A", 256), false},
	} {
		err := EnvName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("EnvName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("EnvName(%q) = %v, does not match ErrInvalid", tc.name, err)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	p := good()
	p.RestrictedCommands[1] = ""
	err := Persona(&p)
	if got := err.Error(); got != "restricted_commands[1]: must not be empty" {
		t.Fatalf("Error() = %q, want the field and the detail", got)
	}
	if got := (&Error{Detail: "too big"}).Error(); got != "too big" {
		t.Fatalf("Error() without field = %q", got)
	}
}

func TestNormalize(t *testing.T) {
	p := protocol.Persona{Name: "n"}
	Normalize(&p)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`"environment_variables":{}`, `"command_overrides":{}`, `"restricted_commands":[]`} {
		if !strings.Contains(s, want) {
			t.Errorf("JSON %s lacks %s", s, want)
		}
	}
	// Existing values are kept.
	q := good()
	Normalize(&q)
	if q.EnvironmentVariables["APP_ENV"] != "staging" || len(q.RestrictedCommands) != 3 {
		t.Errorf("Normalize changed set fields: %+v", q)
	}
}

func TestPersonaEnforcementAndRequestEnv(t *testing.T) {
	for _, c := range []struct {
		p     protocol.Persona
		field string
	}{
		{protocol.Persona{Name: "p", Enforcement: "strict"}, "enforcement"},
		{protocol.Persona{Name: "p", RequestEnv: []string{"OK", "A=B"}}, "request_env[1]"},
		{protocol.Persona{Name: "p", Enforcement: "kernel", RequestEnv: []string{"LD_LIBRARY_PATH"}}, ""},
		{protocol.Persona{Name: "p", Enforcement: "agent"}, ""},
	} {
		wantField(t, c.p, Persona(&c.p), c.field)
	}
}

// A command both restricted and overridden is refused, naming both fields.
func TestPersonaRestrictedAndOverridden(t *testing.T) {
	for _, restricted := range []string{"rm", "/bin/rm"} {
		p := &protocol.Persona{Name: "p", RestrictedCommands: []string{"ls", restricted},
			CommandOverrides: map[string]string{"rm": "/bin/echo"}}
		err := Persona(p)
		var e *Error
		if !errors.As(err, &e) || e.Field != "restricted_commands[1]" || !strings.Contains(e.Detail, "command_overrides.rm") {
			t.Errorf("%s restricted and rm overridden: %v", restricted, err)
		}
	}
	ok := &protocol.Persona{Name: "p", RestrictedCommands: []string{"rm"}, CommandOverrides: map[string]string{"ls": "/bin/echo"}}
	if err := Persona(ok); err != nil {
		t.Errorf("distinct commands: %v", err)
	}
}

// secret_variables: each entry a variable name of environment_variables,
// listed once; the refusal names the entry.
func TestPersonaSecretVariables(t *testing.T) {
	env := map[string]string{"DB_PASSWORD": "x", "APP_ENV": "y"}
	for _, c := range []struct {
		secret []string
		field  string
	}{
		{nil, ""},
		{[]string{"DB_PASSWORD"}, ""},
		{[]string{"DB_PASSWORD", "APP_ENV"}, ""},
		{[]string{"DB_PASSWORD", "MISSING"}, "secret_variables[1]"},
		{[]string{"A=B"}, "secret_variables[0]"},
		{[]string{"DB_PASSWORD", "DB_PASSWORD"}, "secret_variables[1]"},
	} {
		p := protocol.Persona{Name: "p", EnvironmentVariables: env, SecretVariables: c.secret}
		wantField(t, c.secret, Persona(&p), c.field)
	}
}

// wantField: err is nil when field is "", else an *Error naming field.
func wantField(t *testing.T, input any, err error, field string) {
	t.Helper()
	var ve *Error
	if field == "" {
		if err != nil {
			t.Errorf("%+v: %v", input, err)
		}
	} else if !errors.As(err, &ve) || ve.Field != field {
		t.Errorf("%+v: want field %s, got %v", input, field, err)
	}
}
