package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v4"

	"github.com/vmpersona/vmpersona/hostd/apiclient"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// yamlToJSON turns one YAML document into JSON (YAML persona files).
func yamlToJSON(b []byte) ([]byte, error) {
	var doc any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("not JSON, and not YAML either: %v", err)
	}
	var more any
	if err := dec.Decode(&more); err == nil {
		return nil, errors.New("more than one YAML document; give one persona")
	}
	if _, ok := doc.(map[string]any); !ok {
		return nil, errors.New("a persona is a mapping of its fields (name, environment_variables, …)")
	}
	return json.Marshal(doc)
}

// personaFiles lists the persona files FILE or DIR names: a directory's
// *.json, *.yaml and *.yml files, by name.
func personaFiles(path string) ([]string, error) {
	if path == "-" {
		return []string{"-"}, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".json", ".yaml", ".yml":
			if !e.IsDir() {
				out = append(out, filepath.Join(path, e.Name()))
			}
		}
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no .json, .yaml or .yml file", path)
	}
	return out, nil
}

// personaFilesFlag registers -f FILE|DIR on fs and returns the reader of
// the personas it names, for commands that take no other argument.
func personaFilesFlag(fs *flag.FlagSet) func(a *app, args []string) ([]protocol.Persona, []string, error) {
	file := fs.String("file", "", "persona `FILE` or DIR (\"-\" for standard input)")
	fs.StringVar(file, "f", "", "short for --file")
	return func(a *app, args []string) ([]protocol.Persona, []string, error) {
		if err := wantArgs(args, 0, 0, "no arguments (the personas come from -f FILE|DIR)"); err != nil {
			return nil, nil, err
		}
		if *file == "" {
			return nil, nil, usageErrorf("-f FILE|DIR is required")
		}
		return readPersonas(a, *file)
	}
}

// readPersonas reads and checks (offline, with the daemon's own rules)
// every persona the path names; a name given twice is refused.
func readPersonas(a *app, path string) ([]protocol.Persona, []string, error) {
	files, err := personaFiles(path)
	if err != nil {
		return nil, nil, err
	}
	var ps []protocol.Persona
	seen := map[string]string{}
	for _, f := range files {
		p, err := readPersonaFile(a, f)
		if err != nil {
			return nil, nil, err
		}
		if err := validate.Persona(&p); err != nil {
			return nil, nil, fmt.Errorf("%s: %s", f, describe(err))
		}
		if prev, dup := seen[p.Name]; dup {
			return nil, nil, fmt.Errorf("%s: persona %q is also in %s", f, p.Name, prev)
		}
		seen[p.Name] = f
		ps = append(ps, p)
	}
	return ps, files, nil
}

func personaValidateCommand() *command {
	return &command{
		name: "validate", summary: "check persona files without the daemon",
		long: `Reads each persona (JSON or YAML) from FILE, from every .json, .yaml and
.yml file of DIR, or from standard input with "-f -", and checks it with the
rules the daemon applies. Needs no daemon; exit 1 names the file and field at
fault.`,
		example: `vmpersonactl persona validate -f hardened.yaml
vmpersonactl persona validate -f personas/`,
		setup: func(fs *flag.FlagSet) runner {
			read := personaFilesFlag(fs)
			return func(ctx context.Context, a *app, args []string) error {
				ps, files, err := read(a, args)
				if err != nil {
					return err
				}
				if a.json() {
					names := make([]string, len(ps))
					for i, p := range ps {
						names[i] = p.Name
					}
					return writeJSON(a.io.out, map[string]any{"valid": names})
				}
				for i, p := range ps {
					if _, err := fmt.Fprintf(a.io.out, "%s: persona %s is valid\n", files[i], p.Name); err != nil {
						return err
					}
				}
				return nil
			}
		},
	}
}

// applyResult is what apply did to one persona.
type applyResult struct {
	Persona  string `json:"persona"`
	Result   string `json:"result"` // created, updated, unchanged
	Revision uint64 `json:"revision"`
}

func applyCommand() *command {
	return &command{
		name: "apply", summary: "create or update personas from files, idempotently",
		long: `Makes the daemon's personas match the files: each persona (JSON or YAML) of
FILE, of every .json, .yaml and .yml file of DIR, or of standard input with
"-f -" is created when missing, updated when it differs (with If-Match on the
revision read, so a change made meanwhile is not overwritten: exit 4), and
left alone when it is the same. Prints created, updated or unchanged for
each. All files are checked before anything is sent.`,
		example: `vmpersonactl apply -f personas/
vmpersonactl apply -f hardened.yaml`,
		setup: func(fs *flag.FlagSet) runner {
			read := personaFilesFlag(fs)
			return func(ctx context.Context, a *app, args []string) error {
				ps, _, err := read(a, args)
				if err != nil {
					return err
				}
				c, err := a.api()
				if err != nil {
					return err
				}
				var results []applyResult
				for _, p := range ps {
					r, err := applyOne(ctx, c, p)
					if err != nil {
						return fmt.Errorf("persona %s: %w", p.Name, err)
					}
					results = append(results, r)
					if !a.json() {
						if _, err := fmt.Fprintf(a.io.out, "persona/%s %s (revision %d)\n", r.Persona, r.Result, r.Revision); err != nil {
							return err
						}
					}
				}
				if a.json() {
					return writeJSON(a.io.out, map[string]any{"results": results})
				}
				return nil
			}
		},
	}
}

// applyOne creates, updates or leaves one persona.
func applyOne(ctx context.Context, c *apiclient.Client, p protocol.Persona) (applyResult, error) {
	cur, err := c.GetPersona(ctx, p.Name)
	if errors.Is(err, apiclient.ErrNotFound) {
		created, err := c.CreatePersona(ctx, p)
		if err != nil {
			return applyResult{}, err
		}
		return applyResult{p.Name, "created", created.Revision}, nil
	}
	if err != nil {
		return applyResult{}, err
	}
	if samePersona(cur, p) {
		return applyResult{p.Name, "unchanged", cur.Revision}, nil
	}
	updated, err := c.UpdatePersona(ctx, p, cur.Revision)
	if err != nil {
		return applyResult{}, err
	}
	return applyResult{p.Name, "updated", updated.Revision}, nil
}

// samePersona compares what a user writes, not what the server keeps
// (revision, times); an empty or absent field is the same.
func samePersona(a, b protocol.Persona) bool {
	return reflect.DeepEqual(userFields(a), userFields(b))
}

func userFields(p protocol.Persona) map[string]any {
	var m map[string]any
	b, _ := json.Marshal(p)
	_ = json.Unmarshal(b, &m)
	for _, k := range []string{"revision", "created_at", "updated_at"} {
		delete(m, k)
	}
	for k, v := range m {
		switch v := v.(type) {
		case nil:
			delete(m, k)
		case string:
			if v == "" {
				delete(m, k)
			}
		case bool:
			if !v {
				delete(m, k)
			}
		case []any:
			if len(v) == 0 {
				delete(m, k)
			}
		case map[string]any:
			if len(v) == 0 {
				delete(m, k)
			}
		}
	}
	return m
}
