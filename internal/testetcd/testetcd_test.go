package testetcd

import (
	"context"
	"testing"
	"time"
)

// A killed leader is replaced by another member; restarted on its data, it
// serves again.
func TestKillAndRestart(t *testing.T) {
	c := Start(t, 3)
	cli := c.Client(nil)
	defer cli.Close()
	lead := c.Leader(cli)
	c.Kill(lead)
	c.WaitLeader(cli)
	if now := c.Leader(cli); now == lead || now < 0 {
		t.Fatalf("leader %d after killing leader %d", now, lead)
	}
	c.Restart(lead)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Status(ctx, c.Endpoints()[lead])
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member %d does not serve after its restart: %v", lead, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
