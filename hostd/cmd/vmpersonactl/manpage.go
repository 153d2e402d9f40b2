package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
)

// manCommand writes vmpersonactl(1) from the command definitions: every
// command with its arguments, description, flags and examples, so the
// manual cannot miss a command or a flag (a test compares them).
func manCommand() *command {
	return &command{
		name: "__man", summary: "write the vmpersonactl(1) man page (roff) from the command definitions", hidden: true,
		args: "[DATE]",
		setup: func(fs *flag.FlagSet) runner {
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 0, 1, "[DATE]"); err != nil {
					return err
				}
				date := ""
				if len(args) == 1 {
					date = args[0]
				}
				return writeManPage(a.io.out, rootCommand(), date)
			}
		},
	}
}

// roff escapes text for a man page line: backslashes, hyphens, and a dot
// or quote at the start of a line.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	var b strings.Builder
	for i, l := range strings.Split(s, "\n") {
		if i > 0 {
			b.WriteByte('\n')
		}
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			b.WriteString(`\&`)
		}
		b.WriteString(l)
	}
	return b.String()
}

func writeManPage(w io.Writer, root *command, date string) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p(".TH VMPERSONACTL 1 \"%s\" \"vmpersona\" \"vmpersona\"\n", date)
	p(".SH NAME\nvmpersonactl \\- %s\n", roff(root.summary))
	p(".SH SYNOPSIS\n.B vmpersonactl\n[\\fIGLOBAL FLAGS\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR] [\\fIFLAGS\\fR]\n.br\n.B vmpersonactl \\-\\-version\n")
	p(".SH DESCRIPTION\n%s\n", roff(strings.TrimSpace(root.long)))
	p(".SH COMMANDS\n")
	for _, c := range manLeaves(root) {
		line := roff(strings.TrimPrefix(c.path(), progName+" "))
		if c.args != "" {
			line += ` \fI` + roff(c.args) + `\fR`
		}
		p(".SS \"%s\"\n", line)
		p("%s.\n", roff(upperFirst(c.summary)))
		if c.long != "" {
			p(".PP\n%s\n", roff(strings.TrimSpace(c.long)))
		}
		fs := newFlagSet(c)
		c.setup(fs)
		if lines := flagLines(fs); len(lines) > 0 {
			p(".PP\nFlags:\n")
			manFlags(&b, lines)
		}
		if c.example != "" {
			p(".PP\nExample:\n.PP\n.RS\n.nf\n")
			for _, l := range strings.Split(strings.TrimSpace(c.example), "\n") {
				p("%s\n", roff(strings.TrimSpace(l)))
			}
			p(".fi\n.RE\n")
		}
	}
	p(".SH GLOBAL FLAGS\nAccepted before or after any command.\n")
	gfs := newFlagSet(root)
	defaultGlobals(func(string) string { return "" }).register(gfs, true)
	manFlags(&b, flagLines(gfs))
	p(".SH ENVIRONMENT\n.TP\n.B VMPERSONA_URL, VMPERSONA_SOCKET, VMPERSONA_TOKEN, VMPERSONA_TOKEN_FILE, VMPERSONA_CACERT\nDefaults of \\-\\-url, \\-\\-socket, \\-\\-token, \\-\\-token\\-file and \\-\\-cacert.\n.TP\n.B VMPERSONA_CONTEXT\nDefault of \\-\\-context.\n.TP\n.B VMPERSONA_CONFIG\nThe configuration file to read instead of the one below.\n")
	p(".SH FILES\n.TP\n.I ~/.config/vmpersona/config.yaml\n(or $XDG_CONFIG_HOME/vmpersona/config.yaml) names daemons as contexts: current\\-context, and under contexts each name with url or socket, token or token\\-file, and cacert. A flag wins over its environment variable, which wins over the context.\n")
	p(".SH EXIT STATUS\n.TP\n0\nsuccess\n.TP\n1\nother failure\n.TP\n2\nwrong usage\n.TP\n3\nnot found\n.TP\n4\nconflict or stale revision\n.TP\n5\nunauthorized or forbidden\n.TP\n6\nagent unavailable or timed out\n.PP\n.B exec\nexits with the remote command's code: 128+N for signal N, 124 when it timed out, 126 when the persona denies it or it is not executable, 127 when it does not exist in the guest.\n")
	p(".SH SEE ALSO\n.BR vmpersona\\-hostd (8)\nand /usr/share/doc/vmpersona\\-hostd/ on the host.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// manFlags writes flag lines ("  -o, --output FORMAT   usage") as tagged
// paragraphs.
func manFlags(b *strings.Builder, lines []string) {
	for _, l := range lines {
		l = strings.TrimSpace(l)
		names, usage := l, ""
		if i := strings.Index(l, "  "); i > 0 {
			names, usage = l[:i], strings.TrimSpace(l[i:])
		}
		fmt.Fprintf(b, ".TP\n.B %s\n%s\n", roff(names), roff(usage))
	}
}

// manLeaves lists the commands a user runs (leaves, not hidden), in the
// order of the help.
func manLeaves(c *command) []*command {
	if c.hidden {
		return nil
	}
	if c.subs == nil {
		return []*command{c}
	}
	var out []*command
	for _, s := range c.subs {
		out = append(out, manLeaves(s)...)
	}
	return out
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
