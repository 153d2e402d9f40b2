package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// maxStreamLine bounds one NDJSON line of a streamed exec.
const maxStreamLine = 16 << 20

// execLimit is how long an exec may run beyond the client's timeout.
func execLimit(req apitypes.ExecRequest) time.Duration {
	if req.TimeoutSeconds > 0 {
		return time.Duration(req.TimeoutSeconds * float64(time.Second))
	}
	return serverExecDefault
}

// execBody is the body of an exec request: the request document, or with
// stdin the document, a newline and the input (apitypes.ExecStdinMediaType).
func execBody(req apitypes.ExecRequest, stdin io.Reader) any {
	if req.Args == nil {
		req.Args = []string{}
	}
	if stdin == nil {
		return req
	}
	doc, err := json.Marshal(req)
	if err != nil {
		return req // the same error comes from encoding it as a document
	}
	doc = append(doc, '\n')
	return rawBody{r: io.MultiReader(bytes.NewReader(doc), stdin), n: -1, contentType: apitypes.ExecStdinMediaType}
}

// Exec runs a command in an instance's guest and returns its outcome with
// the captured output. A command that ran and failed is not an error: see
// ExecResult.ExitCode and Signal. A denied command answers a *Problem
// wrapping ErrForbidden and ErrCommandDenied; one that cannot be started,
// ErrUnprocessable and ErrCommandNotFound or ErrCommandNotExecutable.
func (c *Client) Exec(ctx context.Context, id string, req apitypes.ExecRequest) (apitypes.ExecResult, error) {
	return c.ExecInput(ctx, id, req, nil)
}

// ExecInput is Exec with the command's standard input read from stdin
// (when not nil) as the command runs: its size is not bounded by the
// request's (req.Stdin must be empty then). The command reads it as it
// arrives; reading stops when the command closes its input or ends.
func (c *Client) ExecInput(ctx context.Context, id string, req apitypes.ExecRequest, stdin io.Reader) (apitypes.ExecResult, error) {
	return do[apitypes.ExecResult](ctx, c, execLimit(req), http.MethodPost, "/instances/"+seg(id)+"/exec", nil, nil, execBody(req, stdin))
}

// ExecStream runs a command like Exec but writes its output to stdout and
// stderr as it arrives. The result carries no output. Errors before any
// output are the same as Exec's; a stream that ends without its exit line
// is an error wrapping ErrProtocol.
func (c *Client) ExecStream(ctx context.Context, id string, req apitypes.ExecRequest, stdout, stderr io.Writer) (apitypes.ExecResult, error) {
	return c.ExecStreamInput(ctx, id, req, nil, stdout, stderr)
}

// ExecStreamInput is ExecStream with the command's standard input read from
// stdin (when not nil) as the command runs, as ExecInput says: input and
// output stream at the same time, so a command like cat passes any size
// through.
func (c *Client) ExecStreamInput(ctx context.Context, id string, req apitypes.ExecRequest, stdin io.Reader, stdout, stderr io.Writer) (apitypes.ExecResult, error) {
	ctx, cancel := c.withDeadline(ctx, execLimit(req))
	defer cancel()
	resp, whole, err := c.openStream(ctx, "exec", "/instances/"+seg(id)+"/exec", url.Values{"stream": {"true"}}, execBody(req, stdin))
	if err != nil {
		return apitypes.ExecResult{}, err
	}
	defer resp.Body.Close()
	if whole {
		// A server that does not stream answers the whole result at once.
		out, err := decodeWhole[apitypes.ExecResult](c, resp.Body)
		if err != nil {
			return apitypes.ExecResult{}, err
		}
		ob, err := out.StdoutBytes()
		if err != nil {
			return out, fmt.Errorf("%w: stdout: %v", ErrProtocol, err)
		}
		eb, err := out.StderrBytes()
		if err != nil {
			return out, fmt.Errorf("%w: stderr: %v", ErrProtocol, err)
		}
		if _, err := stdout.Write(ob); err != nil {
			return out, fmt.Errorf("apiclient: write stdout: %w", err)
		}
		if _, err := stderr.Write(eb); err != nil {
			return out, fmt.Errorf("apiclient: write stderr: %w", err)
		}
		out.Stdout, out.Stderr, out.StdoutEncoding, out.StderrEncoding = "", "", "", ""
		return out, nil
	}
	res, err := readExecStream(resp.Body, stdout, stderr)
	if err != nil {
		return apitypes.ExecResult{}, c.streamErr(err)
	}
	if stdin == nil {
		// Read to the end of the body so the connection can be reused
		// (with input still on its way, the server may take a while to
		// end it: the connection is not reused then).
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	}
	return res, nil
}

// errNoExit: the stream ended without its exit line.
var errNoExit = errors.New("exec stream ended without an exit status")

// readExecStream copies a streamed exec's output lines to stdout and stderr
// and returns the exit line's result. Lines of unknown kinds are skipped
// (newer servers may add some); an error line becomes a *Problem.
func readExecStream(body io.Reader, stdout, stderr io.Writer) (apitypes.ExecResult, error) {
	var res apitypes.ExecResult
	done, err := eachLine(body, func(line []byte) (bool, error) {
		var l apitypes.ExecStreamLine
		if err := json.Unmarshal(line, &l); err != nil {
			return false, fmt.Errorf("%w: exec stream line: %v", ErrProtocol, err)
		}
		switch l.Stream {
		case apitypes.StreamStdout, apitypes.StreamStderr:
			w := stdout
			if l.Stream == apitypes.StreamStderr {
				w = stderr
			}
			data, err := protocol.DecodeOutput(l.Data, l.Encoding)
			if err != nil {
				return false, fmt.Errorf("%w: exec stream line: %v", ErrProtocol, err)
			}
			if _, err := w.Write(data); err != nil {
				return false, &writeError{stream: l.Stream, err: err}
			}
		case apitypes.StreamExit:
			if l.ExecResult != nil {
				res = *l.ExecResult
			}
			res.Stdout, res.Stderr, res.StdoutEncoding, res.StderrEncoding = "", "", "", ""
			return true, nil
		default:
			if e := l.StreamError; e != nil && e.Status != 0 {
				return false, &apitypes.Problem{Type: e.Type, Title: e.Title, Status: e.Status, Detail: e.Detail}
			}
		}
		return false, nil
	})
	switch {
	case err != nil:
		return apitypes.ExecResult{}, err
	case !done:
		return apitypes.ExecResult{}, fmt.Errorf("%w: %w", ErrProtocol, errNoExit)
	}
	return res, nil
}

// writeError is a failure to write the command's output locally.
type writeError struct {
	stream string
	err    error
}

func (e *writeError) Error() string { return fmt.Sprintf("apiclient: write %s: %v", e.stream, e.err) }
func (e *writeError) Unwrap() error { return e.err }

func (c *Client) streamErr(err error) error {
	var p *apitypes.Problem
	var we *writeError
	switch {
	case errors.As(err, &p), errors.As(err, &we), errors.Is(err, ErrProtocol):
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &TransportError{Target: c.target, Err: err}
	}
	if errors.Is(err, bufio.ErrTooLong) {
		return fmt.Errorf("%w: exec stream line longer than %d bytes", ErrProtocol, maxStreamLine)
	}
	return fmt.Errorf("%w: exec stream: %v", ErrProtocol, err)
}
