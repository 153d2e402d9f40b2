package server

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vmpersona/vmpersona/guestd/activation"
	"github.com/vmpersona/vmpersona/guestd/execute"
	"github.com/vmpersona/vmpersona/protocol"
)

// Bounds of an exec's audited argument preview.
const (
	previewArgs    = 8   // arguments shown
	previewArgLen  = 64  // bytes of each
	previewMaxSize = 512 // bytes of the whole preview
)

// auditsExec reports whether a command that runs as itself is audited: the
// active persona's audit_exec when set, else the host's wish in the request,
// else this daemon's --audit-exec.
func (s *Server) auditsExec(req protocol.Exec, view *activation.View) bool {
	if view.Active != nil && view.Active.Persona.AuditExec != nil {
		return *view.Active.Persona.AuditExec
	}
	if req.AuditExec != nil {
		return *req.AuditExec
	}
	return s.cfg.AuditExec
}

// execOutcome is the audit event's result ("exit 0", "signal SIGKILL",
// "timed out") and detail: the argument count, a bounded preview with
// secrets masked, and the duration.
func execOutcome(args []string, res execute.Result, secrets []string) (result, detail string) {
	switch {
	case res.TimedOut:
		result = "timed out"
	case res.Signal != "":
		result = "signal " + res.Signal
	default:
		result = "exit " + strconv.Itoa(res.ExitCode)
	}
	detail = fmt.Sprintf("%d args: %s; %.1f ms", len(args), argPreview(args, secrets...), float64(res.Duration.Microseconds())/1000)
	return result, detail
}

// argPreview shows the first arguments, each cut to a bound, quoted, with
// the values of secret-looking options and assignments masked, and every
// occurrence of one of secrets (the values of the persona's
// secret_variables).
func argPreview(args []string, secrets ...string) string {
	var b strings.Builder
	maskNext := false
	for i, a := range args {
		if i == previewArgs {
			fmt.Fprintf(&b, " …(+%d)", len(args)-i)
			break
		}
		shown := a
		switch {
		case maskNext:
			shown = "***"
		case secretAssignment(a):
			k, _, _ := strings.Cut(a, "=")
			shown = k + "=***"
		default:
			for _, v := range secrets {
				if v != "" {
					shown = strings.ReplaceAll(shown, v, "***")
				}
			}
		}
		maskNext = secretOption(a)
		if len(shown) > previewArgLen {
			shown = cutUTF8(shown, previewArgLen) + "…"
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.QuoteToGraphic(shown))
		if b.Len() > previewMaxSize {
			return cutUTF8(b.String(), previewMaxSize) + fmt.Sprintf("…(+%d)", len(args)-i-1)
		}
	}
	return b.String()
}

var secretWords = []string{"PASSWORD", "PASSWD", "PASS", "TOKEN", "SECRET", "KEY", "CREDENTIAL", "AUTH"}

func secretName(name string) bool {
	up := strings.ToUpper(strings.TrimLeft(name, "-"))
	for _, w := range secretWords {
		if strings.Contains(up, w) {
			return true
		}
	}
	return false
}

// secretAssignment: NAME=value or --name=value with a secret-looking name.
func secretAssignment(a string) bool {
	k, _, ok := strings.Cut(a, "=")
	return ok && secretName(k)
}

// secretOption: an option whose value follows it (-p, --password, --token).
func secretOption(a string) bool {
	if a == "-p" {
		return true
	}
	return strings.HasPrefix(a, "-") && !strings.Contains(a, "=") && secretName(a)
}

func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// secretValues are the values of the active persona's secret_variables.
func secretValues(view *activation.View) []string {
	if view.Active == nil {
		return nil
	}
	p := &view.Active.Persona
	out := make([]string, 0, len(p.SecretVariables))
	for _, k := range p.SecretVariables {
		out = append(out, p.EnvironmentVariables[k])
	}
	return out
}
