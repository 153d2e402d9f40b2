// Package testpersona holds the personas that benchmarks of more than one
// package measure, so that a figure and the benchmark behind it always
// activate the same thing.
package testpersona

import (
	"fmt"

	"github.com/vmpersona/vmpersona/protocol"
)

// TrueScript is the shortest script an activation can run.
const TrueScript = "#!/bin/sh\ntrue"

// Large is the performance figures' large persona: 100 environment
// variables, 50 inline command overrides and 200 restricted commands (half
// by name, half by path); with scripts, a pre- and a post-activation script
// that do nothing. Its values carry name, so that two of them differ
// everywhere and activating one after the other is a real change.
func Large(name string, scripts bool) protocol.Persona {
	p := protocol.Persona{Name: name, EnvironmentVariables: map[string]string{}, CommandOverrides: map[string]string{}}
	if scripts {
		p.PreActivationScript, p.PostActivationScript = TrueScript, TrueScript
	}
	for i := range 100 {
		p.EnvironmentVariables[fmt.Sprintf("BENCH_VAR_%03d", i)] = fmt.Sprintf("value-%d-%s", i, name)
	}
	for i := range 50 {
		p.CommandOverrides[fmt.Sprintf("tool%02d", i)] = fmt.Sprintf("#!/bin/sh\necho override %d \"$@\"", i)
	}
	for i := range 200 {
		if i%2 == 0 {
			p.RestrictedCommands = append(p.RestrictedCommands, fmt.Sprintf("denied%03d", i))
		} else {
			p.RestrictedCommands = append(p.RestrictedCommands, fmt.Sprintf("/usr/local/bin/denied%03d", i))
		}
	}
	return p
}
