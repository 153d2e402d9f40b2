package activation

import (
	"maps"
	"slices"
	"strings"

	"github.com/vmpersona/vmpersona/protocol"
)

// secretMarks are the name parts that make a variable's value secret in a
// diff.
var secretMarks = []string{"PASSWORD", "TOKEN", "SECRET", "KEY"}

// SecretName reports whether a variable's name looks secret: it contains
// PASSWORD, TOKEN, SECRET or KEY, in any case.
func SecretName(name string) bool {
	up := strings.ToUpper(name)
	for _, m := range secretMarks {
		if strings.Contains(up, m) {
			return true
		}
	}
	return false
}

// Diff answers what activating req.Persona would change, against the view in
// force now: the environment commands get, the restrictions, overrides and
// allowlist, and the scripts that would run. It changes nothing: no file is
// written, no script runs, nothing is audited.
func (m *Manager) Diff(req protocol.DryRun) protocol.ActivationDiff {
	cur := m.view.Load()
	p := req.Persona
	d := protocol.ActivationDiff{To: protocol.PersonaRef{Name: p.Name, Revision: req.Revision}, Environment: []protocol.EnvChange{}, Scripts: []string{}}
	var old protocol.Persona
	if a := cur.Active; a != nil {
		d.From = &protocol.PersonaRef{Name: a.Persona.Name, Revision: a.Revision}
		old = a.Persona
		d.Unchanged = a.Persona.Name == p.Name && a.Revision == req.Revision
	}

	// The environment: what commands get now against what they would get.
	// Values are masked for secret-looking names and for the variables
	// either persona lists in secret_variables.
	secret := func(k string) bool {
		return SecretName(k) || slices.Contains(p.SecretVariables, k) || slices.Contains(old.SecretVariables, k)
	}
	now := envMap(cur.Env)
	next := envMap(ComposeEnv(m.base, p.EnvironmentVariables))
	for _, k := range slices.Sorted(maps.Keys(now)) {
		nv, ok := next[k]
		switch {
		case !ok:
			d.Environment = append(d.Environment, envChange(k, protocol.ChangeRemoved, now[k], "", secret(k)))
		case nv != now[k]:
			d.Environment = append(d.Environment, envChange(k, protocol.ChangeChanged, now[k], nv, secret(k)))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(next)) {
		if _, ok := now[k]; !ok {
			d.Environment = append(d.Environment, envChange(k, protocol.ChangeAdded, "", next[k], secret(k)))
		}
	}

	d.Restrictions = listChange(old.RestrictedCommands, p.RestrictedCommands)
	d.Allowlist = listChange(old.AllowedCommands, p.AllowedCommands)
	d.Overrides = listChange(slices.Collect(maps.Keys(old.CommandOverrides)), slices.Collect(maps.Keys(p.CommandOverrides)))
	for _, k := range slices.Sorted(maps.Keys(p.CommandOverrides)) {
		if t, ok := old.CommandOverrides[k]; ok && t != p.CommandOverrides[k] {
			d.Overrides.Changed = append(d.Overrides.Changed, k)
		}
	}
	if strings.TrimSpace(p.PreActivationScript) != "" {
		d.Scripts = append(d.Scripts, "pre")
	}
	if strings.TrimSpace(p.PostActivationScript) != "" {
		d.Scripts = append(d.Scripts, "post")
	}
	return d
}

func envChange(name, change, old, new string, secret bool) protocol.EnvChange {
	c := protocol.EnvChange{Name: name, Change: change, Old: old, New: new}
	if secret {
		c.Masked = true
		if old != "" {
			c.Old = protocol.MaskedValue
		}
		if new != "" {
			c.New = protocol.MaskedValue
		}
	}
	return c
}

func envMap(env []string) map[string]string {
	out := make(map[string]string, len(env))
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// listChange is what turning old into new adds and removes, each sorted.
func listChange(old, new []string) protocol.ListChange {
	c := protocol.ListChange{Added: []string{}, Removed: []string{}}
	for _, v := range new {
		if !slices.Contains(old, v) && !slices.Contains(c.Added, v) {
			c.Added = append(c.Added, v)
		}
	}
	for _, v := range old {
		if !slices.Contains(new, v) && !slices.Contains(c.Removed, v) {
			c.Removed = append(c.Removed, v)
		}
	}
	slices.Sort(c.Added)
	slices.Sort(c.Removed)
	return c
}
