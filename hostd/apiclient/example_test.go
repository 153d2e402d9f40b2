package apiclient_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"os"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/protocol"
)

// Activate a persona, then run a command with its output streamed.
func Example() {
	c, err := apiclient.New(apiclient.Config{URL: "unix:/run/vmpersona/hostd.sock", Timeout: 10 * time.Second})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	ctx := context.Background()

	if _, err := c.Activate(ctx, "vm1", "hardened", apiclient.ActivateOptions{ScriptTimeout: time.Minute}); err != nil {
		var p *apitypes.Problem
		if errors.Is(err, apiclient.ErrActivationRefused) && errors.As(err, &p) {
			fmt.Printf("the %s script refused: exit %d\n%s", p.Phase, *p.ExitCode, p.Stderr)
		}
		return
	}
	res, err := c.ExecStream(ctx, "vm1", apitypes.ExecRequest{Command: "ls", Args: []string{"-l"}}, os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, apiclient.ErrCommandDenied):
		fmt.Println(protocol.DeniedMessage)
	case err != nil:
		fmt.Println(err)
	default:
		fmt.Println("exit code", res.ExitCode, "route", res.Route)
	}
}

// Follow the audit log with the cursor.
func ExampleClient_Audit() {
	c, err := apiclient.New(apiclient.Config{URL: "http://127.0.0.1:7080", Token: os.Getenv("VMPERSONA_TOKEN")})
	if err != nil {
		fmt.Println(err)
		return
	}
	q := apiclient.AuditQuery{Type: protocol.AuditDenial, Since: time.Now().Add(-time.Hour)}
	for range 3 {
		page, err := c.Audit(context.Background(), q)
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, ev := range page.Events {
			fmt.Println(ev.Time, ev.Instance, ev.Persona, ev.Command)
		}
		if page.Next != "" {
			q.After = page.Next
		}
		time.Sleep(time.Second)
	}
}
