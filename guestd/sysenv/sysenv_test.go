package sysenv_test

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vmpersona/vmpersona/guestd/sysenv"
	"github.com/vmpersona/vmpersona/guestd/sysenv/sysenvtest"
	"github.com/vmpersona/vmpersona/protocol"
)

func active(vars map[string]string, secret ...string) *protocol.ActiveState {
	return &protocol.ActiveState{Persona: protocol.Persona{Name: "p", EnvironmentVariables: vars, SecretVariables: secret}}
}

func wantEnv(t *testing.T, fake *sysenvtest.Manager, want map[string]string) {
	t.Helper()
	if got := fake.Env(t); !maps.Equal(got, want) {
		t.Fatalf("manager environment %q, want %q", got, want)
	}
}

// Activation, replacement, undo: services see exactly the active
// persona's variables (values with spaces, quotes, newlines and '=' as
// they are), and the previous persona's names are removed.
func TestApplyReplacesAndUndoes(t *testing.T) {
	state := t.TempDir()
	fake := sysenvtest.New(t, state, "boot-1")
	fake.Set(t, "LANG", "C.UTF-8") // not ours: never touched
	m := sysenv.New(fake.Config)
	ctx := context.Background()

	first := map[string]string{"APP_ENV": "staging", "ODD": "a b 'c' \"d\"\nline2=x"}
	if _, err := m.Apply(ctx, first); err != nil {
		t.Fatal(err)
	}
	wantEnv(t, fake, map[string]string{"LANG": "C.UTF-8", "APP_ENV": "staging", "ODD": first["ODD"]})

	second := map[string]string{"APP_ENV": "production", "REGION": "eu"}
	undo, err := m.Apply(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	wantEnv(t, fake, map[string]string{"LANG": "C.UTF-8", "APP_ENV": "production", "REGION": "eu"})
	if got := m.Exported(); !maps.Equal(got, second) {
		t.Fatalf("record %v", got)
	}

	undo()
	wantEnv(t, fake, map[string]string{"LANG": "C.UTF-8", "APP_ENV": "staging", "ODD": first["ODD"]})
	if got := m.Exported(); !maps.Equal(got, first) {
		t.Fatalf("record after undo %v", got)
	}

	if _, err := m.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	wantEnv(t, fake, map[string]string{"LANG": "C.UTF-8"})

	want := [][]string{
		{"set-environment", "APP_ENV=staging", "ODD=" + first["ODD"]},
		{"unset-environment", "ODD"},
		{"set-environment", "APP_ENV=production", "REGION=eu"},
		{"unset-environment", "REGION"},
		{"set-environment", "APP_ENV=staging", "ODD=" + first["ODD"]},
		{"unset-environment", "APP_ENV", "ODD"},
	}
	if got := fake.Calls(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("systemctl calls\n got %q\nwant %q", got, want)
	}
	// Applying what is already there calls nothing.
	if _, err := m.Apply(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Calls(t)); n != len(want) {
		t.Fatalf("%d calls, want %d", n, len(want))
	}
}

// Secret variables never reach the manager's environment.
func TestVarsLeaveSecretsOut(t *testing.T) {
	got := sysenv.Vars(active(map[string]string{"APP_ENV": "x", "DB_PASSWORD": "hunter2"}, "DB_PASSWORD"))
	if !maps.Equal(got, map[string]string{"APP_ENV": "x"}) {
		t.Fatalf("%v", got)
	}
	if sysenv.Vars(nil) != nil {
		t.Fatal("no persona must give no variables")
	}
	state := t.TempDir()
	fake := sysenvtest.New(t, state, "b")
	if err := sysenv.New(fake.Config).Sync(context.Background(), active(map[string]string{"APP_ENV": "x", "DB_PASSWORD": "hunter2"}, "DB_PASSWORD")); err != nil {
		t.Fatal(err)
	}
	wantEnv(t, fake, map[string]string{"APP_ENV": "x"})
	rec, _ := os.ReadFile(filepath.Join(state, sysenv.RecordFile))
	if bytes.Contains(rec, []byte("hunter2")) {
		t.Fatalf("the record holds a secret: %s", rec)
	}
}

// After a reboot the manager's environment is empty whatever the record
// says: the record of an earlier boot counts as nothing exported, so the
// boot-time sync sets every variable again; in the same boot, a second
// sync (the daemon's start after the boot unit) calls nothing.
func TestRecordOfAnEarlierBoot(t *testing.T) {
	state := t.TempDir()
	vars := map[string]string{"APP_ENV": "staging"}
	before := sysenvtest.New(t, state, "boot-1")
	if err := sysenv.New(before.Config).Sync(context.Background(), active(vars)); err != nil {
		t.Fatal(err)
	}
	after := sysenvtest.New(t, state, "boot-2") // a fresh, empty manager
	m := sysenv.New(after.Config)
	if got := m.Exported(); len(got) != 0 {
		t.Fatalf("record of boot-1 read in boot-2: %v", got)
	}
	if err := m.Sync(context.Background(), active(vars)); err != nil {
		t.Fatal(err)
	}
	wantEnv(t, after, vars)
	if err := m.Sync(context.Background(), active(vars)); err != nil {
		t.Fatal(err)
	}
	if n := len(after.Calls(t)); n != 1 {
		t.Fatalf("%d calls, want 1: %q", n, after.Calls(t))
	}
}

// A refusal is an error naming systemctl's message, and the undo puts the
// previous variables back even when the change stopped half way.
func TestRefusalAndHalfWayUndo(t *testing.T) {
	fake := sysenvtest.New(t, t.TempDir(), "b")
	m := sysenv.New(fake.Config)
	ctx := context.Background()
	if _, err := m.Apply(ctx, map[string]string{"OLD": "1"}); err != nil {
		t.Fatal(err)
	}
	fake.Fail(t, "set-environment")
	undo, err := m.Apply(ctx, map[string]string{"NEW": "2"})
	if err == nil || !strings.Contains(err.Error(), "Access denied") || !strings.Contains(err.Error(), "set-environment") {
		t.Fatalf("err = %v", err)
	}
	wantEnv(t, fake, map[string]string{}) // OLD was removed before the refusal
	undo()
	wantEnv(t, fake, map[string]string{"OLD": "1"})
	if got := m.Exported(); !maps.Equal(got, map[string]string{"OLD": "1"}) {
		t.Fatalf("record %v", got)
	}
}

// Where systemd is not running, nothing is called, nothing is recorded,
// and a debug line says why.
func TestSkippedWithoutSystemd(t *testing.T) {
	state := t.TempDir()
	fake := sysenvtest.New(t, state, "b")
	cfg := fake.Config
	cfg.SystemdDir = filepath.Join(t.TempDir(), "no-such-dir")
	var logs bytes.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := sysenv.New(cfg)
	if m.Active() {
		t.Fatal("systemd reported running")
	}
	undo, err := m.Apply(context.Background(), map[string]string{"A": "1"})
	if err != nil {
		t.Fatal(err)
	}
	undo()
	if err := m.Sync(context.Background(), active(map[string]string{"A": "1"})); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Calls(t)); n != 0 {
		t.Fatalf("systemctl called %d times", n)
	}
	if _, err := os.Stat(filepath.Join(state, sysenv.RecordFile)); err == nil {
		t.Fatal("a record was written")
	}
	if !strings.Contains(logs.String(), "level=DEBUG") || !strings.Contains(logs.String(), "systemd is not running") {
		t.Fatalf("no debug line: %s", logs.String())
	}
	if strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("not silent: %s", logs.String())
	}
}

// The command lines: sorted names, only the changes.
func TestCommands(t *testing.T) {
	unset, set := sysenv.Commands(map[string]string{"B": "1", "A": "1", "C": "same"}, map[string]string{"C": "same", "E": "5", "D": "x=y"})
	if !reflect.DeepEqual(unset, []string{"unset-environment", "A", "B"}) || !reflect.DeepEqual(set, []string{"set-environment", "D=x=y", "E=5"}) {
		t.Fatalf("%q %q", unset, set)
	}
	if u, s := sysenv.Commands(map[string]string{"A": "1"}, map[string]string{"A": "1"}); u != nil || s != nil {
		t.Fatalf("%q %q", u, s)
	}
}
