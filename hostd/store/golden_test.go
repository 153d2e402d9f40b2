package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/protocol"
)

// Golden records: testdata/schema<N>/ holds a persona, an instance record
// and an audit event exactly as a store at schema version N keeps them.
// TestGoldenEncoding pins the current encoding to the newest directory;
// TestGoldenMigration opens a store built from each directory, byte for
// byte, and reads the records back. A change of what the store keeps fails
// one of them until it comes with a migration and a new directory.

var goldenTime = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func goldenPersona() protocol.Persona {
	return protocol.Persona{
		Name:                 "hardened",
		EnvironmentVariables: map[string]string{"APP_ENV": "production", "LANG": "C.UTF-8"},
		PreActivationScript:  "#!/bin/sh\necho preparing",
		PostActivationScript: "#!/bin/sh\necho ready",
		CommandOverrides:     map[string]string{"deploy": "#!/bin/sh\necho dry-run", "ls": "/usr/local/bin/safe-ls"},
		RestrictedCommands:   []string{"rm", "shutdown"},
		AllowedCommands:      []string{"ls", "cat"},
		DefaultPersona:       true,
		Revision:             1,
		CreatedAt:            goldenTime,
		UpdatedAt:            goldenTime,
	}
}

func goldenInstance() InstanceRecord {
	p := goldenPersona()
	return InstanceRecord{
		Instance: "vm1", Persona: &p, Revision: 1, ActivationID: "act-1",
		ActivatedAt: goldenTime.Add(time.Minute), UpdatedAt: goldenTime, BootID: "boot-1",
	}
}

// goldenDesired is the desired state a schema 1 store's instance record
// migrates to, and what schema 2 stores hold.
func goldenDesired() DesiredState {
	p := goldenPersona()
	return DesiredState{Instance: "vm1", Persona: &p, Revision: 1, SetBy: DesiredByAdoption, UpdatedAt: goldenTime}
}

func goldenAudit() AuditEvent {
	return AuditEvent{
		ID: "18ecd0f92af330000000000000000000", Time: goldenTime.Add(2 * time.Minute), Instance: "vm1",
		Actor: "alice", Type: AuditActivationRequested, Persona: "hardened", Result: "activated",
		ActivationID: "act-1", Source: SourceHost, Detail: "revision 1",
	}
}

