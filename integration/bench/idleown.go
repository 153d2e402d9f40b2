package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// idleOwn: what a connected guest daemon does by itself. Its host asks for
// a heartbeat only every minute, so none falls in the window: every context
// switch counted is one of the daemon's own wakeups (issue 18's idle target
// counts these; answering the host's heartbeat is extra, see "1. idle
// guestd" beside it). The window starts 2 s after the session's last frame
// and lasts past the 10 s that follow it: a timer the daemon left armed by
// its last write (a write deadline once did) fires inside it.
func (b *bench) idleOwn(ctx context.Context) error {
	window := 20 * time.Second
	if b.cfg.quick {
		window = 10 * time.Second
	}
	sock, g, err := b.startGuest(ctx, "quiet")
	if err != nil {
		return err
	}
	defer g.stop()
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := protocol.Handshake(hctx, conn, protocol.ClientConfig{HostVersion: "bench", Logger: quietLogger(), Heartbeat: time.Minute})
	cancel()
	if err != nil {
		return err
	}
	defer c.Close(nil)
	// The start-up's garbage collection and the first session's work are
	// over before the window.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Second):
	}
	sw, cpu, err := idleRates(ctx, window, g.pid())
	if err != nil {
		return err
	}
	b.add(row{fmt.Sprintf("1. idle guestd's own wakeups (connected, no heartbeat due in the window): context switches/s, %s", window),
		fmt.Sprintf("%.1f/s (CPU %.3f ms/s)", sw[0], cpu[0]), "", "", "≤ 3/s", metLE(sw[0], 3)})
	return nil
}
