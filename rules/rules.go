// Package rules holds the rules both daemons apply to what they accept: the
// persona name, environment variable names and values, scripts, and the
// size limits of a persona. The host refuses a persona that breaks them
// before storing it (hostd/validate, naming the field); the guest refuses
// one before applying it (guestd/activation) and an exec's environment
// before running it (guestd/server). One definition, so the two daemons
// cannot disagree.
//
// The package imports only the standard library and errdefs: the guest
// daemon is small and static.
package rules

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/errdefs"
)

// Limits. Each is inclusive: a value of exactly the limit is accepted.
const (
	MaxNameLen         = 63
	MaxEnvVars         = 4096
	MaxEnvNameLen      = 255
	MaxEnvValueLen     = 32 << 10 // bytes
	MaxScriptLen       = 1 << 20  // bytes, pre/post scripts and inline overrides
	MaxOverrides       = 4096
	MaxCommandNameLen  = 255  // a command name (one path element)
	MaxCommandPathLen  = 4096 // an absolute path (PATH_MAX)
	MaxCommandEntries  = 10000
	MaxPersonaTextSize = 16 << 20 // bytes: all names, values and scripts together
	// MaxEnvTotal bounds a persona's environment as execve counts it
	// (EnvSize): Linux refuses an exec (E2BIG) whose arguments and
	// environment together pass a quarter of the stack limit, 2 MiB with
	// the usual 8 MiB stack. Half of that is left for the guest's own
	// environment, a request's variables and the command's arguments.
	MaxEnvTotal = 1 << 20
)

// EnvSize is what an environment costs an execve: each NAME=value string
// with its terminating NUL and the pointer to it.
func EnvSize(env map[string]string) int {
	n := 0
	for k, v := range env {
		n += len(k) + 1 + len(v) + 1 + 8
	}
	return n
}

// EnvTotal checks an environment against MaxEnvTotal.
func EnvTotal(env map[string]string) error {
	if n := EnvSize(env); n > MaxEnvTotal {
		return violation("adds up to %d bytes as execve counts it (NAME=value, NUL and pointer each), at most %d allowed: every exec would fail with E2BIG", n, MaxEnvTotal)
	}
	return nil
}

// SecretVariables checks a persona's secret_variables against its
// environment: each entry a valid variable name, a key of env (a name that
// is not there is most likely a typo, and its value would be left
// unprotected), and listed once. On a violation it returns the index of the
// offending entry.
func SecretVariables(names []string, env map[string]string) (int, error) {
	if len(names) > MaxEnvVars {
		return -1, violation("has %d names, at most %d allowed", len(names), MaxEnvVars)
	}
	seen := make(map[string]bool, len(names))
	for i, k := range names {
		if err := EnvName(k); err != nil {
			return i, err
		}
		if _, ok := env[k]; !ok {
			return i, violation("names %s, which is not one of environment_variables", k)
		}
		if seen[k] {
			return i, violation("names %s twice", k)
		}
		seen[k] = true
	}
	return -1, nil
}

// violation is a broken rule: class errdefs.ErrInvalid, the message saying
// what is wrong with the value (without naming its field, which the caller
// knows).
func violation(format string, args ...any) error {
	return errdefs.New(errdefs.ErrInvalid, "invalid-field", fmt.Sprintf(format, args...))
}

// PersonaName checks a persona name: 1–63 characters of
// [a-z0-9][a-z0-9_.-]*. Names are file names and keys on both sides.
func PersonaName(name string) error {
	if name == "" {
		return violation("must not be empty")
	}
	if len(name) > MaxNameLen {
		return violation("is %d characters long, at most %d allowed", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '_' || c == '.' || c == '-'):
		default:
			return violation("must match [a-z0-9][a-z0-9_.-]* (bad character %q at %d)", rune(c), i)
		}
	}
	return nil
}

// EnvName checks an environment variable name: POSIX
// ([A-Za-z_][A-Za-z0-9_]*, what a shell can export), at most 255 bytes.
func EnvName(name string) error {
	if name == "" {
		return violation("variable name must not be empty")
	}
	if len(name) > MaxEnvNameLen {
		return violation("variable name is %d bytes long, at most %d allowed", len(name), MaxEnvNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case i > 0 && c >= '0' && c <= '9':
		default:
			return violation("variable name must match [A-Za-z_][A-Za-z0-9_]* (bad character %q at %d)", rune(c), i)
		}
	}
	return nil
}

// EnvValue checks a persona's environment variable value: text of at most
// MaxEnvValueLen bytes.
func EnvValue(v string) error { return Text(v, MaxEnvValueLen) }

// Script checks a pre- or post-activation script or an inline override:
// text of at most MaxScriptLen bytes. Empty is fine (it runs nothing).
func Script(s string) error { return Text(s, MaxScriptLen) }

// Text checks a value that is text: valid UTF-8, no NUL, at most max bytes.
// Empty is fine.
func Text(s string, max int) error {
	if len(s) > max {
		return violation("is %d bytes long, at most %d allowed", len(s), max)
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return violation("contains a NUL byte at %d", i)
	}
	if !utf8.ValidString(s) {
		return violation("is not valid UTF-8")
	}
	return nil
}

// ExecEnvValue checks the value of an environment variable an exec request
// sets: any bytes but NUL (the kernel passes C strings).
func ExecEnvValue(v string) error {
	if i := strings.IndexByte(v, 0); i >= 0 {
		return violation("value contains a NUL byte at %d", i)
	}
	return nil
}

// MaxUserNameLen bounds a user or group name of an exec request.
const MaxUserNameLen = 32

// UserName checks a user or group an exec request runs as: empty (the
// default), a numeric id, or a name of [A-Za-z0-9_.][A-Za-z0-9_.-]* with an
// optional trailing $, at most MaxUserNameLen bytes (what Debian's adduser
// and useradd accept).
func UserName(name string) error {
	if name == "" {
		return nil
	}
	if len(name) > MaxUserNameLen {
		return violation("is %d bytes long, at most %d allowed", len(name), MaxUserNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_' || c == '.' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
		case i > 0 && c == '-':
		case i > 0 && i == len(name)-1 && c == '$':
		default:
			return violation("must be a numeric id or a name of [A-Za-z0-9_.][A-Za-z0-9_.-]* (bad character %q at %d)", rune(c), i)
		}
	}
	return nil
}