func readGolden(t *testing.T, version uint64, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", fmt.Sprintf("schema%d", version), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// goldenVersions are the schema versions with a testdata directory.
func goldenVersions(t *testing.T) []uint64 {
	t.Helper()
	var out []uint64
	for v := uint64(1); v <= SchemaVersion; v++ {
		if _, err := os.Stat(filepath.Join("testdata", fmt.Sprintf("schema%d", v))); err == nil {
			out = append(out, v)
		}
	}
	if len(out) == 0 || out[0] != 1 {
		t.Fatalf("testdata/schema1 is missing (golden versions %v)", out)
	}
	return out
}

// TestGoldenEncoding: what this build writes is byte for byte what the
// newest golden directory holds; that directory must be the current version.
func TestGoldenEncoding(t *testing.T) {
	vs := goldenVersions(t)
	if newest := vs[len(vs)-1]; newest != SchemaVersion {
		t.Fatalf("newest golden directory is testdata/schema%d; schema version %d needs testdata/schema%d", newest, SchemaVersion, SchemaVersion)
	}
	p := goldenPersona()
	inst := goldenInstance()
	ev := goldenAudit()
	des := goldenDesired()
	for _, c := range []struct {
		file   string
		encode func() ([]byte, error)
	}{
		{"persona.json", func() ([]byte, error) { return encodePersona(&p) }},
		{"instance.json", func() ([]byte, error) { return encodeInstance(&inst) }},
		{"audit.json", func() ([]byte, error) { return encodeAudit(&ev) }},
		{"desired.json", func() ([]byte, error) { return encodeDesired(&des) }},
	} {
		got, err := c.encode()
		if err != nil {
			t.Fatal(err)
		}
		if want := readGolden(t, SchemaVersion, c.file); !bytes.Equal(got, want) {
			t.Errorf("%s: the store now writes\n%s\nwhere schema version %d stores hold\n%s\n(a change of stored data needs a migration: see schema.go)", c.file, got, SchemaVersion, want)
		}
	}
}

// buildGoldenStore writes the golden records of one schema version into a
// fresh Badger directory with the keys a store of that version has.
func buildGoldenStore(t *testing.T, version uint64) string {
	t.Helper()
	dir := t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	ev := goldenAudit()
	err = db.Update(func(txn *badger.Txn) error {
		set := func(k string, v []byte) {
			if err == nil {
				err = txn.Set([]byte(k), v)
			}
		}
		set("p/hardened", readGolden(t, version, "persona.json"))
		set("m/default", []byte("hardened"))
		set("i/vm1", readGolden(t, version, "instance.json"))
		set("a/"+ev.ID, readGolden(t, version, "audit.json"))
		set("x/i/vm1\x00"+ev.ID, nil)
		set("x/p/hardened\x00"+ev.ID, nil)
		set("x/t/activation_requested\x00"+ev.ID, nil)
		if version > 1 { // version 1 wrote no version key
			set(keySchema, binary.BigEndian.AppendUint64(nil, version))
		}
		if version >= 2 { // desired states
			set("d/vm1", readGolden(t, version, "desired.json"))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestGoldenMigration opens a store of every golden version and reads its
// records back as they were written.
func TestGoldenMigration(t *testing.T) {
	for _, v := range goldenVersions(t) {
		t.Run(fmt.Sprintf("schema%d", v), func(t *testing.T) {
			dir := buildGoldenStore(t, v)
			s := openAt(t, dir, Options{})

			want := goldenPersona()
			if got, err := s.GetPersona("hardened"); err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("GetPersona = %+v, %v; want %+v", got, err, want)
			}
			if got, ok, err := s.DefaultPersona(); err != nil || !ok || got.Name != "hardened" {
				t.Errorf("DefaultPersona = %s, %v, %v; want hardened", got.Name, ok, err)
			}
			wantInst := goldenInstance()
			if got, err := s.GetInstance("vm1"); err != nil || !reflect.DeepEqual(got, wantInst) {
				t.Errorf("GetInstance = %+v, %v; want %+v", got, err, wantInst)
			}
			wantDes := goldenDesired()
			if got, err := s.GetDesired("vm1"); err != nil || !reflect.DeepEqual(got, wantDes) {
				t.Errorf("GetDesired = %+v, %v; want %+v", got, err, wantDes)
			}
			wantEv := goldenAudit()
			for _, q := range []AuditQuery{{}, {Instance: "vm1"}, {Persona: "hardened"}, {Type: AuditActivationRequested}} {
				evs, err := s.QueryAudit(q)
				if err != nil || len(evs) != 1 || !reflect.DeepEqual(evs[0], wantEv) {
					t.Errorf("QueryAudit(%+v) = %+v, %v; want [%+v]", q, evs, err, wantEv)
				}
			}
			if got, recorded, err := readSchema(s.db); err != nil || got != SchemaVersion || !recorded {
				t.Errorf("schema version after open = %d (recorded %v), %v; want %d recorded", got, recorded, err, SchemaVersion)
			}

			// A write after the migration lands beside the old records.
			if _, err := s.AppendAudit(AuditEvent{Type: AuditExec, Instance: "vm1"}); err != nil {
				t.Fatal(err)
			}
			if evs, err := s.QueryAudit(AuditQuery{Instance: "vm1"}); err != nil || len(evs) != 2 || evs[0].ID != wantEv.ID {
				t.Errorf("audit after a new event = %+v, %v", evs, err)
			}
		})
	}
}

// TestSecretVariablesKept: a persona's secret_variables survive a reopen of
// the store (schema 4); losing them would put secret values into guests'
// profile files.
func TestSecretVariablesKept(t *testing.T) {
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	p := goldenPersona()
	p.DefaultPersona = false
	p.EnvironmentVariables["DB_PASSWORD"] = "hunter2"
	p.SecretVariables = []string{"DB_PASSWORD"}
	if _, err := s.CreatePersona(p); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, dir, Options{})
	got, err := s.GetPersona("hardened")
	if err != nil || !reflect.DeepEqual(got.SecretVariables, []string{"DB_PASSWORD"}) {
		t.Fatalf("secret_variables after reopen = %v, %v; want [DB_PASSWORD]", got.SecretVariables, err)
	}
}
