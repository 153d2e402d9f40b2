package apiclient

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// rawBody is a request body sent as it is (application/octet-stream unless
// contentType says otherwise); n is its length, -1 when unknown.
type rawBody struct {
	r io.Reader
	n int64
	// contentType is application/octet-stream when empty.
	contentType string
}

// FileTimeout is how long a file transfer may take beyond the client's
// timeout.
const FileTimeout = 10 * time.Minute

// PushOptions are what a pushed file becomes in the guest.
type PushOptions struct {
	// Mode is an octal permission mode ("0644"); empty keeps the replaced
	// file's (else 0644).
	Mode string
	// Owner and Group are names or numbers; empty keeps the replaced
	// file's (else the guest agent's).
	Owner, Group string
	// Size is the body's length, -1 when unknown.
	Size int64
}

// PushFile writes what r holds to path in the instance's guest, atomically.
func (c *Client) PushFile(ctx context.Context, id, path string, opt PushOptions, r io.Reader) (apitypes.FileResult, error) {
	q := url.Values{"path": {path}}
	if opt.Mode != "" {
		q.Set("mode", opt.Mode)
	}
	if opt.Owner != "" {
		q.Set("owner", opt.Owner)
	}
	if opt.Group != "" {
		q.Set("group", opt.Group)
	}
	return do[apitypes.FileResult](ctx, c, FileTimeout, http.MethodPut, "/instances/"+seg(id)+"/files", q, nil, rawBody{r: r, n: opt.Size})
}

// PullFile copies path of the instance's guest to w and answers the bytes
// copied. A copy shorter than the file the daemon announced is an error.
func (c *Client) PullFile(ctx context.Context, id, path string, w io.Writer) (int64, error) {
	ctx, cancel := c.withDeadline(ctx, FileTimeout)
	defer cancel()
	resp, err := c.request(ctx, http.MethodGet, "/instances/"+seg(id)+"/files", url.Values{"path": {path}},
		http.Header{"Accept": {"application/octet-stream, application/problem+json"}}, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, &TransportError{Target: c.target, Err: fmt.Errorf("reading %s: %w", path, err)}
	}
	if want, perr := strconv.ParseInt(resp.Header.Get("Content-Length"), 10, 64); perr == nil && n != want {
		return n, fmt.Errorf("%w: %s: %d of %d bytes", ErrProtocol, path, n, want)
	}
	return n, nil
}
