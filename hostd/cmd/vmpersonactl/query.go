package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
)

// query is a command that asks the daemon one thing and prints the answer:
// the answer itself (or doc of it) for programs (-o json|yaml), text for
// people. Most commands that read or change one resource are a query.
type query[T any] struct {
	args     string // the positional arguments, as usage errors name them
	min, max int    // how many positional arguments; max -1: no limit
	// check, when set, checks the command's own flags and input before
	// the daemon is contacted.
	check func(a *app) error
	ask   func(ctx context.Context, c *apiclient.Client, args []string) (T, error)
	// doc, when set, is the document printed for programs.
	doc  func(v T) any
	text func(a *app, v T) error
}

// setup is the query as the setup of a command without flags of its own.
func (q query[T]) setup(*flag.FlagSet) runner { return q.run }

func (q query[T]) run(ctx context.Context, a *app, args []string) error {
	if err := wantArgs(args, q.min, q.max, q.args); err != nil {
		return err
	}
	if q.check != nil {
		if err := q.check(a); err != nil {
			return err
		}
	}
	c, err := a.api()
	if err != nil {
		return err
	}
	v, err := q.ask(ctx, c, args)
	if err != nil {
		return err
	}
	if !a.json() {
		return q.text(a, v)
	}
	if q.doc != nil {
		return writeJSON(a.io.out, q.doc(v))
	}
	return writeJSON(a.io.out, v)
}

// Client methods as a query's ask, taking their names from the positional
// arguments in order.

func noArg[T any](m func(*apiclient.Client, context.Context) (T, error)) func(context.Context, *apiclient.Client, []string) (T, error) {
	return func(ctx context.Context, c *apiclient.Client, _ []string) (T, error) { return m(c, ctx) }
}

func oneArg[T any](m func(*apiclient.Client, context.Context, string) (T, error)) func(context.Context, *apiclient.Client, []string) (T, error) {
	return func(ctx context.Context, c *apiclient.Client, args []string) (T, error) { return m(c, ctx, args[0]) }
}

func twoArgs[T any](m func(*apiclient.Client, context.Context, string, string) (T, error)) func(context.Context, *apiclient.Client, []string) (T, error) {
	return func(ctx context.Context, c *apiclient.Client, args []string) (T, error) {
		return m(c, ctx, args[0], args[1])
	}
}

// connect checks the positional arguments and returns the client, for
// commands that are more than one query.
func (a *app) connect(args []string, min, max int, names string) (*apiclient.Client, error) {
	if err := wantArgs(args, min, max, names); err != nil {
		return nil, err
	}
	return a.api()
}

// printf prints text for people on standard output.
func (a *app) printf(format string, v ...any) error {
	_, err := fmt.Fprintf(a.io.out, format, v...)
	return err
}
