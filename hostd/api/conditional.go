package api

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
// the header and the current entity tag.
func preconditionFailed(h, name string, rev uint64, exists bool) error {
	detail := fmt.Sprintf("%s: persona %q does not exist", h, name)
	if exists {
		detail = fmt.Sprintf("%s does not hold: persona %q is at %s", h, name, etag(rev))
	}
	return problem(http.StatusPreconditionFailed, "precondition-failed", "Revision mismatch", detail, "field", h, "persona", name)
}
