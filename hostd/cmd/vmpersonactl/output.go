package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v4"
)

// writeJSON prints v indented, for scripts; as YAML (the same members)
// when w is the YAML output of -o yaml.
func writeJSON(w io.Writer, v any) error {
	if y, ok := w.(yamlOut); ok {
		return writeYAML(y.Writer, v)
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints rows aligned in columns.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = cellText(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// cellText keeps a cell on one line and out of the column separators.
func cellText(s string) string {
	if s == "" {
		return "-"
	}
	s = strings.NewReplacer("\t", " ", "\n", "⏎", "\r", "").Replace(s)
	return s
}

// keyValues prints "Key:  value" lines; a multi-line value is indented
// under its key.
type keyValues struct {
	w     io.Writer
	pairs [][2]string
}

func (kv *keyValues) add(k, v string) { kv.pairs = append(kv.pairs, [2]string{k, v}) }

func (kv *keyValues) flush() error {
	width := 0
	for _, p := range kv.pairs {
		if !strings.Contains(p[1], "\n") {
			width = max(width, len(p[0])+1)
		}
	}
	var b strings.Builder
	for _, p := range kv.pairs {
		if strings.Contains(p[1], "\n") {
			fmt.Fprintf(&b, "%s:\n", p[0])
			for _, l := range strings.Split(strings.TrimRight(p[1], "\n"), "\n") {
				fmt.Fprintf(&b, "  %s\n", l)
			}
			continue
		}
		v := p[1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(&b, "%-*s %s\n", width, p[0]+":", v)
	}
	_, err := io.WriteString(kv.w, b.String())
	return err
}

func timeText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func truncate(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func millis(ms float64) string {
	d := time.Duration(ms * float64(time.Millisecond))
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.2fms", ms)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", ms)
	}
	return d.Round(time.Millisecond).String()
}

// yamlOut is standard output under -o yaml: documents written with
// writeJSON come out as YAML; other writes pass through.
type yamlOut struct{ io.Writer }

// writeYAML prints v as one YAML document with the JSON member names.
func writeYAML(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		return err
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	_, err = w.Write(append([]byte("---\n"), out...))
	return err
}
