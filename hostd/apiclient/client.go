// Package apiclient is a typed Go client for the REST API of vmpersona-hostd:
// personas, instances, activation, exec (plain and streamed) and the audit
// log. It speaks to the daemon over its unix socket or over HTTP(S) with a
// bearer token, applies a deadline to every request, and turns the server's
// problem documents into *apitypes.Problem errors that wrap the error classes
// of package errdefs (and this package's sentinels, which name them).
package apiclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultSocket is the host daemon's API socket.
const DefaultSocket = "/run/vmpersona/hostd.sock"

// DefaultTimeout bounds each request when Config.Timeout is 0.
const DefaultTimeout = 30 * time.Second

// guestScriptDefault is the guest's default limit per activation script;
// serverExecDefault is the server's default limit for a command. Requests
// that leave these to the other side wait for them plus Config.Timeout.
const (
	guestScriptDefault = 5 * time.Minute
	serverExecDefault  = 30 * time.Second
)

// maxBody bounds every answer read into memory (documents, problems).
const maxBody = 64 << 20

// Config configures a Client.
type Config struct {
	// URL is where the daemon listens: "http://127.0.0.1:7080",
	// "https://host:7443", "unix:/run/vmpersona/hostd.sock" or a bare
	// socket path. Empty means DefaultSocket.
	URL string
	// Token is sent as "Authorization: Bearer TOKEN" when not empty.
	Token string
	// TLSConfig is used for https URLs (nil: the system's roots).
	TLSConfig *tls.Config
	// Timeout bounds each request beyond the operation's own limits (an
	// activation's scripts, a command's timeout). 0 means DefaultTimeout.
	Timeout time.Duration
	// UserAgent is sent with every request.
	UserAgent string
}

// Client talks to one host daemon. It is safe for concurrent use.
type Client struct {
	base      *url.URL
	http      *http.Client
	token     string
	timeout   time.Duration
	userAgent string
	target    string
}

// New returns a client for cfg. It does not connect.
func New(cfg Config) (*Client, error) {
	c := &Client{token: cfg.Token, timeout: cfg.Timeout, userAgent: cfg.UserAgent}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.userAgent == "" {
		c.userAgent = "vmpersona-apiclient"
	}
	raw := cfg.URL
	if raw == "" {
		raw = DefaultSocket
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		// Concurrent callers (scripts, the bench, controllers) keep their
		// connections: with Go's default of 2 idle per host, every request
		// past the second in flight would dial anew.
		MaxIdleConns:          MaxIdleConns,
		MaxIdleConnsPerHost:   MaxIdleConns,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 0, // activation and exec answer when the guest is done: bounded by the request's context
		TLSClientConfig:       cfg.TLSConfig,
		ForceAttemptHTTP2:     true,
	}
	var socket string
	switch {
	case strings.HasPrefix(raw, "/"):
		socket = raw
	case strings.HasPrefix(raw, "unix:"):
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("apiclient: bad URL %q: %w", raw, err)
		}
		socket = u.Path
		if socket == "" {
			socket = u.Opaque
		}
		if socket == "" {
			return nil, fmt.Errorf("apiclient: bad URL %q: no socket path", raw)
		}
	default:
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("apiclient: bad URL %q: %w", raw, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("apiclient: bad URL %q: scheme must be http, https or unix", raw)
		}
		if u.Host == "" {
			return nil, fmt.Errorf("apiclient: bad URL %q: no host", raw)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawQuery, u.Fragment = "", ""
		c.base = u
		c.target = u.String()
	}
	if socket != "" {
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}
		c.base = &url.URL{Scheme: "http", Host: "vmpersona-hostd"}
		c.target = "unix:" + socket
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// MaxIdleConns is how many idle connections a Client keeps to its daemon
// for reuse.
const MaxIdleConns = 32

// Target names where the client connects, for messages.
func (c *Client) Target() string { return c.target }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// withDeadline bounds ctx by extra plus the client's timeout (unless ctx
// already ends sooner).
func (c *Client) withDeadline(ctx context.Context, extra time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout+extra)
}

