package server

import (
	"math"

	"github.com/vmpersona/vmpersona/guestd/routing"
	"github.com/vmpersona/vmpersona/protocol"
)

// outputBound is how many bytes of each output stream an exec may produce.
// A buffered answer holds at most the request's max_output, itself bounded
// by the guest's --max-output. A streamed exec is not cut in total unless
// the request asks for a bound: its chunks leave as they are produced, and
// each write waits for the stream, so a slow reader holds the command back
// (a full pipe) instead of growing memory here.
func outputBound(req protocol.Exec, guestMax int) int {
	if req.Stream {
		if req.MaxOutput > 0 {
			return req.MaxOutput
		}
		return math.MaxInt
	}
	if req.MaxOutput > 0 {
		return min(req.MaxOutput, guestMax)
	}
	return guestMax
}

// argv0 is the name a command runs under: an override to an absolute path
// runs as that path (a multi-call binary such as busybox picks its applet
// from argv[0], so the name the user typed would run the wrong program);
// everything else runs under the name the user typed.
func argv0(command string, d routing.Decision) string {
	if d.Kind == routing.Override && d.Override != nil && !d.Override.Inline && d.Override.Path != "" {
		return d.Override.Path
	}
	return command
}
