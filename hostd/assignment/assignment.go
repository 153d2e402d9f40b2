// Package assignment is what an assignment is and how it picks instances:
// "selector → persona, with a priority". An assignment names the persona the
// instances it selects should run; the host daemon's reconciler gives each of
// its instances the persona of the highest-priority assignment that selects
// it (an explicit activation or deactivation of one instance still wins for
// that instance).
//
// A selector selects by instance name, libvirt UUID, instance labels, host
// name and host labels. Every criterion given must hold (AND); a list holds
// when any of its entries does (OR); a label map holds when the instance (or
// host) carries every key with that value. A selector with no criterion is
// refused: an assignment to everything is written as host_labels or hosts
// that say so.
package assignment

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/rules"
)

// Selector says which instances an assignment applies to.
type Selector struct {
	// Instances are instance names (the libvirt domain name, or the
	// --instance/--qmp name).
	Instances []string `json:"instances,omitempty"`
	// UUIDs are libvirt domain UUIDs (any case, with or without dashes).
	UUIDs []string `json:"uuids,omitempty"`
	// InstanceLabels must all be carried by the instance, with these values.
	InstanceLabels map[string]string `json:"instance_labels,omitempty"`
	// Hosts are host names in the fleet (--fleet-host).
	Hosts []string `json:"hosts,omitempty"`
	// HostLabels must all be carried by the host (--fleet-host-label).
	HostLabels map[string]string `json:"host_labels,omitempty"`
}

// Assignment gives the instances its selector selects a persona. Among the
// assignments selecting one instance, the highest priority wins; at equal
// priority, the name that sorts first.
type Assignment struct {
	Name     string   `json:"name"`
	Persona  string   `json:"persona"`
	Priority int      `json:"priority"`
	Selector Selector `json:"selector"`
	// Server-kept: the revision (ETag), and when it was created and last
	// changed.
	Revision  uint64    `json:"revision,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Target is what a selector is matched against: one instance on one host.
type Target struct {
	Instance   string
	UUID       string
	Labels     map[string]string
	Host       string
	HostLabels map[string]string
}

// Limits.
const (
	MaxListEntries = 256
	MaxLabels      = 64
	MaxLabelKeyLen = 63
	MaxLabelValLen = 63
	MinPriority    = -1000000
	MaxPriority    = 1000000
	maxInstanceLen = 255
)

var (
	labelKey   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_./-]*[A-Za-z0-9])?$`)
	labelValue = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?$`)
	uuidForm   = regexp.MustCompile(`^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$`)
)

func invalid(field, format string, args ...any) error {
	return errdefs.InvalidField(field, field+": "+fmt.Sprintf(format, args...))
}

// CheckName checks an assignment's name (the persona name's rule).
func CheckName(name string) error {
	if err := rules.PersonaName(name); err != nil {
		return invalid("name", "%v", err)
	}
	return nil
}

// CheckLabels checks a label map; field names it in errors.
func CheckLabels(field string, labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid(field, "%d labels, at most %d allowed", len(labels), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		if len(k) > MaxLabelKeyLen || !labelKey.MatchString(k) {
			return invalid(field+"."+k, "label key must be 1–%d of [A-Za-z0-9_./-], starting and ending with a letter or digit", MaxLabelKeyLen)
		}
		if len(v) > MaxLabelValLen || !labelValue.MatchString(v) {
			return invalid(field+"."+k, "label value %q must be at most %d of [A-Za-z0-9_.-], starting and ending with a letter or digit", v, MaxLabelValLen)
		}
	}
	return nil
}

// ParseLabels reads "key=value" arguments (flags, command lines) into a map;
// field names them in errors.
func ParseLabels(field string, args []string) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			return nil, invalid(field, "%q: want key=value", a)
		}
		out[k] = v
	}
	if err := CheckLabels(field, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Validate checks an assignment as written by a user and normalises it
// (sorted lists, lower-case UUIDs with dashes). Errors name the field.
func Validate(a *Assignment) error {
	if err := CheckName(a.Name); err != nil {
		return err
	}
	if err := rules.PersonaName(a.Persona); err != nil {
		return invalid("persona", "%v", err)
	}
	if a.Priority < MinPriority || a.Priority > MaxPriority {
		return invalid("priority", "%d is outside %d…%d", a.Priority, MinPriority, MaxPriority)
	}
	s := &a.Selector
	if len(s.Instances) == 0 && len(s.UUIDs) == 0 && len(s.InstanceLabels) == 0 && len(s.Hosts) == 0 && len(s.HostLabels) == 0 {
		return invalid("selector", "selects nothing: give instances, uuids, instance_labels, hosts or host_labels")
	}
	lists := []struct {
		field string
		l     *[]string
		check func(string) bool
	}{
		{"selector.instances", &s.Instances, func(v string) bool { return v != "" && len(v) <= maxInstanceLen && !strings.ContainsAny(v, "/\x00") }},
		{"selector.uuids", &s.UUIDs, uuidForm.MatchString},
		{"selector.hosts", &s.Hosts, func(v string) bool { return v != "" && len(v) <= maxInstanceLen && !strings.ContainsAny(v, "/\x00") }},
	}
	for _, l := range lists {
		if len(*l.l) > MaxListEntries {
			return invalid(l.field, "%d entries, at most %d allowed", len(*l.l), MaxListEntries)
		}
		for i, v := range *l.l {
			if !l.check(v) {
				return invalid(fmt.Sprintf("%s[%d]", l.field, i), "%q is not a valid entry", v)
			}
		}
	}
	for i, u := range s.UUIDs {
		s.UUIDs[i] = NormalizeUUID(u)
	}
	for _, l := range lists {
		slices.Sort(*l.l)
		*l.l = slices.Compact(*l.l)
	}
	if err := CheckLabels("selector.instance_labels", s.InstanceLabels); err != nil {
		return err
	}
	return CheckLabels("selector.host_labels", s.HostLabels)
}

// NormalizeUUID writes a UUID in lower case with dashes.
func NormalizeUUID(u string) string {
	u = strings.ToLower(strings.ReplaceAll(u, "-", ""))
	if len(u) != 32 {
		return u
	}
	return u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:]
}

// Matches reports whether the selector selects t.
func (s Selector) Matches(t Target) bool {
	if len(s.Instances) == 0 && len(s.UUIDs) == 0 && len(s.InstanceLabels) == 0 && len(s.Hosts) == 0 && len(s.HostLabels) == 0 {
		return false
	}
	if len(s.Instances) > 0 && !slices.Contains(s.Instances, t.Instance) {
		return false
	}
	if len(s.UUIDs) > 0 && (t.UUID == "" || !slices.Contains(s.UUIDs, NormalizeUUID(t.UUID))) {
		return false
	}
	if len(s.Hosts) > 0 && !slices.Contains(s.Hosts, t.Host) {
		return false
	}
	return hasLabels(t.Labels, s.InstanceLabels) && hasLabels(t.HostLabels, s.HostLabels)
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// Order sorts assignments by precedence: highest priority first, then by
// name.
func Order(a, b Assignment) int {
	if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
		return c
	}
	return strings.Compare(a.Name, b.Name)
}

// Best is the assignment that decides t's persona among as: the first by
// Order whose selector matches and for which usable (nil: all) says yes.
func Best(as []Assignment, t Target, usable func(Assignment) bool) (Assignment, bool) {
	sorted := slices.Clone(as)
	slices.SortFunc(sorted, Order)
	for _, a := range sorted {
		if a.Selector.Matches(t) && (usable == nil || usable(a)) {
			return a, true
		}
	}
	return Assignment{}, false
}
