// Package validate checks persona definitions before the host daemon stores
// them or sends them to a guest.
//
// Every rule is a limit a guest must be able to honour: names that are
// usable as file names and keys, environment variables the kernel accepts,
// scripts and overrides that are text, command lists that name commands.
// A refusal is a *Error naming the offending field as a JSON path
// (`environment_variables.FOO`, `restricted_commands[2]`), so that the REST
// API can put it in a problem detail as it is.
package validate

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/protocol"
	"github.com/vmpersona/vmpersona/rules"
)

// ErrInvalid is matched (errors.Is) by every *Error, as is the class
// errdefs.ErrInvalid.
var ErrInvalid = errdefs.New(errdefs.ErrInvalid, "invalid-field", "invalid persona")

// Error is a refused persona: Field is the JSON path of the offending value,
// Detail says what is wrong with it.
type Error struct {
	Field  string
	Detail string
}

// Error is "field: detail", or the detail alone when Field is empty (the
// persona as a whole, or a lone value checked by EnvName).
func (e *Error) Error() string {
	if e.Field == "" {
		return e.Detail
	}
	return e.Field + ": " + e.Detail
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }

// Details names the field at fault.
func (e *Error) Details() map[string]any { return map[string]any{"field": e.Field} }

func fail(field, format string, args ...any) *Error {
	return &Error{Field: field, Detail: fmt.Sprintf(format, args...)}
}

// Name checks a persona name: 1–63 characters of [a-z0-9][a-z0-9_.-]*.
func Name(name string) error {
	if e := checkName(name); e != nil {
		return e
	}
	return nil
}

func checkName(name string) *Error {
	if err := rules.PersonaName(name); err != nil {
		return fail("name", "%v", err)
	}
	return nil
}

// Normalize replaces nil maps and slices by empty ones, so that JSON answers
// show {} and [] rather than null. It leaves everything else alone.
func Normalize(p *protocol.Persona) {
	if p.EnvironmentVariables == nil {
		p.EnvironmentVariables = map[string]string{}
	}
	if p.CommandOverrides == nil {
		p.CommandOverrides = map[string]string{}
	}
	if p.RestrictedCommands == nil {
		p.RestrictedCommands = []string{}
	}
	if p.AllowedCommands == nil {
		p.AllowedCommands = []string{}
	}
}

// Persona checks every rule of a persona definition. It returns nil or a
// *Error for the first offending field (fields in document order, map keys
// in sorted order, so the answer is the same every time). The server-kept
// fields (revision, timestamps) are not checked.
func Persona(p *protocol.Persona) error {
	if p == nil {
		return fail("", "persona is missing")
	}
	if e := checkPersona(p); e != nil {
		return e
	}
	return nil
}

func checkPersona(p *protocol.Persona) *Error {
	if e := checkName(p.Name); e != nil {
		return e
	}
	switch p.Rollout {
	case "", "manual", "auto":
	default:
		return fail("rollout", "%q is neither \"manual\" nor \"auto\"", p.Rollout)
	}
	switch p.Enforcement {
	case "", protocol.EnforcementKernel, protocol.EnforcementAgent:
	default:
		return fail("enforcement", "%q is neither \"kernel\" nor \"agent\"", p.Enforcement)
	}
	if len(p.RequestEnv) > rules.MaxEnvVars {
		return fail("request_env", "has %d names, at most %d allowed", len(p.RequestEnv), rules.MaxEnvVars)
	}
	if err := rules.UserName(p.ExecUser); err != nil {
		return fail("exec_user", "%v", err)
	}
	for i, k := range p.RequestEnv {
		if err := rules.EnvName(k); err != nil {
			return fail(fmt.Sprintf("request_env[%d]", i), "%v", err)
		}
	}
	total := len(p.Name)

	n, e := checkMap("environment_variables", "variables", p.EnvironmentVariables, rules.MaxEnvVars, checkEnvName,
		func(f, v string) *Error { return checkText(f, v, rules.MaxEnvValueLen) })
	if e != nil {
		return e
	}
	total += n
	if err := rules.EnvTotal(p.EnvironmentVariables); err != nil {
		return fail("environment_variables", "%v", err)
	}
	if i, err := rules.SecretVariables(p.SecretVariables, p.EnvironmentVariables); err != nil {
		f := "secret_variables"
		if i >= 0 {
			f += "[" + strconv.Itoa(i) + "]"
		}
		return fail(f, "%v", err)
	}

	if e := checkText("pre_activation_script", p.PreActivationScript, rules.MaxScriptLen); e != nil {
		return e
	}
	if e := checkText("post_activation_script", p.PostActivationScript, rules.MaxScriptLen); e != nil {
		return e
	}
	total += len(p.PreActivationScript) + len(p.PostActivationScript)

	n, e = checkMap("command_overrides", "overrides", p.CommandOverrides, rules.MaxOverrides, checkCommandName, checkOverrideTarget)
	if e != nil {
		return e
	}
	total += n

	for _, list := range []struct {
		field   string
		entries []string
	}{
		{"restricted_commands", p.RestrictedCommands},
		{"allowed_commands", p.AllowedCommands},
	} {
		if n := len(list.entries); n > rules.MaxCommandEntries {
			return fail(list.field, "has %d entries, at most %d allowed", n, rules.MaxCommandEntries)
		}
		for i, c := range list.entries {
			if e := checkCommand(list.field+"["+strconv.Itoa(i)+"]", c); e != nil {
				return e
			}
			total += len(c)
		}
	}

	if e := checkRestrictedOverride(p.RestrictedCommands, p.CommandOverrides); e != nil {
		return e
	}

	if total > rules.MaxPersonaTextSize {
		return fail("", "names, values and scripts add up to %d bytes, at most %d allowed", total, rules.MaxPersonaTextSize)
	}
	return nil
}

