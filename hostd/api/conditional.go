package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/vmpersona/vmpersona/errdefs"
)

// Conditional requests (RFC 9110 §13). A persona's entity tag is its
// revision, quoted ("4"); the API never sends weak tags.

// entityTag is one entity tag of an If-Match or If-None-Match list.
type entityTag struct {
	weak   bool
	opaque string // without the quotes
}

// tagList is a parsed If-Match or If-None-Match header: "*" or a list of
// entity tags. A zero tagList means the header was absent.
type tagList struct {
	present bool
	any     bool // "*"
	tags    []entityTag
}

// parseTagList reads the request's header h (all its field lines). A
// syntactically invalid value is a 400 naming the header.
func parseTagList(r *http.Request, h string) (tagList, error) {
	lines := r.Header.Values(h)
	if len(lines) == 0 {
		return tagList{}, nil
	}
	v := strings.TrimSpace(strings.Join(lines, ","))
	if v == "*" {
		return tagList{present: true, any: true}, nil
	}
	l := tagList{present: true}
	rest := v
	for {
		rest = strings.TrimLeft(rest, " \t,")
		if rest == "" {
			break
		}
		var t entityTag
		if strings.HasPrefix(rest, "W/") {
			t.weak, rest = true, rest[2:]
		}
		if !strings.HasPrefix(rest, `"`) {
			return tagList{}, badTagList(h, v)
		}
		end := strings.IndexByte(rest[1:], '"')
		if end < 0 {
			return tagList{}, badTagList(h, v)
		}
		t.opaque = rest[1 : 1+end]
		for i := 0; i < len(t.opaque); i++ {
			// etagc: %x21 / %x23-7E / obs-text
			if c := t.opaque[i]; c < 0x21 || c == 0x7f {
				return tagList{}, badTagList(h, v)
			}
		}
		l.tags = append(l.tags, t)
		rest = strings.TrimLeft(rest[2+end:], " \t")
		if rest != "" && rest[0] != ',' {
			return tagList{}, badTagList(h, v)
		}
	}
	if len(l.tags) == 0 {
		return tagList{}, badTagList(h, v)
	}
	return l, nil
}

func badTagList(h, v string) error {
	return problem(http.StatusBadRequest, "bad-precondition", "Bad "+h,
		fmt.Sprintf("%s %q is neither * nor a list of entity tags such as \"3\"", h, v), "field", h)
}

// matchStrong reports whether the list holds the revision's tag under the
// strong comparison If-Match uses: a weak tag never matches.
func (l tagList) matchStrong(rev uint64) bool {
	if l.any {
		return true
	}
	want := strconv.FormatUint(rev, 10)
	for _, t := range l.tags {
		if !t.weak && t.opaque == want {
			return true
		}
	}
	return false
}

// matchWeak reports whether the list holds the revision's tag under the
// weak comparison If-None-Match uses.
func (l tagList) matchWeak(rev uint64) bool {
	if l.any {
		return true
	}
	want := strconv.FormatUint(rev, 10)
	for _, t := range l.tags {
		if t.opaque == want {
			return true
		}
	}
	return false
}

// preconditionFailed answers a condition that does not hold (412), naming
// the header and the persona's current entity tag.
func preconditionFailed(h, name string, rev uint64, exists bool) error {
	return conditionFails(h, "persona", name, rev, exists)
}

// conditionFails answers a condition on the resource of the kind ("persona",
// "assignment") named name that does not hold (412), naming the header and
// the current entity tag.
func conditionFails(h, kind, name string, rev uint64, exists bool) error {
	detail := fmt.Sprintf("%s: %s %q does not exist", h, kind, name)
	if exists {
		detail = fmt.Sprintf("%s does not hold: %s %q is at %s", h, kind, name, etag(rev))
	}
	return problem(http.StatusPreconditionFailed, "precondition-failed", "Revision mismatch", detail, "field", h, kind, name)
}

// revisionToMatch is the revision a change must find under the If-Match
// list l: none (0) without the header or with "*"; else the current
// revision, read by current, which one of the list's tags must name (412
// otherwise, naming the kind and name of the resource).
func (l tagList) revisionToMatch(kind, name string, current func() (uint64, error)) (uint64, error) {
	if !l.present || l.any {
		return 0, nil
	}
	rev, err := current()
	if err != nil {
		return 0, err
	}
	if !l.matchStrong(rev) {
		return 0, conditionFails("If-Match", kind, name, rev, true)
	}
	return rev, nil
}

// nameFromPath checks the name a request body gives (*body) against the
// one in the path: an empty one takes the path's, another one is refused.
func nameFromPath(body *string, path string) error {
	if *body == "" {
		*body = path
	}
	if *body != path {
		return errdefs.InvalidField("name", fmt.Sprintf("name %q in the body differs from %q in the path; renaming is not supported", *body, path))
	}
	return nil
}
