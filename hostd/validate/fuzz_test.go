package validate

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/vmpersona/vmpersona/protocol"
)

// FuzzPersona feeds JSON documents to the validator: it must never panic,
// and a persona it accepts must survive a JSON round trip unchanged and
// still be accepted.
func FuzzPersona(f *testing.F) {
	for _, seed := range []string{
		`{"name":"hardened","environment_variables":{"APP_ENV":"staging"},"pre_activation_script":"#!/bin/sh\necho preparing","post_activation_script":"#!/bin/sh\ntest -n \"$APP_ENV\"","command_overrides":{"deploy":"#!/bin/sh\necho dry-run: \"$@\"","ls":"/usr/local/bin/safe-ls"},"restricted_commands":["rm","shutdown"],"default_persona":false}`,
		`{"name":"a"}`,
		`{"name":"a","allowed_commands":["/usr/bin/env","ls"]}`,
		`{"name":"a","environment_variables":{"1A":"x"}}`,
		`{"name":"a","command_overrides":{"..":"/bin/true"}}`,
		`{"name":"a","command_overrides":{"x":"/a/../b"}}`,
		`{"name":"a","restricted_commands":["", "/"]}`,
		`{"name":"a","pre_activation_script":"\u0000"}`,
		`{"name":"A"}`,
		`{}`,
		`null`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p protocol.Persona
		if json.Unmarshal(data, &p) != nil {
			return
		}
		_ = Name(p.Name)
		if Persona(&p) != nil {
			return
		}
		Normalize(&p)
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("accepted persona does not encode: %v", err)
		}
		var q protocol.Persona
		if err := json.Unmarshal(b, &q); err != nil {
			t.Fatalf("accepted persona does not decode: %v\n%s", err, b)
		}
		Normalize(&q)
		if err := Persona(&q); err != nil {
			t.Fatalf("persona invalid after a JSON round trip: %v\n%s", err, b)
		}
		// Times decode into fresh *time.Location values: compare them by
		// instant, the rest by value.
		if !p.CreatedAt.Equal(q.CreatedAt) || !p.UpdatedAt.Equal(q.UpdatedAt) {
			t.Fatalf("JSON round trip changed the timestamps: %v %v, %v %v", p.CreatedAt, q.CreatedAt, p.UpdatedAt, q.UpdatedAt)
		}
		p.CreatedAt, p.UpdatedAt = q.CreatedAt, q.UpdatedAt
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("JSON round trip changed the persona:\n%+v\n%+v", p, q)
		}
	})
}
