package activation

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/protocol"
)

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// Scripts are kept under a content-addressed name and reused: an activation
// with the same script does not write it again. A file a crash left torn
// differs from the content and is rewritten; files no persona at hand uses
// are removed.
func TestScriptsKeptAndReused(t *testing.T) {
	m, dir := newManager(t, "")
	marker := filepath.Join(t.TempDir(), "ran")
	script := "#!/bin/sh\necho x >> " + marker + "\n"
	act := func(name, pre string) {
		t.Helper()
		res := m.Activate(context.Background(), protocol.Activate{Persona: protocol.Persona{Name: name, PreActivationScript: pre}})
		if res.Result != protocol.ResultActivated {
			t.Fatalf("%s: %+v %+v", name, res, res.Script)
		}
	}
	act("a", script)
	path, err := m.materialise("scripts", script, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	ino := inode(t, path)
	act("b", script)
	if inode(t, path) != ino {
		t.Fatal("the same script was written again")
	}
	// Torn by a crash: rewritten before it runs.
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 3"), 0o700); err != nil {
		t.Fatal(err)
	}
	act("c", script)
	if got, _ := os.ReadFile(marker); string(got) != "x\nx\nx\n" {
		t.Fatalf("script runs: %q", got)
	}
	// Neither the current (d) nor the previous (c) persona uses it anymore
	// after two activations without it.
	act("d", "")
	act("e", "")
	if ents, _ := os.ReadDir(filepath.Join(dir, "scripts")); len(ents) != 0 {
		t.Fatalf("scripts left: %v", ents)
	}
}

// The profile is written without fsync: at start it is derived again from
// active.json, whatever a crash left (a torn file, or the profile of an
// activation that was never persisted).
func TestProfileDerivedFromActiveAtStart(t *testing.T) {
	dir := t.TempDir()
	profile := filepath.Join(t.TempDir(), "vmpersona.sh")
	store, _ := state.Open(dir)
	if err := os.WriteFile(profile, []byte("export GONE=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Store: store, ProfileFile: profile}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(profile); !os.IsNotExist(err) {
		t.Fatalf("profile of no persona left: %v", err)
	}
	p := protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{"A": "1"}}
	if err := store.Save(&protocol.ActiveState{Persona: p}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(profile, []byte("export A="), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Store: store, ProfileFile: profile}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(profile); string(got) != string(profileScript("p", p.EnvironmentVariables)) {
		t.Fatalf("profile: %q", got)
	}
}

// The guest applies the environment size rule itself: a persona whose
// environment would make every exec fail with E2BIG is refused with the
// reason, and the guest keeps what it held. So is a secret_variables entry
// that names no variable of the persona.
func TestRefusesUnusablePersona(t *testing.T) {
	m, _ := newManager(t, "")
	big := map[string]string{}
	for i := range 40 {
		big[fmt.Sprintf("V%d", i)] = strings.Repeat("x", 30<<10) // 40 × 30 KiB: over 1 MiB
	}
	for _, c := range []struct {
		p    protocol.Persona
		want string
	}{
		{protocol.Persona{Name: "huge", EnvironmentVariables: big}, "E2BIG"},
		{protocol.Persona{Name: "typo", EnvironmentVariables: map[string]string{"A": "1"}, SecretVariables: []string{"B"}}, "secret_variables"},
	} {
		res := m.Activate(context.Background(), protocol.Activate{Persona: c.p})
		if res.Result != protocol.ResultFailed || !strings.Contains(res.Error, c.want) {
			t.Errorf("%s: %+v; want failed naming %s", c.p.Name, res.Result, c.want)
		}
		if v := m.view.Load(); v.Active != nil {
			t.Errorf("%s: the guest holds %s after the refusal", c.p.Name, v.Active.Persona.Name)
		}
	}
}

// A materialised file checked once is not read again while its stamp
// (inode, size, times) is unchanged; a file changed since — in place, or
// replaced by another — is checked again and rewritten.
func TestCheckedFilesNoticeChanges(t *testing.T) {
	old := racyWindow
	racyWindow = 0 // remember checks at once
	t.Cleanup(func() { racyWindow = old })
	m, _ := newManager(t, "")
	content := "#!/bin/sh\necho checked\n"
	path, err := m.materialise("overrides", content, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.materialise("overrides", content, 0o755); err != nil { // read, compared, remembered
		t.Fatal(err)
	}
	if !m.files.ok(path) {
		t.Fatal("a checked file is not remembered")
	}
	for _, change := range []struct {
		name string
		do   func() error
	}{
		{"in place, another size", func() error { return os.WriteFile(path, []byte("#!/bin/sh\nexit 9\n"), 0o755) }},
		{"replaced, same size", func() error {
			tmp := path + ".new"
			if err := os.WriteFile(tmp, []byte(strings.Replace(content, "checked", "CHECKED", 1)), 0o755); err != nil {
				return err
			}
			return os.Rename(tmp, path)
		}},
	} {
		if err := change.do(); err != nil {
			t.Fatal(err)
		}
		if _, err := m.materialise("overrides", content, 0o755); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != content {
			t.Fatalf("%s: the changed file was used as it is: %q", change.name, got)
		}
		m.materialise("overrides", content, 0o755) // checked again, remembered
	}
}

// Files a previous run left in the state directory are removed by the first
// activation's pass, even when that activation keeps the same files as the
// one before; later passes that would keep the same files (nothing
// materialised since) are skipped, and a persona that drops an override
// still has its file removed.
func TestMaterialisedFilesCollected(t *testing.T) {
	m, dir := newManager(t, "")
	over := "#!/bin/sh\necho over"
	withOver := protocol.Persona{Name: "o", CommandOverrides: map[string]string{"tool": over}}
	act := func(p protocol.Persona) {
		t.Helper()
		if res := m.Activate(context.Background(), protocol.Activate{Persona: p}); res.Result != protocol.ResultActivated {
			t.Fatalf("%s: %+v", p.Name, res)
		}
	}
	stale := filepath.Join(dir, "overrides", "left-by-an-older-run")
	if err := os.MkdirAll(filepath.Dir(stale), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("x"), 0o700); err != nil {
		t.Fatal(err)
	}
	act(protocol.Persona{Name: "a"})
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("a file left by an older run is still there: %v", err)
	}
	act(withOver)
	act(protocol.Persona{Name: "b"}) // the previous persona still uses the file
	ents, _ := os.ReadDir(filepath.Join(dir, "overrides"))
	if len(ents) != 1 {
		t.Fatalf("overrides while the previous persona uses one: %v", ents)
	}
	act(protocol.Persona{Name: "c"})
	act(protocol.Persona{Name: "d"})
	if ents, _ := os.ReadDir(filepath.Join(dir, "overrides")); len(ents) != 0 {
		t.Fatalf("overrides no persona at hand uses: %v", ents)
	}
}
