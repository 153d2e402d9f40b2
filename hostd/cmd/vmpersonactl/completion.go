package main

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// argKind names what a positional argument is, for completion.
type argKind int

const (
	argNone argKind = iota
	argPersona
	argInstance
	argShell
)

// flagValues completes the values of some flags.
var flagValues = map[string]argKind{
	"persona":  argPersona,
	"instance": argInstance,
}

var staticFlagValues = map[string][]string{
	"output": {"table", "json", "yaml"},
	"o":      {"table", "json", "yaml"},
	"type":   protocol.AuditTypes,
}

func rootCommand() *command {
	return link(&command{
		name:    progName,
		summary: "manage vmpersona personas, instances and commands",
		long: `vmpersonactl talks to vmpersona-hostd's REST API. By default it uses the
daemon's unix socket (` + "/run/vmpersona/hostd.sock" + `), where root and members
of group vmpersona are admin; --url reaches the daemon over HTTP(S), with
a bearer token (--token-file, --token or VMPERSONA_TOKEN).`,
		example: `vmpersonactl persona create -f hardened.json
vmpersonactl activate vm1 hardened
vmpersonactl exec vm1 -- ls -l /
vmpersonactl --url https://host:7443 --token-file ~/.vmpersona-token instances`,
		subs: []*command{
			personaCommand(),
			applyCommand(),
			instancesCommand(),
			instanceCommand(),
			activateCommand(),
			diffCommand(),
			rolloutCommand(),
			activeCommand(),
			deactivateCommand(),
			execCommand(),
			fileCommand(),
			auditCommand(),
			fleetCommand(),
			assignmentCommand(),
			completionCommand(),
			versionCommand(),
			manCommand(),
			completeCommand(),
		},
	})
}

func completionCommand() *command {
	return &command{
		name: "completion", summary: "print a shell completion script", args: "bash|zsh|fish",
		complete: []argKind{argShell},
		long: `Prints a completion script for bash, zsh or fish. It completes commands,
flags, and persona and instance names (asking the daemon).`,
		example: `source <(vmpersonactl completion bash)
vmpersonactl completion zsh > "${fpath[1]}/_vmpersonactl"
vmpersonactl completion fish > ~/.config/fish/completions/vmpersonactl.fish`,
		setup: func(fs *flag.FlagSet) runner {
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 1, 1, "bash, zsh or fish"); err != nil {
					return err
				}
				script, ok := completionScripts[args[0]]
				if !ok {
					return usageErrorf("no completion for shell %q: want bash, zsh or fish", args[0])
				}
				_, err := fmt.Fprint(a.io.out, script)
				return err
			}
		},
	}
}

// The scripts ask "vmpersonactl __complete WORD…" (the words so far, the
// last one being completed) for candidates, one per line.
var completionScripts = map[string]string{
	"bash": `# bash completion for vmpersonactl
_vmpersonactl() {
    local IFS=$'\n'
    COMPREPLY=($("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _vmpersonactl vmpersonactl
`,
	"zsh": `#compdef vmpersonactl
# zsh completion for vmpersonactl
_vmpersonactl() {
    local -a cands
    cands=("${(@f)$(${words[1]} __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    (( ${#cands} )) && compadd -a cands
}
if [ "$funcstack[1]" = "_vmpersonactl" ]; then
    _vmpersonactl "$@"
else
    compdef _vmpersonactl vmpersonactl
fi
`,
	"fish": `# fish completion for vmpersonactl
function __vmpersonactl_complete
    set -l words (commandline -opc)
    set -l cur (commandline -ct)
    $words[1] __complete $words[2..-1] "$cur" 2>/dev/null
end
complete -c vmpersonactl -f -a '(__vmpersonactl_complete)'
`,
}

func completeCommand() *command {
	return &command{
		name: "__complete", summary: "completion candidates (used by the completion scripts)", hidden: true,
		args: "WORD…", stopAfter: -1,
		setup: func(fs *flag.FlagSet) runner {
			return func(ctx context.Context, a *app, args []string) error {
				for _, c := range completeWords(ctx, a, args) {
					fmt.Fprintln(a.io.out, c)
				}
				return nil
			}
		},
	}
}

