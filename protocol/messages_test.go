package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

var when = time.Date(2026, 11, 26, 9, 30, 0, 123000000, time.UTC)

func ptr[T any](v T) *T { return &v }

var samplePersona = protocol.Persona{
	Name:                 "hardened",
	EnvironmentVariables: map[string]string{"APP_ENV": "staging"},
	PreActivationScript:  "#!/bin/sh\necho preparing",
	PostActivationScript: "#!/bin/sh\ntest -n \"$APP_ENV\"",
	CommandOverrides:     map[string]string{"ls": "/usr/local/bin/safe-ls"},
	RestrictedCommands:   []string{"rm"},
	AllowedCommands:      []string{"ls"},
	Revision:             3,
	CreatedAt:            when,
	UpdatedAt:            when,
}

const samplePersonaJSON = `{"name":"hardened","environment_variables":{"APP_ENV":"staging"},` +
	`"pre_activation_script":"#!/bin/sh\necho preparing","post_activation_script":"#!/bin/sh\ntest -n \"$APP_ENV\"",` +
	`"command_overrides":{"ls":"/usr/local/bin/safe-ls"},"restricted_commands":["rm"],"allowed_commands":["ls"],` +
	`"default_persona":false,"revision":3,"created_at":"2026-11-26T09:30:00.123Z","updated_at":"2026-11-26T09:30:00.123Z"}`

// messageCase is one message of the protocol: its frame type and flags, a
// value, and the JSON the specification (README.md) gives for it.
type messageCase struct {
	name  string
	typ   protocol.Type
	flags protocol.Flags
	value any    // pointer to the message struct; nil for an empty payload
	json  string // the payload exactly as specified; "" for empty
}

