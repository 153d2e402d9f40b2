package execute

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"
)

// Both ways of waiting (epoll through the runtime's poller, and poll(2)
// where no epoll instance can be made) feed stdin larger than a pipe holds,
// capture both streams, stop feeding a command that does not read, and kill
// at the timeout.
func TestWaitPaths(t *testing.T) {
	for _, poll := range []bool{false, true} {
		name := "epoll"
		if poll {
			name = "poll"
		}
		t.Run(name, func(t *testing.T) {
			forcePoll = poll
			t.Cleanup(func() { forcePoll = false })
			in := make([]byte, 1<<20+123)
			rand.Read(in)
			res, err := Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "cat; echo err >&2"}, Stdin: in, MaxOutput: 2 << 20})
			if err != nil || res.ExitCode != 0 || !bytes.Equal(res.Stdout, in) || string(res.Stderr) != "err\n" {
				t.Fatalf("cat of 1 MiB: err %v, exit %d, %d bytes out (equal %v), stderr %q", err, res.ExitCode, len(res.Stdout), bytes.Equal(res.Stdout, in), res.Stderr)
			}
			res, err = Run(context.Background(), Spec{Path: "/bin/true", Stdin: in, Timeout: 20 * time.Second})
			if err != nil || res.ExitCode != 0 || res.TimedOut {
				t.Fatalf("true with unread input: %v %+v", err, res)
			}
			res, err = Run(context.Background(), Spec{Path: "/bin/sh", Args: []string{"sh", "-c", "echo started; sleep 1000"}, Timeout: 200 * time.Millisecond})
			if err != nil || !res.TimedOut || res.Signal != "SIGKILL" || string(res.Stdout) != "started\n" {
				t.Fatalf("sleep with a timeout: %v %+v", err, res)
			}
		})
	}
}
