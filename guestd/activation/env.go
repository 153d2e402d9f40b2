package activation

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/vmpersona/vmpersona/protocol"
)

// Variables the daemon's own environment may carry that must not reach the
// commands it runs: those vmpersona sets, and systemd's per-service ones.
var strippedPrefixes = []string{"VMPERSONA_", "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=", "LISTEN_FDS=", "LISTEN_PID=", "LISTEN_FDNAMES="}

// BaseEnv returns the daemon's environment minus anything vmpersona added:
// its own VMPERSONA_ variables, systemd's notification variables and, when
// a persona was active before the daemon started (its profile reaches
// shells that may have started the daemon), that persona's variables with
// their persona values.
func BaseEnv(environ []string, active *protocol.ActiveState) []string {
	var persona map[string]string
	if active != nil {
		persona = active.Persona.EnvironmentVariables
	}
	out := make([]string, 0, len(environ))
next:
	for _, kv := range environ {
		for _, p := range strippedPrefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if pv, ok := persona[k]; ok && pv == v {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// ComposeEnv is base with vars laid on top (vars win), vars in sorted order.
func ComposeEnv(base []string, vars map[string]string) []string {
	out := make([]string, 0, len(base)+len(vars))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := vars[k]; ok {
			continue
		}
		out = append(out, kv)
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// Lookup returns the value of key in env.
func Lookup(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// shellQuote quotes v for a POSIX shell: single quotes, with each single
// quote written as '\”.
func shellQuote(v string) string {
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

// profileScript renders a persona's variables as a shell profile fragment.
func profileScript(persona string, vars map[string]string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by vmpersona-guestd: the environment of persona %q. Do not edit;\n# it is replaced on every activation and removed on deactivation.\n", persona)
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		b.WriteString("export " + k + "=" + shellQuote(vars[k]) + "\n")
	}
	return []byte(b.String())
}

// publicEnv is the persona's environment without its secret_variables: what
// the world-readable profile file may hold.
func publicEnv(p *protocol.Persona) map[string]string {
	if len(p.SecretVariables) == 0 {
		return p.EnvironmentVariables
	}
	out := make(map[string]string, len(p.EnvironmentVariables))
	for k, v := range p.EnvironmentVariables {
		if !slices.Contains(p.SecretVariables, k) {
			out[k] = v
		}
	}
	return out
}