func messageCases() []messageCase {
	active := &protocol.ActiveState{Persona: samplePersona, Revision: 3, ActivationID: "act-1", ActivatedAt: when}
	activeJSON := `{"persona":` + samplePersonaJSON + `,"revision":3,"activation_id":"act-1","activated_at":"2026-11-26T09:30:00.123Z"}`
	return []messageCase{
		{"hello", protocol.TypeHello, 0,
			&protocol.Hello{Epoch: 7, MinVersion: 1, MaxVersion: 1, HostVersion: "0.1.0", HeartbeatMillis: 2000},
			`{"epoch":7,"min_version":1,"max_version":1,"host_version":"0.1.0","heartbeat_ms":2000}`},
		{"hello_ack", protocol.TypeHelloAck, protocol.FlagResponse,
			&protocol.HelloAck{ProtocolVersion: 1, AgentVersion: "0.1.0", Capabilities: []string{protocol.CapExecStream, protocol.CapAllowlist, protocol.CapAuditSpool, protocol.CapProfile},
				BootID: "b1", SpoolID: "s1", Active: active, PendingAudit: 2},
			`{"protocol_version":1,"agent_version":"0.1.0","capabilities":["exec-stream","allowlist","audit-spool","profile"],` +
				`"boot_id":"b1","spool_id":"s1","active":` + activeJSON + `,"pending_audit":2}`},
		{"hello_ack_no_persona", protocol.TypeHelloAck, protocol.FlagResponse,
			&protocol.HelloAck{ProtocolVersion: 1, AgentVersion: "0.1.0", Capabilities: []string{}, BootID: "b1", SpoolID: "s1"},
			`{"protocol_version":1,"agent_version":"0.1.0","capabilities":[],"boot_id":"b1","spool_id":"s1","active":null,"pending_audit":0}`},
		{"ping", protocol.TypePing, 0, nil, ""},
		{"pong", protocol.TypePong, protocol.FlagResponse, nil, ""},
		{"activate", protocol.TypeActivate, 0,
			&protocol.Activate{Persona: samplePersona, Revision: 3, ActivationID: "act-1", ScriptTimeoutMillis: 60000, Actor: "alice", Reason: "api"},
			`{"persona":` + samplePersonaJSON + `,"revision":3,"activation_id":"act-1","script_timeout_ms":60000,"actor":"alice","reason":"api"}`},
		{"activate_minimal", protocol.TypeActivate, 0,
			&protocol.Activate{Persona: protocol.Persona{Name: "p"}, Revision: 1, ActivationID: "a"},
			`{"persona":{"name":"p","environment_variables":null,"pre_activation_script":"","post_activation_script":"",` +
				`"command_overrides":null,"restricted_commands":null,"default_persona":false,"revision":0},"revision":1,"activation_id":"a"}`},
		{"activate_result_activated", protocol.TypeActivateResult, protocol.FlagResponse,
			&protocol.ActivateResult{Result: protocol.ResultActivated, Active: active, DurationMillis: 12.5},
			`{"result":"activated","active":` + activeJSON + `,"duration_ms":12.5}`},
		{"activate_result_rolled_back", protocol.TypeActivateResult, protocol.FlagResponse,
			&protocol.ActivateResult{Result: protocol.ResultRolledBack, Phase: "post",
				Script: &protocol.ScriptResult{ExitCode: 1, Signal: "SIGKILL", TimedOut: true, Stdout: "o", Stderr: "e", StdoutTruncated: true, StderrTruncated: true, DurationMillis: 3},
				Error:  "x", DurationMillis: 4},
			`{"result":"rolled_back","phase":"post","script":{"exit_code":1,"signal":"SIGKILL","timed_out":true,"stdout":"o","stderr":"e",` +
				`"stdout_truncated":true,"stderr_truncated":true,"duration_ms":3},"error":"x","active":null,"duration_ms":4}`},
		{"deactivate", protocol.TypeDeactivate, 0,
			&protocol.Deactivate{ActivationID: "act-2", ScriptTimeoutMillis: 1000, Actor: "bob"},
			`{"activation_id":"act-2","script_timeout_ms":1000,"actor":"bob"}`},
		{"exec", protocol.TypeExec, 0,
			&protocol.Exec{Command: "ls", Args: []string{"-l"}, Env: map[string]string{"A": "1"}, Stdin: []byte("hi\x00"), Cwd: "/tmp",
				TimeoutMillis: 30000, Stream: true, MaxOutput: 4096, Actor: "carol"},
			`{"command":"ls","args":["-l"],"env":{"A":"1"},"stdin":"aGkA","cwd":"/tmp","timeout_ms":30000,"stream":true,"max_output":4096,"actor":"carol"}`},
		{"exec_minimal", protocol.TypeExec, 0, &protocol.Exec{Command: "true"}, `{"command":"true"}`},
		{"exec_result", protocol.TypeExecResult, protocol.FlagResponse,
			&protocol.ExecResult{ExitCode: 2, Signal: "", TimedOut: true, Stdout: "out", Stderr: "err", StdoutTruncated: true, Route: protocol.RouteOverride,
				Persona: ptr("hardened"), DurationMillis: 1.25},
			`{"exit_code":2,"signal":"","timed_out":true,"stdout":"out","stderr":"err","stdout_truncated":true,"stderr_truncated":false,` +
				`"route":"override","persona":"hardened","duration_ms":1.25}`},
		{"exec_result_no_persona", protocol.TypeExecResult, protocol.FlagResponse,
			&protocol.ExecResult{Route: protocol.RouteDefault},
			`{"exit_code":0,"signal":"","stdout":"","stderr":"","stdout_truncated":false,"stderr_truncated":false,"route":"default","persona":null,"duration_ms":0}`},
		{"audit_batch", protocol.TypeAuditBatch, 0,
			&protocol.AuditBatch{SpoolID: "s1", Events: []protocol.AuditEvent{
				{Seq: 1, Time: when, Type: protocol.AuditActivation, Persona: "hardened", Result: protocol.ResultActivated, ActivationID: "act-1", Actor: "alice"},
				{Seq: 2, Time: when, Type: protocol.AuditDenial, Persona: "hardened", Command: "rm", Route: protocol.RouteDenied, Detail: "d"},
			}},
			`{"spool_id":"s1","events":[` +
				`{"seq":1,"time":"2026-11-26T09:30:00.123Z","type":"activation","persona":"hardened","result":"activated","activation_id":"act-1","actor":"alice"},` +
				`{"seq":2,"time":"2026-11-26T09:30:00.123Z","type":"denial","persona":"hardened","command":"rm","route":"denied","detail":"d"}]}`},
		{"audit_ack", protocol.TypeAuditAck, protocol.FlagResponse, &protocol.AuditAck{UpToSeq: 2}, `{"up_to_seq":2}`},
		{"error", protocol.TypeError, protocol.FlagResponse,
			&protocol.Error{Code: protocol.CodeDenied, Message: protocol.DeniedMessage, Command: "rm", Persona: "hardened"},
			`{"code":"denied","message":"Error: Command not allowed in current persona","command":"rm","persona":"hardened"}`},
		{"error_minimal", protocol.TypeError, protocol.FlagResponse,
			&protocol.Error{Code: protocol.CodeUnsupportedType, Message: "m"}, `{"code":"unsupported_type","message":"m"}`},
	}
}

