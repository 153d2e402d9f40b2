package apiclient

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Concurrent callers reuse their connections instead of dialling for each
// request (Go's default keeps only 2 idle per host).
func TestConcurrentCallersReuseConnections(t *testing.T) {
	const callers, each = 16, 25
	var dials atomic.Int64
	// Each answer waits until all callers have a request in flight, so
	// every round has 16 connections busy at once.
	var mu sync.Mutex
	waiting, release := 0, make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		waiting++
		ch := release
		if waiting == callers {
			close(release)
			waiting, release = 0, make(chan struct{})
		}
		mu.Unlock()
		select {
		case <-ch:
		case <-time.After(10 * time.Second): // a caller failed; the test reports it
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"personas":[]}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			dials.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(Config{URL: srv.URL, Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	// Rounds: every caller sends one request, all wait for all answers.
	// Between rounds the connections are idle, which is where a small idle
	// pool drops them.
	for range each {
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				if _, err := c.ListPersonas(context.Background()); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	// At most one connection per caller, plus the few a transport dials
	// while a busy one frees up; each stays in the idle pool.
	if n := dials.Load(); n > MaxIdleConns {
		t.Fatalf("%d callers × %d requests opened %d connections, want at most %d", callers, each, n, MaxIdleConns)
	}
}
