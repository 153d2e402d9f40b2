// Command vmpersonactl is the command-line client of vmpersona-hostd: it
// manages personas, activates them on instances, runs commands in guests
// and reads the audit log, over the daemon's REST API (unix socket or
// HTTP(S) with a bearer token). Run "vmpersonactl --help" for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr, getenv: os.Getenv})
	stop()
	os.Exit(code)
}