// TestMessageJSON checks every message's JSON field names and shape against
// the specification, and that each decodes back to the same value.
func TestMessageJSON(t *testing.T) {
	for _, tc := range messageCases() {
		t.Run(tc.name, func(t *testing.T) {
			if tc.value == nil {
				return
			}
			got, err := protocol.Marshal(tc.value)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.json {
				t.Errorf("payload\n got %s\nwant %s", got, tc.json)
			}
			back := reflect.New(reflect.TypeOf(tc.value).Elem()).Interface()
			if err := protocol.Unmarshal([]byte(tc.json), back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, tc.value) {
				t.Errorf("decoded\n got %+v\nwant %+v", back, tc.value)
			}
		})
	}
}

// TestMessageFrameRoundTrip sends every message type through AppendFrame
// and Reader, one stream for all of them.
func TestMessageFrameRoundTrip(t *testing.T) {
	cases := messageCases()
	var stream []byte
	for i, tc := range cases {
		stream = protocol.AppendFrame(stream, protocol.Header{Type: tc.typ, Flags: tc.flags, Epoch: 0xdeadbeef, ID: uint64(i) << 40}, []byte(tc.json))
	}
	r := protocol.NewReader(bytes.NewReader(stream), 0)
	for i, tc := range cases {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		want := protocol.Header{Version: protocol.Version, Type: tc.typ, Flags: tc.flags, Epoch: 0xdeadbeef, ID: uint64(i) << 40, Length: uint32(len(tc.json))}
		if f.Header != want {
			t.Errorf("%s: header %+v, want %+v", tc.name, f.Header, want)
		}
		if string(f.Payload) != tc.json {
			t.Errorf("%s: payload %q, want %q", tc.name, f.Payload, tc.json)
		}
		if tc.value != nil {
			v := reflect.New(reflect.TypeOf(tc.value).Elem()).Interface()
			if err := protocol.Unmarshal(f.Payload, v); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !reflect.DeepEqual(v, tc.value) {
				t.Errorf("%s: decoded %+v, want %+v", tc.name, v, tc.value)
			}
		}
	}
	if _, err := r.Next(); err == nil {
		t.Fatal("a frame after the last one")
	}
	if r.Skipped() != 0 {
		t.Errorf("skipped %d bytes of a clean stream", r.Skipped())
	}
}

// TestUnmarshalIgnoresUnknownFields: a newer peer may add fields within a
// protocol version.
func TestUnmarshalIgnoresUnknownFields(t *testing.T) {
	var h protocol.Hello
	if err := protocol.Unmarshal([]byte(`{"epoch":9,"future_field":{"x":[1,2]},"max_version":3}`), &h); err != nil {
		t.Fatal(err)
	}
	if h.Epoch != 9 || h.MaxVersion != 3 {
		t.Errorf("got %+v", h)
	}
}

