package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/protocol"
)

// maxInput bounds a persona file or exec stdin read into memory (the
// daemon refuses bodies over 8 MiB).
const maxInput = 8 << 20

func personaCommand() *command {
	return &command{
		name:    "persona",
		summary: "create, show, change and delete personas",
		long: `A persona is a named set of environment variables, activation scripts,
command overrides and restrictions that can be activated on an instance.
Persona files are JSON or YAML, with the fields of the product's persona format:
name, environment_variables, pre_activation_script, post_activation_script,
command_overrides, restricted_commands, allowed_commands, default_persona.`,
		example: `vmpersonactl persona list
vmpersonactl persona create -f hardened.json`,
		subs: []*command{
			personaCreateCommand(), personaGetCommand(), personaListCommand(),
			personaEditCommand(), personaDeleteCommand(), personaValidateCommand(),
		},
	}
}

func personaCreateCommand() *command {
	return &command{
		name: "create", summary: "create a persona from a JSON file",
		long: `Reads one persona (JSON) from FILE, or from standard input with "-f -",
and creates it. The daemon refuses a name that exists (exit 4) and a second
default persona (exit 4, naming the current default).`,
		example: `vmpersonactl persona create -f hardened.json
echo '{"name":"minimal","restricted_commands":["rm"]}' | vmpersonactl persona create -f -`,
		setup: func(fs *flag.FlagSet) runner {
			file := fs.String("file", "", "persona JSON `FILE` (\"-\" for standard input)")
			fs.StringVar(file, "f", "", "short for --file")
			var p protocol.Persona
			return query[protocol.Persona]{args: "no arguments (the persona comes from -f FILE)",
				check: func(a *app) (err error) {
					if *file == "" {
						return usageErrorf("-f FILE is required")
					}
					p, err = readPersonaFile(a, *file)
					return err
				},
				ask: func(ctx context.Context, c *apiclient.Client, _ []string) (protocol.Persona, error) {
					return c.CreatePersona(ctx, p)
				},
				text: func(a *app, created protocol.Persona) error {
					return a.printf("Persona %s created (revision %d).\n", created.Name, created.Revision)
				}}.run
		},
	}
}

func personaGetCommand() *command {
	return &command{
		name: "get", summary: "show one persona", args: "NAME",
		long: `Shows a persona: its fields, revision and times. With --output json it
prints the persona document, which "persona create -f" and "persona edit -f"
accept back.`,
		example: `vmpersonactl persona get hardened
vmpersonactl persona get hardened -o json > hardened.json`,
		complete: []argKind{argPersona},
		setup: query[protocol.Persona]{args: "NAME", min: 1, max: 1,
			ask:  oneArg((*apiclient.Client).GetPersona),
			text: func(a *app, p protocol.Persona) error { return printPersona(a.io.out, p) }}.setup,
	}
}

func printPersona(w io.Writer, p protocol.Persona) error {
	kv := &keyValues{w: w}
	kv.add("Name", p.Name)
	kv.add("Default", yesNo(p.DefaultPersona))
	kv.add("Revision", fmt.Sprint(p.Revision))
	kv.add("Created", timeText(p.CreatedAt))
	kv.add("Updated", timeText(p.UpdatedAt))
	kv.add("Environment", multiline(sortedPairs(p.EnvironmentVariables, "=")))
	kv.add("Restricted", strings.Join(p.RestrictedCommands, ", "))
	if len(p.AllowedCommands) > 0 {
		kv.add("Allowed", strings.Join(p.AllowedCommands, ", ")+" (and the overridden commands)")
	} else {
		kv.add("Allowed", "any command not restricted")
	}
	var ov []string
	for _, name := range slices.Sorted(maps.Keys(p.CommandOverrides)) {
		target := p.CommandOverrides[name]
		if strings.HasPrefix(target, "#!") {
			n := strings.Count(strings.TrimRight(target, "\n"), "\n") + 1
			target = fmt.Sprintf("inline script, %d line%s", n, plural(n))
		}
		ov = append(ov, name+" → "+target)
	}
	kv.add("Overrides", multiline(ov))
	kv.add("Pre-activation script", scriptText(p.PreActivationScript))
	kv.add("Post-activation script", scriptText(p.PostActivationScript))
	return kv.flush()
}

// multiline makes a list a multi-line value (indented under its key), or
// a single line when it has one entry.
func multiline(lines []string) string {
	switch len(lines) {
	case 0:
		return ""
	case 1:
		return lines[0]
	}
	return strings.Join(lines, "\n")
}

func scriptText(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(none)\n" // on its own line, like a script
	}
	if !strings.Contains(strings.TrimRight(s, "\n"), "\n") {
		return s + "\n" // shown indented on its own line all the same
	}
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func sortedPairs(m map[string]string, sep string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+sep+m[k])
	}
	return out
}

