// Package logging builds the host daemon's slog logger: structured fields to
// the systemd journal when running under systemd, text or JSON otherwise.
package logging

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
)

// New returns a logger for format "auto", "text" or "json" at the given level.
func New(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "auto":
		if ok, _ := journal.StderrIsJournalStream(); ok {
			return slog.New(&journalHandler{level: lv}), nil
		}
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want auto, text or json", format)
}

// journalHandler sends records to the journal with their attributes as
// fields (upper-cased, as journald wants them).
type journalHandler struct {
	level slog.Level
	attrs []slog.Attr
	group string
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *journalHandler) Handle(_ context.Context, r slog.Record) error {
	vars := make(map[string]string, r.NumAttrs()+len(h.attrs))
	add := func(a slog.Attr) {
		key := strings.ToUpper(h.group + a.Key)
		key = strings.Map(func(r rune) rune {
			if r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' {
				return r
			}
			return '_'
		}, key)
		vars[strings.TrimLeft(key, "_")] = a.Value.String()
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	pri := journal.PriInfo
	switch {
	case r.Level >= slog.LevelError:
		pri = journal.PriErr
	case r.Level >= slog.LevelWarn:
		pri = journal.PriWarning
	case r.Level < slog.LevelInfo:
		pri = journal.PriDebug
	}
	return journal.Send(r.Message, pri, vars)
}

func (h *journalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &n
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.group = h.group + name + "_"
	return &n
}
