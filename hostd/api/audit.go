package api

import (
	"bytes"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
)

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// MaxAuditPageBytes bounds the stored size of the events of one GET /audit
// page (the answer is about as large): a page holds up to limit events or
// this many bytes of them, whichever comes first.
const MaxAuditPageBytes = 4 << 20

// auditPager is a store that says whether more events follow a page in the
// same read (*store.Store does).
type auditPager interface {
	QueryAuditPage(q store.AuditQuery) ([]store.AuditEvent, bool, error)
}

// queryAuditPage reads one page and whether more events match: in one read
// where the store can, else by looking one event further.
func queryAuditPage(st store.Backend, q store.AuditQuery) ([]store.AuditEvent, bool, error) {
	if p, ok := st.(auditPager); ok {
		return p.QueryAuditPage(q)
	}
	evs, err := st.QueryAudit(q)
	if err != nil || len(evs) == 0 {
		return evs, false, err
	}
	peek := q
	peek.After, peek.Limit, peek.MaxBytes = evs[len(evs)-1].ID, 1, 0
	rest, err := st.QueryAudit(peek)
	return evs, len(rest) > 0, err
}

func (s *Server) queryAudit(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	q := r.URL.Query()
	aq := store.AuditQuery{
		Instance: q.Get("instance"), Persona: q.Get("persona"), Type: q.Get("type"), After: q.Get("after"),
	}
	var err error
	if aq.Since, err = timeQuery(q.Get("since"), "since"); err != nil {
		return err
	}
	if aq.Until, err = timeQuery(q.Get("until"), "until"); err != nil {
		return err
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return problem(http.StatusBadRequest, "bad-query", "Bad query parameter", fmt.Sprintf("limit=%q must be a number from 1 to 10000", v), "field", "limit")
		}
		aq.Limit = n
	}
	// A page is bounded in bytes as well as in events; "next" is set only
	// when more events match, so a client paging until it is empty stops.
	limit := aq.Limit
	if limit <= 0 {
		limit = store.DefaultAuditLimit
	}
	aq.Limit = limit
	aq.MaxBytes = MaxAuditPageBytes
	evs, more, err := queryAuditPage(s.cfg.Store, aq)
	if err != nil {
		return err
	}
	if evs == nil {
		evs = []apitypes.AuditEvent{}
	}
	page := apitypes.AuditPage{Events: evs}
	if more && len(evs) > 0 {
		page.Next = evs[len(evs)-1].ID
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

// timeQuery accepts RFC 3339 times and, for convenience, durations back from
// now ("15m" means 15 minutes ago).
func timeQuery(v, field string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return time.Now().Add(-d), nil
	}
	return time.Time{}, problem(http.StatusBadRequest, "bad-query", "Bad query parameter",
		fmt.Sprintf("%s=%q is neither an RFC 3339 time nor a duration such as 15m", field, v), "field", field)
}

// Paging of /personas and /instances: items sorted by name, ?limit= (1 to
// MaxPageLimit, DefaultPageLimit when absent) and ?after= (the previous
// page's next).
const (
	DefaultPageLimit = 1000
	MaxPageLimit     = 1000
)

// pageQuery reads ?limit= and ?after=.
func pageQuery(r *http.Request) (limit int, after string, err error) {
	q := r.URL.Query()
	limit = DefaultPageLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageLimit {
			return 0, "", problem(http.StatusBadRequest, "bad-query", "Bad query parameter",
				fmt.Sprintf("limit=%q must be a number from 1 to %d", v, MaxPageLimit), "field", "limit")
		}
		limit = n
	}
	return limit, q.Get("after"), nil
}

// pageOf cuts the page after the cursor out of n items sorted by key:
// the index range and the next cursor ("" on the last page).
func pageOf(n int, key func(int) string, limit int, after string) (from, to int, next string) {
	from = sort.Search(n, func(i int) bool { return key(i) > after })
	to = min(n, from+limit)
	if to < n {
		next = key(to - 1)
	}
	return from, to, next
}