func personaListCommand() *command {
	return &command{
		name: "list", summary: "list personas",
		long: `Lists every persona with its revision and how much it changes.`,
		example: `vmpersonactl persona list
vmpersonactl persona list -o json | jq -r '.personas[].name'`,
		setup: query[[]protocol.Persona]{args: "no arguments", ask: noArg((*apiclient.Client).ListPersonas),
			doc: func(l []protocol.Persona) any { return map[string]any{"personas": l} }, text: printPersonas}.setup,
	}
}

func printPersonas(a *app, list []protocol.Persona) error {
	t := newTable(a.io.out, a.header("NAME", "DEFAULT", "REVISION", "ENV", "OVERRIDES", "RESTRICTED", "ALLOWED", "UPDATED")...)
	for _, p := range list {
		allowed := "any"
		if len(p.AllowedCommands) > 0 {
			allowed = fmt.Sprint(len(p.AllowedCommands))
		}
		t.row(p.Name, yesNo(p.DefaultPersona), fmt.Sprint(p.Revision), fmt.Sprint(len(p.EnvironmentVariables)),
			fmt.Sprint(len(p.CommandOverrides)), truncate(strings.Join(p.RestrictedCommands, ","), 40), allowed, timeText(p.UpdatedAt))
	}
	return t.flush()
}

func personaEditCommand() *command {
	return &command{
		name: "edit", summary: "change a persona in $EDITOR or from a file", args: "NAME",
		complete: []argKind{argPersona},
		long: `Opens the persona's JSON in $VISUAL or $EDITOR (default vi) and saves it
when the editor exits, unless nothing changed. The update carries the
revision that was read (If-Match), so a concurrent change is refused
(exit 4) instead of being overwritten. If the daemon refuses the edited
persona, the edited text is kept in a file named in the message.

With -f FILE the persona is read from FILE instead ("-" for standard input).
If FILE has a "revision" (as "persona get -o json" prints it), that revision
must still be current; without one, the current revision is used.`,
		example: `vmpersonactl persona edit hardened
EDITOR=nano vmpersonactl persona edit hardened
vmpersonactl persona edit hardened -f hardened.json`,
		setup: func(fs *flag.FlagSet) runner {
			file := fs.String("file", "", "read the new persona from `FILE` (\"-\" for standard input) instead of an editor")
			fs.StringVar(file, "f", "", "short for --file")
			return func(ctx context.Context, a *app, args []string) error {
				if err := wantArgs(args, 1, 1, "NAME"); err != nil {
					return err
				}
				name := args[0]
				c, err := a.api()
				if err != nil {
					return err
				}
				var updated protocol.Persona
				if *file != "" {
					updated, err = editFromFile(ctx, a, c, name, *file)
				} else {
					updated, err = editInEditor(ctx, a, c, name)
				}
				if err != nil || updated.Name == "" {
					return err
				}
				if a.json() {
					return writeJSON(a.io.out, updated)
				}
				_, err = fmt.Fprintf(a.io.out, "Persona %s updated (revision %d).\n", updated.Name, updated.Revision)
				return err
			}
		},
	}
}

func editFromFile(ctx context.Context, a *app, c *apiclient.Client, name, file string) (protocol.Persona, error) {
	p, err := readPersonaFile(a, file)
	if err != nil {
		return protocol.Persona{}, err
	}
	if p.Name == "" {
		p.Name = name
	}
	if p.Name != name {
		return protocol.Persona{}, fmt.Errorf("%s names persona %q, not %q (personas cannot be renamed)", file, p.Name, name)
	}
	rev := p.Revision
	if rev == 0 {
		cur, err := c.GetPersona(ctx, name)
		if err != nil {
			return protocol.Persona{}, err
		}
		rev = cur.Revision
	}
	return c.UpdatePersona(ctx, p, rev)
}