// checkRestrictedOverride refuses a command both restricted and
// overridden (by its name, or an absolute path ending in that name): one of
// the two would silently lose, so the author must choose.
func checkRestrictedOverride(restricted []string, overrides map[string]string) *Error {
	for i, c := range restricted {
		name := c
		if strings.HasPrefix(c, "/") {
			name = path.Base(c)
		}
		if _, ok := overrides[name]; ok {
			return fail("restricted_commands["+strconv.Itoa(i)+"]",
				"%q is also overridden in %s: a command is either restricted or overridden", c, mapField("command_overrides", name))
		}
	}
	return nil
}

// mapField is the JSON path of a map member: parent.key when the key is a
// plain identifier, parent["key"] (Go-quoted) otherwise.
// checkMap checks a map of at most max members and each member, in key
// order, with the checks of its keys and values; it answers the total
// length of keys and values.
func checkMap(field, what string, m map[string]string, max int, key, value func(f, s string) *Error) (int, *Error) {
	if n := len(m); n > max {
		return 0, fail(field, "has %d %s, at most %d allowed", n, what, max)
	}
	total := 0
	for _, k := range slices.Sorted(maps.Keys(m)) {
		f := mapField(field, k)
		if e := key(f, k); e != nil {
			return 0, e
		}
		if e := value(f, m[k]); e != nil {
			return 0, e
		}
		total += len(k) + len(m[k])
	}
	return total, nil
}

func mapField(parent, key string) string {
	plain := key != ""
	for i := 0; i < len(key) && plain; i++ {
		c := key[i]
		plain = c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	}
	if plain {
		return parent + "." + key
	}
	return parent + "[" + strconv.Quote(key) + "]"
}

func checkEnvName(field, k string) *Error {
	if err := rules.EnvName(k); err != nil {
		return fail(field, "%v", err)
	}
	return nil
}

// checkText: valid UTF-8, no NUL, at most max bytes. Empty is fine.
func checkText(field, s string, max int) *Error {
	if err := rules.Text(s, max); err != nil {
		return fail(field, "%v", err)
	}
	return nil
}

// checkCommandName: one path element naming a command.
func checkCommandName(field, c string) *Error {
	switch {
	case c == "":
		return fail(field, "command name must not be empty")
	case len(c) > rules.MaxCommandNameLen:
		return fail(field, "command name is %d bytes long, at most %d allowed", len(c), rules.MaxCommandNameLen)
	case strings.IndexByte(c, 0) >= 0:
		return fail(field, "command name contains a NUL byte")
	case strings.IndexByte(c, '/') >= 0:
		return fail(field, "command name must not contain '/'")
	case c == "." || c == "..":
		return fail(field, "%q is not a command name", c)
	case !utf8.ValidString(c):
		return fail(field, "command name is not valid UTF-8")
	}
	return nil
}

// checkAbsPath: an absolute, clean path with a file name.
func checkAbsPath(field, p string) *Error {
	switch {
	case len(p) > rules.MaxCommandPathLen:
		return fail(field, "path is %d bytes long, at most %d allowed", len(p), rules.MaxCommandPathLen)
	case strings.IndexByte(p, 0) >= 0:
		return fail(field, "path contains a NUL byte")
	case !utf8.ValidString(p):
		return fail(field, "path is not valid UTF-8")
	case !strings.HasPrefix(p, "/"):
		return fail(field, "must be an absolute path")
	case slices.Contains(strings.Split(p, "/"), ".."):
		return fail(field, "path must not contain '..' segments")
	case path.Clean(p) != p:
		return fail(field, "path is not clean (want %q)", path.Clean(p))
	case p == "/":
		return fail(field, "path names no file")
	}
	return nil
}

// checkCommand: a restricted_commands or allowed_commands entry.
func checkCommand(field, c string) *Error {
	if c == "" {
		return fail(field, "must not be empty")
	}
	if strings.HasPrefix(c, "/") {
		return checkAbsPath(field, c)
	}
	if strings.IndexByte(c, '/') >= 0 {
		return fail(field, "must be a command name or an absolute path")
	}
	return checkCommandName(field, c)
}

// checkOverrideTarget: an absolute clean path or an inline "#!" script.
func checkOverrideTarget(field, v string) *Error {
	switch {
	case strings.HasPrefix(v, "#!"):
		return checkText(field, v, rules.MaxScriptLen)
	case strings.HasPrefix(v, "/"):
		return checkAbsPath(field, v)
	case v == "":
		return fail(field, "override must not be empty: give an absolute path or a script starting with #!")
	default:
		return fail(field, "override must be an absolute path or a script starting with #!")
	}
}
