package api

import (
	"encoding/json"
	"net/http"
)

// ndjson is a streamed answer (application/x-ndjson) whose status line goes
// out with its first line: until then the handler may still answer with a
// problem document instead.
type ndjson struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	enc     *json.Encoder
	started bool
}

func newNDJSON(w http.ResponseWriter) *ndjson {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &ndjson{w: w, rc: http.NewResponseController(w), enc: enc}
}

// line writes one line (after the status line, the first time).
func (n *ndjson) line(v any) {
	if !n.started {
		n.started = true
		n.w.Header().Set("Content-Type", "application/x-ndjson")
		n.w.Header().Set("X-Content-Type-Options", "nosniff")
		n.w.WriteHeader(http.StatusOK)
	}
	n.enc.Encode(v)
}

// flush sends what was written to the client.
func (n *ndjson) flush() { n.rc.Flush() }