// editable is the persona as shown in the editor: without the server-kept
// fields, which the user cannot change.
func editable(p protocol.Persona) ([]byte, error) {
	p.Revision = 0
	var m map[string]any
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	delete(m, "revision")
	delete(m, "created_at")
	delete(m, "updated_at")
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func editInEditor(ctx context.Context, a *app, c *apiclient.Client, name string) (protocol.Persona, error) {
	cur, err := c.GetPersona(ctx, name)
	if err != nil {
		return protocol.Persona{}, err
	}
	before, err := editable(cur)
	if err != nil {
		return protocol.Persona{}, err
	}
	f, err := os.CreateTemp("", "vmpersonactl-"+name+"-*.json")
	if err != nil {
		return protocol.Persona{}, err
	}
	path := f.Name()
	keep := false
	defer func() {
		if !keep {
			os.Remove(path)
		}
	}()
	if _, err := f.Write(before); err != nil {
		f.Close()
		return protocol.Persona{}, err
	}
	if err := f.Close(); err != nil {
		return protocol.Persona{}, err
	}
	if err := runEditor(ctx, a, path); err != nil {
		return protocol.Persona{}, err
	}
	after, err := os.ReadFile(path)
	if err != nil {
		return protocol.Persona{}, err
	}
	if bytes.Equal(bytes.TrimSpace(after), bytes.TrimSpace(before)) {
		fmt.Fprintln(a.io.err, "Edit cancelled: no changes made.")
		return protocol.Persona{}, nil
	}
	p, err := decodePersona(after, path)
	if err == nil && p.Name == "" {
		p.Name = name
	}
	if err == nil && p.Name != name {
		err = fmt.Errorf("the edited persona is named %q, not %q (personas cannot be renamed)", p.Name, name)
	}
	if err == nil {
		var updated protocol.Persona
		updated, err = c.UpdatePersona(ctx, p, cur.Revision)
		if err == nil {
			return updated, nil
		}
	}
	keep = true
	return protocol.Persona{}, keptEditError{err: err, path: path, name: name}
}

// keptEditError is a failed edit whose text was kept for another try.
type keptEditError struct {
	err  error
	path string
	name string
}

func (e keptEditError) Error() string {
	return fmt.Sprintf("%s\nYour edit is saved in %s; fix it and run: %s persona edit %s -f %s",
		describe(e.err), e.path, progName, e.name, e.path)
}

func (e keptEditError) Unwrap() error       { return e.err }
func (e keptEditError) userMessage() string { return e.Error() }

// runEditor opens path in the user's editor. $VISUAL or $EDITOR may hold
// arguments ("code --wait"); they run through the shell, as git does.
func runEditor(ctx context.Context, a *app, path string) error {
	editor := a.io.getenv("VISUAL")
	if editor == "" {
		editor = a.io.getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", editor+` "$@"`, editor, path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.io.in, a.io.rawOut, a.io.rawErr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("editor %q failed: %w; nothing was changed", editor, err)
	}
	return nil
}

// readPersonaFile reads one persona from file ("-": standard input).
func readPersonaFile(a *app, file string) (protocol.Persona, error) {
	var r io.Reader
	src := file
	if file == "-" {
		r, src = a.io.in, "standard input"
	} else {
		f, err := os.Open(filepath.Clean(file))
		if err != nil {
			return protocol.Persona{}, err
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return protocol.Persona{}, fmt.Errorf("read %s: %w", src, err)
	}
	if len(b) > maxInput {
		return protocol.Persona{}, fmt.Errorf("%s is larger than %d bytes", src, maxInput)
	}
	return decodePersona(b, src)
}

// decodePersona decodes exactly one persona, refusing unknown fields (a
// misspelt field would otherwise be dropped without a word).
func decodePersona(b []byte, src string) (protocol.Persona, error) {
	var p protocol.Persona
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] != '{' && t[0] != '[' {
		// Not JSON: a YAML persona, with the same field names.
		j, err := yamlToJSON(b)
		if err != nil {
			return p, fmt.Errorf("%s: %v", src, err)
		}
		b = j
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := bytes.Count(b[:min(int(se.Offset), len(b))], []byte("\n")) + 1
			return p, fmt.Errorf("%s: line %d: %v", src, line, err)
		}
		if errors.Is(err, io.EOF) {
			return p, fmt.Errorf("%s: no persona (empty input)", src)
		}
		return p, fmt.Errorf("%s: %v", src, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return p, fmt.Errorf("%s: more than one JSON value; give one persona", src)
	}
	return p, nil
}

func personaDeleteCommand() *command {
	return &command{
		name: "delete", summary: "delete a persona", args: "NAME",
		complete: []argKind{argPersona},
		long: `Deletes a persona. The daemon refuses while the persona is active on an
instance (exit 4) unless --force is given; forcing leaves it active there
until deactivated.`,
		example: `vmpersonactl persona delete hardened
vmpersonactl persona delete hardened --force`,
		setup: func(fs *flag.FlagSet) runner {
			force := fs.Bool("force", false, "delete even while the persona is active on instances")
			return query[string]{args: "NAME", min: 1, max: 1,
				ask: func(ctx context.Context, c *apiclient.Client, args []string) (string, error) {
					return args[0], c.DeletePersona(ctx, args[0], apiclient.DeleteOptions{Force: *force})
				},
				doc:  func(name string) any { return map[string]any{"name": name, "deleted": true} },
				text: func(a *app, name string) error { return a.printf("Persona %s deleted.\n", name) }}.run
		},
	}
}