// request sends one request and returns the response of a 2xx answer; any
// other answer becomes an *apitypes.Problem. body, when not nil, is sent as JSON.
func (c *Client) request(ctx context.Context, method, path string, query url.Values, header http.Header, body any) (*http.Response, error) {
	// path's segments are escaped by the caller (seg).
	target := c.base.String() + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	raw, isRaw := body.(rawBody)
	if isRaw {
		rd = raw.r
	} else if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("apiclient: encode %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, fmt.Errorf("apiclient: %s %s: %w", method, path, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	switch {
	case isRaw:
		ct := raw.contentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		req.Header.Set("Content-Type", ct)
		if raw.n >= 0 {
			req.ContentLength = raw.n
		}
	case body != nil:
		req.Header.Set("Content-Type", "application/json")
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json, application/problem+json")
	}
	req.Header.Set("User-Agent", c.userAgent)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &TransportError{Target: c.target, Err: err}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return nil, decodeProblem(resp.StatusCode, resp.Header.Get("Content-Type"), b)
}

// TransportError is a failure to reach the daemon or to read its answer.
type TransportError struct {
	Target string
	Err    error
}

func (e *TransportError) Error() string {
	switch {
	case errors.Is(e.Err, context.DeadlineExceeded):
		return fmt.Sprintf("vmpersona-hostd at %s did not answer in time: %v", e.Target, e.Err)
	case errors.Is(e.Err, context.Canceled):
		return fmt.Sprintf("request to vmpersona-hostd at %s canceled: %v", e.Target, e.Err)
	}
	return fmt.Sprintf("cannot reach vmpersona-hostd at %s: %v", e.Target, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// call sends a request and decodes a JSON answer into out (when not nil).
func (c *Client) call(ctx context.Context, method, path string, query url.Values, header http.Header, body, out any) (http.Header, error) {
	resp, err := c.request(ctx, method, path, query, header, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return resp.Header, nil
	}
	if ct := resp.Header.Get("Content-Type"); !isJSON(ct) {
		return nil, fmt.Errorf("%w: %s %s answered %q, not JSON", ErrProtocol, method, path, ct)
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxBody))
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, &TransportError{Target: c.target, Err: err}
		}
		return nil, fmt.Errorf("%w: %s %s: %v", ErrProtocol, method, path, err)
	}
	if raw, ok := body.(rawBody); !ok || raw.n >= 0 {
		// Read to the end (the trailing newline) so the connection is
		// reused; not while a body of unknown length may still be on its
		// way (the server may take a while to end the answer then).
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	}
	return resp.Header, nil
}

// do makes one request within the client's timeout plus extra and decodes
// its JSON answer.
func do[T any](ctx context.Context, c *Client, extra time.Duration, method, path string, query url.Values, header http.Header, body any) (T, error) {
	ctx, cancel := c.withDeadline(ctx, extra)
	defer cancel()
	var out T
	if _, err := c.call(ctx, method, path, query, header, body, &out); err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// getAll reads every page of a list: page gives a page's items and the
// cursor of the next page ("" on the last). The items are never nil.
func getAll[L, E any](ctx context.Context, c *Client, path string, query url.Values, page func(L) ([]E, string)) ([]E, error) {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	all := []E{}
	for after := ""; ; {
		q := query
		if after != "" {
			q = url.Values{"after": {after}}
			for k, v := range query {
				q[k] = v
			}
		}
		var out L
		if _, err := c.call(ctx, http.MethodGet, path, q, nil, nil, &out); err != nil {
			return nil, err
		}
		items, next := page(out)
		all = append(all, items...)
		if next == "" || next == after {
			return all, nil
		}
		after = next
	}
}

func seg(s string) string { return url.PathEscape(s) }

func ifMatch(rev uint64) http.Header {
	if rev == 0 {
		return nil
	}
	return http.Header{"If-Match": {`"` + strconv.FormatUint(rev, 10) + `"`}}
}

// Healthz reports whether the daemon is alive.
func (c *Client) Healthz(ctx context.Context) error {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	_, err := c.call(ctx, http.MethodGet, "/healthz", nil, nil, nil, nil)
	return err
}

// Readyz reports whether the daemon is ready to serve.
func (c *Client) Readyz(ctx context.Context) error {
	ctx, cancel := c.withDeadline(ctx, 0)
	defer cancel()
	_, err := c.call(ctx, http.MethodGet, "/readyz", nil, nil, nil, nil)
	return err
}
