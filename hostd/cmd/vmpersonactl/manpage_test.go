package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestManPageMatchesTheCLI: vmpersonactl(1) has a section for exactly the
// commands a user can run, each with every one of its flags, and every
// section names a command the CLI answers help for.
func TestManPageMatchesTheCLI(t *testing.T) {
	out, errOut, code := runInProcess(t, nil, "__man", "2026-01-01")
	if code != 0 || errOut != "" {
		t.Fatalf("__man: %d %q", code, errOut)
	}
	sections := map[string]string{} // command path → its text
	var order []string
	cur := ""
	for _, l := range strings.Split(out, "\n") {
		if m := regexp.MustCompile(`^\.SS "(.*)"$`).FindStringSubmatch(l); m != nil {
			name, _, _ := strings.Cut(m[1], `\fI`) // arguments are in italics
			cur = strings.Join(strings.Fields(strings.ReplaceAll(name, `\-`, "-")), " ")
			order = append(order, cur)
			continue
		}
		if strings.HasPrefix(l, ".SH") {
			cur = ""
		}
		if cur != "" {
			sections[cur] += strings.ReplaceAll(l, `\-`, "-") + "\n"
		}
	}
	var leaves []string
	for _, c := range allCommands(rootCommand()) {
		if c.subs != nil || c.hidden || (c.parent != nil && c.parent.hidden) {
			continue
		}
		path := strings.TrimPrefix(c.path(), progName+" ")
		leaves = append(leaves, path)
		text, ok := sections[path]
		if !ok {
			t.Errorf("the man page has no section for %q", path)
			continue
		}
		fs := newFlagSet(c)
		c.setup(fs)
		for _, l := range flagLines(fs) {
			name := regexp.MustCompile(`--([a-z][a-z-]*)`).FindStringSubmatch(l)[1]
			if !strings.Contains(text, "--"+name) {
				t.Errorf("man page, %s: flag --%s missing", path, name)
			}
		}
	}
	slices.Sort(leaves)
	sorted := slices.Sorted(slices.Values(order))
	if !slices.Equal(sorted, leaves) {
		t.Errorf("man page commands %v, CLI commands %v", sorted, leaves)
	}
	for _, s := range order {
		if _, _, code := runInProcess(t, nil, append([]string{"help"}, strings.Fields(s)...)...); code != 0 {
			t.Errorf("man page section %q: vmpersonactl help %s exits %d", s, s, code)
		}
	}
	for _, want := range []string{".SH GLOBAL FLAGS", "--output FORMAT", ".SH EXIT STATUS"} {
		if !strings.Contains(strings.ReplaceAll(out, `\-`, "-"), want) {
			t.Errorf("man page lacks %q", want)
		}
	}
}
