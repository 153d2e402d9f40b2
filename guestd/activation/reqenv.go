package activation

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrRequestEnv reports an exec request that sets a variable the active
// persona does not accept from requests.
var ErrRequestEnv = errors.New("request environment refused")

// Variables a request may not set unless the persona names them in
// request_env: what makes the dynamic loader, the C library, a shell or an
// interpreter load or run something other than the program asked for, or
// makes a program find its commands elsewhere. The list starts from glibc's
// unsecvars (what it drops for set-uid programs) and adds the start-up
// variables of shells and common interpreters and the commands programs
// run on the user's behalf (pagers, editors).
var unsafeNames = map[string]bool{
	// glibc unsecvars.
	"GCONV_PATH": true, "GETCONF_DIR": true, "GLIBC_TUNABLES": true, "HOSTALIASES": true,
	"LOCALDOMAIN": true, "LOCPATH": true, "MALLOC_TRACE": true, "NIS_PATH": true, "NLSPATH": true,
	"RESOLV_HOST_CONF": true, "RES_OPTIONS": true, "TMPDIR": true, "TZDIR": true,
	// Where commands and their configuration are found.
	"PATH": true, "HOME": true, "XDG_CONFIG_HOME": true, "XDG_CONFIG_DIRS": true, "XDG_DATA_DIRS": true,
	"CDPATH": true, "TERMINFO": true, "TERMINFO_DIRS": true,
	// Shells.
	"BASH_ENV": true, "ENV": true, "SHELLOPTS": true, "BASHOPTS": true, "PS4": true, "IFS": true,
	"GLOBIGNORE": true, "PROMPT_COMMAND": true, "INPUTRC": true, "ZDOTDIR": true, "FPATH": true,
	"SHELL": true, "BASH_XTRACEFD": true, "EXECIGNORE": true, "POSIXLY_CORRECT": true,
	// Interpreters and runtimes.
	"PERLLIB": true, "PERLIO": true, "NODE_OPTIONS": true, "NODE_PATH": true, "NODE_REPL_EXTERNAL_MODULE": true,
	"JAVA_TOOL_OPTIONS": true, "_JAVA_OPTIONS": true, "JDK_JAVA_OPTIONS": true, "CLASSPATH": true,
	"TCLLIBPATH": true, "PHPRC": true, "PHP_INI_SCAN_DIR": true, "GEM_HOME": true, "GEM_PATH": true,
	"GOFLAGS": true, "OPENSSL_CONF": true, "OPENSSL_ENGINES": true, "OPENSSL_MODULES": true,
	// Commands programs run for the user.
	"PAGER": true, "MANPAGER": true, "EDITOR": true, "VISUAL": true, "BROWSER": true, "LESS": true,
	"LESSOPEN": true, "LESSCLOSE": true, "LESSKEY": true, "LESSKEYIN": true, "LESSSECURE": true,
	"SSH_ASKPASS": true, "SUDO_ASKPASS": true, "SYSTEMD_PAGER": true, "SYSTEMD_EDITOR": true,
}

// Name prefixes refused the same way.
var unsafePrefixes = []string{
	"LD_",        // the dynamic loader: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, …
	"MALLOC_",    // glibc's allocator tunables and tracing
	"BASH_FUNC_", // exported bash functions
	"PYTHON",     // PYTHONSTARTUP, PYTHONPATH, PYTHONHOME, PYTHONINSPECT, …
	"PERL5",      // PERL5OPT, PERL5LIB, PERL5DB
	"RUBY",       // RUBYOPT, RUBYLIB
	"LUA_",       // LUA_INIT, LUA_PATH, LUA_CPATH
	"GIT_",       // GIT_SSH_COMMAND, GIT_EXEC_PATH, GIT_CONFIG_*, …
	"DYLD_",
}

// UnsafeRequestVar reports whether a request may set k only when the
// persona names it in request_env.
func UnsafeRequestVar(k string) bool {
	if unsafeNames[k] {
		return true
	}
	for _, p := range unsafePrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// ExecEnv returns the environment of an exec request: the view's
// environment with the request's variables laid on top. A request variable
// the policy refuses (UnsafeRequestVar, and not in the persona's
// request_env) fails the request with ErrRequestEnv naming it; nothing is
// silently dropped.
func (v *View) ExecEnv(req map[string]string) ([]string, error) {
	if len(req) == 0 {
		return v.Env, nil
	}
	var refused []string
	for k := range req {
		if UnsafeRequestVar(k) && !v.acceptsEnv(k) {
			refused = append(refused, k)
		}
	}
	if len(refused) > 0 {
		slices.Sort(refused)
		return nil, fmt.Errorf("%w: %s may not be set by a request (it changes what the command loads or runs); a persona accepts it by naming it in request_env",
			ErrRequestEnv, strings.Join(refused, ", "))
	}
	return ComposeEnv(v.Env, req), nil
}

func (v *View) acceptsEnv(k string) bool {
	return v.Active != nil && slices.Contains(v.Active.Persona.RequestEnv, k)
}

// ExecUser returns the user exec requests run as when they name none: the
// persona's exec_user, "" (root) for none.
func (v *View) ExecUser() string {
	if v.Active == nil {
		return ""
	}
	return v.Active.Persona.ExecUser
}
