package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (run go test -update after checking):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestGoldenPersonaTable(t *testing.T) {
	at := time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)
	p := protocol.Persona{
		Name:                 "hardened",
		EnvironmentVariables: map[string]string{"APP_ENV": "staging", "LOG_LEVEL": "warn"},
		PreActivationScript:  "#!/bin/sh\necho preparing",
		CommandOverrides:     map[string]string{"deploy": "#!/bin/sh\necho dry-run: \"$@\"", "ls": "/usr/local/bin/safe-ls"},
		RestrictedCommands:   []string{"rm", "shutdown"},
		AllowedCommands:      []string{"ls", "cat"},
		DefaultPersona:       true,
		Revision:             4, CreatedAt: at, UpdatedAt: at.Add(time.Hour),
	}
	var b bytes.Buffer
	if err := printPersona(&b, p); err != nil {
		t.Fatal(err)
	}
	golden(t, "persona_get.golden", b.Bytes())
}

func TestGoldenRootHelp(t *testing.T) {
	out, _, code := runInProcess(t, nil, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	golden(t, "help.golden", []byte(out))
}
