package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// auditPage is how many events one request asks for.
const auditPage = 1000

func auditCommand() *command {
	return &command{
		name: "audit", summary: "read and follow the audit log",
		long: `Prints audit events, oldest first: persona changes, activations,
commands run, overridden and denied, refused requests. Filters combine.
--since and --until take a time (RFC 3339, or a date) or a duration back
from now (15m, 24h). Without --limit every matching event is printed.

--follow keeps polling (every --interval) for new events until interrupted,
and rides out a daemon restart (it says so on standard error).
With --output json the events are printed as one document, or with
--follow as one JSON object per line (NDJSON).`,
		example: `vmpersonactl audit --instance vm1 --since 1h
vmpersonactl audit --type denial --persona hardened --limit 20
vmpersonactl audit --follow -o json | jq -c 'select(.type=="denial")'`,
		setup: func(fs *flag.FlagSet) runner {
			var q apiclient.AuditQuery
			var since, until string
			fs.StringVar(&q.Instance, "instance", "", "only events of this `INSTANCE`")
			fs.StringVar(&q.Persona, "persona", "", "only events about this `PERSONA`")
			fs.StringVar(&q.Type, "type", "", "only events of this `TYPE` (exec, override, denial, activation, deactivation, persona_created, auth_failure, …)")
			fs.StringVar(&since, "since", "", "only events at or after `WHEN`: a duration back from now (1h) or a time")
			fs.StringVar(&until, "until", "", "only events before `WHEN`")
			limit := fs.Int("limit", 0, "print at most `N` events (0: all)")
			follow := fs.Bool("follow", false, "keep printing new events until interrupted")
			fs.BoolVar(follow, "f", false, "short for --follow")
			interval := fs.Duration("interval", time.Second, "how often --follow polls")
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
					return err
				}
				now := time.Now()
				var err error
				if since != "" {
					if q.Since, err = parseWhen(since, now); err != nil {
						return usageErrorf("--since: %v", err)
					}
				}
				if until != "" {
					if q.Until, err = parseWhen(until, now); err != nil {
						return usageErrorf("--until: %v", err)
					}
				}
				if *limit < 0 {
					return usageErrorf("--limit must not be negative")
				}
				if *interval <= 0 {
					return usageErrorf("--interval must be positive")
				}
				c, err := a.api()
				if err != nil {
					return err
				}
				p := newAuditPrinter(a, *follow)
				cursor, err := auditBacklog(ctx, c, q, *limit, p)
				if err != nil {
					return err
				}
				if err := p.finish(cursor); err != nil || !*follow {
					return err
				}
				q.After = cursor
				waiting := false
				tick := time.NewTicker(*interval)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return nil // interrupted: following ends normally
					case <-tick.C:
					}
					q.Limit = auditPage
					page, err := c.Audit(ctx, q)
					if err != nil {
						if ctx.Err() != nil {
							return nil
						}
						if !transient(err) {
							return err
						}
						// The daemon restarts or is busy: say so once and
						// keep following from the same cursor.
						if !waiting {
							fmt.Fprintf(a.io.err, "%s: %s; still following\n", progName, describe(err))
							waiting = true
						}
						continue
					}
					if waiting {
						fmt.Fprintf(a.io.err, "%s: the daemon answers again\n", progName)
						waiting = false
					}
					if err := p.print(page.Events); err != nil {
						return err
					}
					if n := len(page.Events); n > 0 {
						q.After = page.Events[n-1].ID
					}
				}
			}
		},
	}
}

// transient reports whether following should outlast err: the daemon is
// unreachable, restarting or failing for now, rather than refusing us.
func transient(err error) bool {
	var te *apiclient.TransportError
	var p *apitypes.Problem
	switch {
	case errors.As(err, &te):
		return true
	case errors.As(err, &p):
		return p.Status >= 500 || p.Status == http.StatusTooManyRequests
	}
	return false
}

// auditBacklog prints the events that match now, page by page, and returns
// the cursor after the last one.
func auditBacklog(ctx context.Context, c *apiclient.Client, q apiclient.AuditQuery, limit int, p *auditPrinter) (string, error) {
	left := limit
	for {
		q.Limit = auditPage
		if limit > 0 {
			q.Limit = min(left, auditPage)
		}
		page, err := c.Audit(ctx, q)
		if err != nil {
			return "", err
		}
		if err := p.print(page.Events); err != nil {
			return "", err
		}
		if n := len(page.Events); n > 0 {
			q.After = page.Events[n-1].ID
		}
		left -= len(page.Events)
		if page.Next == "" || (limit > 0 && left <= 0) {
			return q.After, nil
		}
	}
}

// auditPrinter gathers the backlog and prints it at once (one aligned
// table, or one JSON document); when following, it then prints each new
// batch as it comes (a table without header, or NDJSON).
type auditPrinter struct {
	a         *app
	follow    bool
	streaming bool
	backlog   []apitypes.AuditEvent
}

func newAuditPrinter(a *app, follow bool) *auditPrinter {
	return &auditPrinter{a: a, follow: follow, backlog: []apitypes.AuditEvent{}}
}

func (p *auditPrinter) print(evs []apitypes.AuditEvent) error {
	if !p.streaming {
		p.backlog = append(p.backlog, evs...)
		return nil
	}
	return p.write(evs, false)
}

func (p *auditPrinter) write(evs []apitypes.AuditEvent, header bool) error {
	if p.a.json() {
		enc := json.NewEncoder(p.a.io.out)
		enc.SetEscapeHTML(false)
		for _, ev := range evs {
			if err := enc.Encode(ev); err != nil {
				return err
			}
		}
		return nil
	}
	if len(evs) == 0 && !header {
		return nil
	}
	t := newTable(p.a.io.out)
	if header && !p.a.g.noHeaders {
		t.row("TIME", "INSTANCE", "TYPE", "PERSONA", "ACTOR", "COMMAND", "ROUTE", "RESULT", "SOURCE", "DETAIL")
	}
	for _, ev := range evs {
		t.row(timeText(ev.Time), ev.Instance, ev.Type, ev.Persona, ev.Actor, truncate(ev.Command, 32),
			ev.Route, truncate(ev.Result, 24), ev.Source, truncate(ev.Detail, 60))
	}
	return t.flush()
}

// finish prints the backlog; next is the cursor after it.
func (p *auditPrinter) finish(next string) error {
	p.streaming = true
	if p.a.json() && !p.follow {
		return writeJSON(p.a.io.out, apitypes.AuditPage{Events: p.backlog, Next: next})
	}
	return p.write(p.backlog, true)
}
