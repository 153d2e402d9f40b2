package main_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/guestd/state"
	"github.com/vmpersona/vmpersona/guestd/sysenv"
	"github.com/vmpersona/vmpersona/protocol"
)

// --sync-service-env (the boot unit's command) exits at once instead of
// serving. On this machine systemd is not PID 1, so it must succeed
// without touching anything; the Debian tier (make integration-full) runs
// it under systemd.
func TestSyncServiceEnvExits(t *testing.T) {
	if fi, err := os.Stat(sysenv.DefaultSystemdDir); err == nil && fi.IsDir() {
		t.Skip("systemd runs here: the command would change this machine's service environment")
	}
	dir := t.TempDir()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Save(&protocol.ActiveState{Persona: protocol.Persona{Name: "p", EnvironmentVariables: map[string]string{"A": "1"}}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "--sync-service-env", "--state-dir", dir, "--log-level", "debug").CombinedOutput()
	if err != nil {
		t.Fatalf("vmpersona-guestd --sync-service-env: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, sysenv.RecordFile)); err == nil {
		t.Fatal("a record was written without systemd")
	}
}
