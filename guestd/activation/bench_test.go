package activation

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

// benchPersona is the large persona of integration/bench: 100 variables,
// 50 inline overrides, 200 restricted commands (half of them paths), two
// scripts.
func benchPersona(name string, scripts bool) protocol.Persona {
	p := protocol.Persona{Name: name, EnvironmentVariables: map[string]string{}, CommandOverrides: map[string]string{}}
	if scripts {
		p.PreActivationScript, p.PostActivationScript = "#!/bin/sh\ntrue", "#!/bin/sh\ntrue"
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

// BenchmarkActivateLarge alternates two large personas (each activation a
// real change); the no-scripts case shows the daemon's own cost.
func BenchmarkActivateLarge(b *testing.B) {
	for _, scripts := range []bool{false, true} {
		b.Run(fmt.Sprintf("scripts=%v", scripts), func(b *testing.B) {
			m, _ := newManager(b, "")
			ps := []protocol.Persona{benchPersona("big-a", scripts), benchPersona("big-b", scripts)}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				res := m.Activate(context.Background(), protocol.Activate{Persona: ps[i%2]})
				i++
				if res.Result != protocol.ResultActivated {
					b.Fatalf("%+v", res)
				}
			}
		})
	}
}

// BenchmarkActivateEmpty alternates two personas with nothing in them: the
// daemon's fixed cost of an activation (persisting it and its audit event).
func BenchmarkActivateEmpty(b *testing.B) {
	m, _ := newManager(b, "")
	ps := []protocol.Persona{{Name: "empty-a"}, {Name: "empty-b"}}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		res := m.Activate(context.Background(), protocol.Activate{Persona: ps[i%2]})
		i++
		if res.Result != protocol.ResultActivated {
			b.Fatalf("%+v", res)
		}
	}
}

// BenchmarkTwoScripts runs the large persona's two scripts the way an
// activation runs them, and nothing else: the reference of
// BenchmarkActivateLarge/scripts=true (target: at most 1.5× this).
func BenchmarkTwoScripts(b *testing.B) {
	m, _ := newManager(b, "")
	p := benchPersona("two", true)
	env := m.View().Env
	for b.Loop() {
		for _, s := range []string{p.PreActivationScript, p.PostActivationScript} {
			if sr, err := m.runScript(context.Background(), "bench", s, env, DefaultScriptTimeout); err != nil || sr != nil {
				b.Fatalf("%v %+v", err, sr)
			}
		}
	}
}
