package activation

import (
	"context"
	"fmt"
	"testing"

	"github.com/vmpersona/vmpersona/internal/testpersona"
	"github.com/vmpersona/vmpersona/protocol"
)

// BenchmarkActivateLarge alternates two large personas (each activation a
// real change); the no-scripts case shows the daemon's own cost.
func BenchmarkActivateLarge(b *testing.B) {
	for _, scripts := range []bool{false, true} {
		b.Run(fmt.Sprintf("scripts=%v", scripts), func(b *testing.B) {
			alternate(b, testpersona.Large("big-a", scripts), testpersona.Large("big-b", scripts))
		})
	}
}

// BenchmarkActivateEmpty alternates two personas with nothing in them: the
// daemon's fixed cost of an activation (persisting it and its audit event).
func BenchmarkActivateEmpty(b *testing.B) {
	alternate(b, protocol.Persona{Name: "empty-a"}, protocol.Persona{Name: "empty-b"})
}

// alternate activates two personas one after the other, each activation a
// real change, for as long as the benchmark runs.
func alternate(b *testing.B, one, other protocol.Persona) {
	m, _ := newManager(b, "")
	ps := []protocol.Persona{one, other}
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
	p := testpersona.Large("two", true)
	env := m.View().Env
	for b.Loop() {
		for _, s := range []string{p.PreActivationScript, p.PostActivationScript} {
			if sr, err := m.runScript(context.Background(), "bench", s, env, DefaultScriptTimeout); err != nil || sr != nil {
				b.Fatalf("%v %+v", err, sr)
			}
		}
	}
}
