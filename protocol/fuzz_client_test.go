package protocol_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// FuzzClientMessages sends the client one frame of any type, flags, id,
// version and payload, stamped with the session's epoch, as a guest could.
// Whatever it is, the client must not panic, must keep the session, and must
// still answer a call afterwards.
func FuzzClientMessages(f *testing.F) {
	f.Add(uint8(protocol.TypeAuditBatch), uint16(0), uint64(7), uint8(1), []byte(`{"spool_id":"s","events":[{"seq":1,"time":"2026-01-01T00:00:00Z","type":"exec"}]}`))
	f.Add(uint8(protocol.TypeAuditBatch), uint16(0), uint64(8), uint8(1), []byte(`{"events":null}`))
	f.Add(uint8(protocol.TypeExecOutput), uint16(protocol.FlagResponse|protocol.FlagMore), uint64(2), uint8(1), []byte("\x01out"))
	f.Add(uint8(protocol.TypeExecResult), uint16(protocol.FlagResponse), uint64(1), uint8(1), []byte(`{}`))
	f.Add(uint8(protocol.TypePing), uint16(0), uint64(0), uint8(1), []byte(nil))
	f.Add(uint8(protocol.TypeError), uint16(protocol.FlagResponse), uint64(3), uint8(1), []byte(`{"code":"x"}`))
	f.Add(uint8(0x55), uint16(0), uint64(9), uint8(1), []byte(`{}`))
	f.Add(uint8(protocol.TypeExec), uint16(0x8000), uint64(9), uint8(2), []byte(`{}`))
	f.Fuzz(func(t *testing.T, typ uint8, flags uint16, id uint64, version uint8, payload []byte) {
		if len(payload) > 4096 {
			return
		}
		if protocol.Flags(flags)&protocol.FlagResponse != 0 && id == 2 {
			// Id 2 is the Ping call below: a response with that id sent
			// before the call would rightly answer it.
			id |= 1 << 63
		}
		c, p := session(t, protocol.ClientConfig{Heartbeat: time.Hour, MaxPayload: 1024,
			OnAudit: func(b protocol.AuditBatch) (uint64, error) { return uint64(len(b.Events)), nil }})
		p.send(protocol.Header{Version: version, Type: protocol.Type(typ), Flags: protocol.Flags(flags), ID: id}, payload)
		// The guest's side: drain what the client answers until its Ping,
		// and answer that.
		p.serve(func(fr protocol.Frame) bool {
			if fr.Type == protocol.TypePing && fr.Flags == 0 {
				p.reply(fr, protocol.TypePong, nil)
				return false
			}
			return true
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Call(ctx, protocol.TypePing, nil, nil, nil); err != nil {
			t.Fatalf("after a %s frame (flags %#x, version %d): %v", protocol.Type(typ), flags, version, err)
		}
		if c.Err() != nil {
			t.Fatalf("session ended: %v", c.Err())
		}
	})
}
