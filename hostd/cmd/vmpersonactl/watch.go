package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
)

// watchFlags are --watch (-w) and --interval, of the commands that can keep
// showing what they show.
type watchFlags struct {
	on       *bool
	interval *time.Duration
}

// addWatchFlags registers the watch flags on fs; usage says what --watch does.
func addWatchFlags(fs *flag.FlagSet, usage string) watchFlags {
	w := watchFlags{on: fs.Bool("watch", false, usage)}
	fs.BoolVar(w.on, "w", false, "short for --watch")
	w.interval = fs.Duration("interval", 2*time.Second, "with --watch, how often to ask the daemon")
	return w
}

// runner checks the positional arguments and the interval, and shows what
// render writes: once on standard output or, with --watch, again every
// interval (see watchChanges).
func (wf watchFlags) runner(min, max int, names string,
	render func(ctx context.Context, a *app, c *apiclient.Client, args []string, w io.Writer, watching bool) error) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if err := wantArgs(args, min, max, names); err != nil {
			return err
		}
		if *wf.interval <= 0 {
			return usageErrorf("--interval must be positive")
		}
		c, err := a.api()
		if err != nil {
			return err
		}
		if !*wf.on {
			return render(ctx, a, c, args, a.io.out, false)
		}
		return watchChanges(ctx, a, *wf.interval, func(w io.Writer) error { return render(ctx, a, c, args, w, true) })
	}
}

// writeDoc prints a document for programs; while watching, JSON comes as
// one compact line a document.
func (a *app) writeDoc(w io.Writer, doc any, watching bool) error {
	switch {
	case a.g.output == "yaml":
		return writeYAML(w, doc)
	case watching:
		b, err := json.Marshal(doc)
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
	return writeJSON(w, doc)
}

// watchChanges runs render every interval and prints what it writes each
// time it differs from the last, until interrupted (exit 0). The daemon
// being away or busy is said once, and watching goes on.
func watchChanges(ctx context.Context, a *app, interval time.Duration, render func(w io.Writer) error) error {
	last, waiting := "", false
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		var b bytes.Buffer
		err := render(&b)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !transient(err):
			return err
		case err != nil:
			if !waiting {
				fmt.Fprintf(a.io.err, "%s: %s; still watching\n", progName, describe(err))
				waiting = true
			}
		default:
			waiting = false
			if b.String() != last {
				if last != "" && !a.json() {
					fmt.Fprintln(a.io.out)
				}
				if _, err := a.io.out.Write(b.Bytes()); err != nil {
					return err
				}
				last = b.String()
			}
		}
		select {
		case <-ctx.Done():
			return nil // interrupted: watching ends normally
		case <-tick.C:
		}
	}
}