// completeWords returns the candidates for the last of words, given the
// ones before it.
func completeWords(ctx context.Context, a *app, words []string) []string {
	cur := ""
	if len(words) > 0 {
		cur, words = words[len(words)-1], words[:len(words)-1]
	}
	cmd := rootCommand()
	// Global flags among the words (--url, --socket, --token…) say where
	// to ask for names.
	gfs := newFlagSet(cmd)
	a.g.register(gfs, true)
	var pos []string
	afterDashes := false
	expectValue := ""
	for _, w := range words {
		switch {
		case expectValue != "":
			if gfs.Lookup(expectValue) != nil {
				_ = gfs.Set(expectValue, w)
			}
			expectValue = ""
		case afterDashes:
			pos = append(pos, w)
		case w == "--":
			afterDashes = true
		case strings.HasPrefix(w, "-") && len(w) > 1:
			name := strings.TrimLeft(w, "-")
			if k, v, ok := strings.Cut(name, "="); ok {
				if gfs.Lookup(k) != nil {
					_ = gfs.Set(k, v)
				}
				continue
			}
			if takesValue(cmd, name) {
				expectValue = name
			}
		default:
			if cmd.subs != nil && len(pos) == 0 {
				if next := cmd.find(w); next != nil {
					cmd = next
					continue
				}
			}
			pos = append(pos, w)
		}
	}
	var cands []string
	switch {
	case expectValue != "":
		cands = valueCandidates(ctx, a, expectValue)
	case strings.HasPrefix(cur, "-") && !afterDashes:
		cands = flagCandidates(cmd)
	case cmd.subs != nil && len(pos) == 0:
		for _, s := range cmd.subs {
			if !s.hidden {
				cands = append(cands, s.name)
			}
		}
	case cmd.setup != nil && len(pos) < len(cmd.complete):
		cands = kindCandidates(ctx, a, cmd.complete[len(pos)])
	}
	var out []string
	for _, c := range cands {
		if strings.HasPrefix(c, cur) {
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

// commandFlags is the flag set a command parses, for completion.
func commandFlags(cmd *command) *flag.FlagSet {
	fs := newFlagSet(cmd)
	defaultGlobals(func(string) string { return "" }).register(fs, !cmd.ownTimeout)
	if cmd.setup != nil {
		cmd.setup(fs)
	}
	return fs
}

func takesValue(cmd *command, name string) bool {
	f := commandFlags(cmd).Lookup(name)
	if f == nil {
		return false
	}
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return false
	}
	return true
}

func flagCandidates(cmd *command) []string {
	var out []string
	commandFlags(cmd).VisitAll(func(f *flag.Flag) {
		if len(f.Name) > 1 {
			out = append(out, "--"+f.Name)
		}
	})
	return out
}

func valueCandidates(ctx context.Context, a *app, name string) []string {
	if v, ok := staticFlagValues[name]; ok {
		return v
	}
	if k, ok := flagValues[name]; ok {
		return kindCandidates(ctx, a, k)
	}
	return nil
}

// kindCandidates asks the daemon for names, briefly; errors give nothing.
func kindCandidates(ctx context.Context, a *app, k argKind) []string {
	if k == argShell {
		return []string{"bash", "fish", "zsh"}
	}
	a.g.timeout = 2 * time.Second
	c, err := a.api()
	if err != nil {
		return nil
	}
	switch k {
	case argPersona:
		return names(ctx, c.ListPersonas, func(p protocol.Persona) string { return p.Name })
	case argInstance:
		return names(ctx, c.ListInstances, func(in apitypes.Instance) string { return in.ID })
	}
	return nil
}

// names lists the names of what list answers; an error gives none.
func names[T any](ctx context.Context, list func(context.Context) ([]T, error), name func(T) string) []string {
	all, err := list(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, v := range all {
		out = append(out, name(v))
	}
	return out
}