func TestUnmarshalBadPayload(t *testing.T) {
	for _, payload := range []string{"", "{", "[]", `{"epoch":"x"}`, `{"epoch":-1}`, "\xff"} {
		var h protocol.Hello
		err := protocol.Unmarshal([]byte(payload), &h)
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != protocol.CodeBadRequest {
			t.Errorf("%q: got %v, want a bad_request *Error", payload, err)
		}
	}
}

func TestExecOutput(t *testing.T) {
	tests := []struct {
		name    string
		payload []byte
		stream  byte
		data    []byte
		wantErr bool
	}{
		{"stdout", []byte("\x01hello"), protocol.StreamStdout, []byte("hello"), false},
		{"stderr binary", []byte("\x02\x00\xff\x01"), protocol.StreamStderr, []byte{0, 0xff, 1}, false},
		{"empty data", []byte{1}, protocol.StreamStdout, []byte{}, false},
		{"empty", nil, 0, nil, true},
		{"stream 0", []byte{0, 'x'}, 0, nil, true},
		{"stream 3", []byte{3, 'x'}, 0, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, data, err := protocol.ParseExecOutput(tc.payload)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if s != tc.stream || !bytes.Equal(data, tc.data) {
				t.Errorf("got %d %q, want %d %q", s, data, tc.stream, tc.data)
			}
			if again := protocol.AppendExecOutput(nil, s, data); !bytes.Equal(again, tc.payload) {
				t.Errorf("AppendExecOutput = %q, want %q", again, tc.payload)
			}
		})
	}
}

func TestTypeNames(t *testing.T) {
	want := map[protocol.Type]string{
		0x01: "hello", 0x02: "hello_ack", 0x03: "ping", 0x04: "pong", 0x10: "activate", 0x11: "activate_result",
		0x12: "deactivate", 0x13: "dry_run", 0x14: "dry_run_result", 0x20: "exec", 0x21: "exec_output", 0x22: "exec_result", 0x23: "exec_credit",
		0x24: "exec_input", 0x25: "exec_input_ack",
		0x40: "file_open", 0x41: "file_opened", 0x42: "file_write", 0x43: "file_read", 0x44: "file_data", 0x45: "file_close", 0x30: "audit_batch",
		0x31: "audit_ack", 0x7f: "error",
	}
	for i := 0; i < 256; i++ {
		typ := protocol.Type(i)
		name, known := want[typ]
		if typ.Known() != known {
			t.Errorf("type 0x%02x: Known() = %v", i, typ.Known())
		}
		if known && typ.String() != name {
			t.Errorf("type 0x%02x: %q, want %q", i, typ.String(), name)
		}
		if !known && typ.String() == "" {
			t.Errorf("type 0x%02x has no name", i)
		}
	}
}

func TestErrorString(t *testing.T) {
	e := &protocol.Error{Code: protocol.CodeNotFound, Message: "no such command", Command: "frob"}
	if got := e.Error(); got != "not_found: no such command (frob)" {
		t.Errorf("got %q", got)
	}
	e = &protocol.Error{Code: protocol.CodeBusy, Message: "too many"}
	if got := e.Error(); got != "busy: too many" {
		t.Errorf("got %q", got)
	}
}

// TestJSONHasNoHeader: encoding/json escapes control characters, so a JSON
// payload can never contain a valid frame header (whose version byte is
// 0x01); the Reader's stale-frame detection relies on this (README.md).
func TestJSONHasNoHeader(t *testing.T) {
	frame := protocol.AppendFrame(nil, protocol.Header{Type: protocol.TypeHello, Epoch: 5, ID: 1}, []byte("{}"))
	payload, err := json.Marshal(protocol.Exec{Command: string(frame), Args: []string{string(frame)}})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(payload, frame[:HeaderPrefix]) {
		t.Errorf("JSON payload contains a raw header prefix: %q", payload)
	}
}

// HeaderPrefix is magic plus version byte.
const HeaderPrefix = 5
