package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// openStream posts a request whose answer streams as NDJSON lines. whole
// is set when the server answered one JSON document instead (a server that
// does not stream); what names the stream in errors. The caller closes the
// body.
func (c *Client) openStream(ctx context.Context, what, path string, query url.Values, body any) (resp *http.Response, whole bool, err error) {
	resp, err = c.request(ctx, http.MethodPost, path, query,
		http.Header{"Accept": {"application/x-ndjson, application/json, application/problem+json"}}, body)
	if err != nil {
		return nil, false, err
	}
	ct, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	if isJSON(ct) {
		return resp, true, nil
	}
	if strings.TrimSpace(ct) != "application/x-ndjson" {
		resp.Body.Close()
		return nil, false, fmt.Errorf("%w: %s stream answered %q", ErrProtocol, what, ct)
	}
	return resp, false, nil
}

// decodeWhole reads the one document of a server that does not stream.
func decodeWhole[T any](c *Client, body io.Reader) (T, error) {
	var out T
	if err := json.NewDecoder(io.LimitReader(body, maxBody)).Decode(&out); err != nil {
		var zero T
		return zero, c.streamErr(err)
	}
	return out, nil
}

// eachLine calls line with each non-empty line of an NDJSON stream until it
// answers done or an error; it reports whether one did.
func eachLine(body io.Reader, line func(b []byte) (done bool, err error)) (bool, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 64<<10), maxStreamLine)
	for sc.Scan() {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		if done, err := line(b); done || err != nil {
			return done, err
		}
	}
	return false, sc.Err()
}
