package api

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/auth"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// Refused requests are counted, every one (vmpersona_auth_failures_total),
// and audited at a bounded rate per source: a client refused in a loop
// cannot grow the audit log (or the disk, or the daemon's memory) faster
// than authFailBurst events at once and one per authFailEvery afterwards,
// and all sources together no faster than authFailGlobalEvery. An audited
// refusal says how many were left out before it. The detail is the method
// and the route pattern, never the raw path.
const (
	authFailEvery       = time.Second
	authFailBurst       = 5
	authFailGlobalEvery = 20 * time.Millisecond // 50 events/s from all sources
	authFailGlobalBurst = 100
	authFailSources     = 4096 // sources remembered; the oldest is forgotten first
)

// bucket is a token bucket refilled at one token per every, up to burst.
type bucket struct {
	tokens  float64
	last    time.Time
	dropped int // refusals not audited since the last audited one
}

func (b *bucket) take(now time.Time, every time.Duration, burst int) bool {
	if b.last.IsZero() {
		b.tokens = float64(burst)
	} else {
		b.tokens = min(float64(burst), b.tokens+float64(now.Sub(b.last))/float64(every))
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// authFailLimiter decides which refusals are audited.
type authFailLimiter struct {
	mu      sync.Mutex
	global  bucket
	sources map[string]*bucket
}

// admit reports whether a refusal from source is audited now, and how many
// refusals from it were left out since the last audited one.
func (l *authFailLimiter) admit(source string, now time.Time) (ok bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sources == nil {
		l.sources = map[string]*bucket{}
	}
	b := l.sources[source]
	if b == nil {
		if len(l.sources) >= authFailSources {
			l.forgetOldest()
		}
		b = &bucket{}
		l.sources[source] = b
	}
	if !b.take(now, authFailEvery, authFailBurst) || !l.global.take(now, authFailGlobalEvery, authFailGlobalBurst) {
		b.dropped++
		return false, 0
	}
	dropped, b.dropped = b.dropped, 0
	return true, dropped
}

func (l *authFailLimiter) forgetOldest() {
	var oldest string
	var at time.Time
	for k, b := range l.sources {
		if oldest == "" || b.last.Before(at) {
			oldest, at = k, b.last
		}
	}
	delete(l.sources, oldest)
}

// requestSource names who sent r for the limiter and the audit: the unix
// peer's uid, or the TCP peer's address without its port.
func requestSource(r *http.Request) string {
	if p, ok := r.Context().Value(peerKey{}).(auth.Peer); ok {
		return "unix:uid=" + strconv.Itoa(int(p.UID))
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "tcp:" + host
}

// maxAuthDetail bounds the detail of an auth_failure event.
const maxAuthDetail = 256

func (s *Server) auditAuthFailure(r *http.Request, rt route, id auth.Identity, p *apitypes.Problem) {
	s.cfg.Metrics.AuthFailures.WithLabelValues(strconv.Itoa(p.Status)).Inc()
	source := requestSource(r)
	ok, dropped := s.authFails.admit(source, time.Now())
	if !ok {
		return
	}
	actor := id.User
	if actor == "" {
		actor = "anonymous"
	}
	detail := fmt.Sprintf("%s %s from %s: %s", r.Method, rt.path, source, p.Detail)
	if dropped > 0 {
		detail += fmt.Sprintf(" (%d more refusals from this source not audited)", dropped)
	}
	if len(detail) > maxAuthDetail {
		detail = strings.ToValidUTF8(detail[:maxAuthDetail], "")
	}
	_, err := s.cfg.Store.AppendAudit(store.AuditEvent{
		Type: protocol.AuditAuthFailure, Actor: capActor(actor), Source: store.SourceHost,
		Result: strconv.Itoa(p.Status), Detail: detail,
	})
	if err != nil {
		s.cfg.Logger.Warn("audit write failed", "type", protocol.AuditAuthFailure, "err", err)
		return
	}
	s.cfg.Metrics.AuditEvents.WithLabelValues(protocol.AuditAuthFailure).Inc()
}

func capActor(a string) string {
	if len(a) > 128 {
		return strings.ToValidUTF8(a[:128], "")
	}
	return a
}
