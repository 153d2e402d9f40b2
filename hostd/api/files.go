package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/hostd/agents"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// DefaultMaxFileBytes bounds a file pushed into or pulled from a guest
// unless the daemon is told otherwise (--max-file-size).
const DefaultMaxFileBytes = 64 << 20

// filePath reads and checks the path parameter of the files routes.
func filePath(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	switch {
	case p == "":
		return "", invalid("path", "required: the absolute path of the file in the guest")
	case !strings.HasPrefix(p, "/"):
		return "", invalid("path", "%q is not absolute", p)
	case strings.ContainsRune(p, 0):
		return "", invalid("path", "holds a NUL byte")
	case len(p) > 4096:
		return "", invalid("path", "longer than 4096 bytes")
	case p != "/" && strings.HasSuffix(p, "/"), path.Clean(p) == "/":
		return "", invalid("path", "%q names a directory, not a file", p)
	}
	return path.Clean(p), nil
}

// fileProblem explains a guest's refusal of a transfer.
func fileProblem(inst, p string, err error) error {
	var pe *protocol.Error
	switch {
	case errors.Is(err, agents.ErrFilesUnsupported):
		return problem(http.StatusNotImplemented, "files-unsupported", "The guest cannot transfer files",
			"the guest agent on "+inst+" predates file transfer; upgrade vmpersona-guestd", "instance_id", inst)
	case errors.As(err, &pe) && pe.Code == protocol.CodeNotFound:
		return problem(http.StatusNotFound, "file-not-found", "No such file in the guest", pe.Message, "field", "path", "instance_id", inst)
	case errors.As(err, &pe) && pe.Code == protocol.CodeBadRequest:
		return problem(http.StatusUnprocessableEntity, "file-refused", "The guest refused the file", pe.Message, "field", "path", "instance_id", inst)
	}
	return err
}

// tooLarge is the answer to a body or file over the bound.
func (s *Server) fileTooLarge(what string) error {
	return problem(http.StatusRequestEntityTooLarge, "file-too-large", "File too large",
		fmt.Sprintf("%s exceeds %d bytes (vmpersona-hostd --max-file-size)", what, s.cfg.MaxFileBytes))
}

// pushFile writes the request body to a file of the guest, atomically.
func (s *Server) pushFile(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	p, err := filePath(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	open := protocol.FileOpen{Path: p, Owner: q.Get("owner"), Group: q.Get("group"), Actor: identityOf(r).User}
	if m := q.Get("mode"); m != "" {
		v, err := strconv.ParseUint(m, 8, 32)
		if err != nil || v > 0o7777 {
			return invalid("mode", "%q is not an octal permission mode (0000 to 7777)", m)
		}
		open.Mode = uint32(v)
		if v == 0 {
			// 0 means "keep" on the wire; a file no one may read is asked
			// for rarely enough to refuse rather than surprise.
			return invalid("mode", "0000 is not accepted; name at least one permission")
		}
	}
	for _, f := range []struct{ name, v string }{{"owner", open.Owner}, {"group", open.Group}} {
		if len(f.v) > 256 || strings.ContainsAny(f.v, ":/\x00") {
			return invalid(f.name, "%q is not a user or group name or number", f.v)
		}
	}
	if r.ContentLength > s.cfg.MaxFileBytes {
		return s.fileTooLarge(fmt.Sprintf("the body's %d bytes", r.ContentLength))
	}
	if r.ContentLength > 0 {
		open.Size = r.ContentLength
	}
	inst, err := s.target(ps.ByName("id"))
	if err != nil {
		return err
	}
	n, err := s.cfg.Agents.PushFile(r.Context(), inst, open, r.Body)
	result := "ok"
	if err != nil {
		result = "failed"
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		result = "too large"
	}
	if aerr := s.appendAudit(auditFile(protocol.AuditFilePushed, inst, identityOf(r).User, p, n, result, fileDetail(open))); aerr != nil && err == nil {
		return aerr
	}
	if errors.As(err, &mbe) {
		return s.fileTooLarge("the body")
	}
	if err != nil {
		return fileProblem(inst, p, err)
	}
	writeJSON(w, http.StatusOK, apitypes.FileResult{Instance: inst, Path: p, Size: n})
	return nil
}

func fileDetail(o protocol.FileOpen) string {
	var parts []string
	if o.Mode != 0 {
		parts = append(parts, fmt.Sprintf("mode %04o", o.Mode))
	}
	if o.Owner != "" {
		parts = append(parts, "owner "+o.Owner)
	}
	if o.Group != "" {
		parts = append(parts, "group "+o.Group)
	}
	return strings.Join(parts, ", ")
}

// auditFile is the host's event of a transfer: the path and size in the
// detail, with the mode and owner asked for.
func auditFile(typ, inst, actor, p string, n int64, result, extra string) store.AuditEvent {
	ev := auditHost(typ, inst, actor, fmt.Sprintf("path %s; %d bytes", strconv.Quote(p), n))
	if extra != "" {
		ev.Detail += "; " + extra
	}
	ev.Result = result
	return ev
}

// pullFile answers the bytes of a file of the guest.
func (s *Server) pullFile(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	p, err := filePath(r)
	if err != nil {
		return err
	}
	inst, err := s.target(ps.ByName("id"))
	if err != nil {
		return err
	}
	actor := identityOf(r).User
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	f, err := s.cfg.Agents.OpenFile(ctx, inst, p, actor)
	if err != nil {
		return fileProblem(inst, p, err)
	}
	defer f.Close()
	if f.Size > s.cfg.MaxFileBytes {
		s.appendAudit(auditFile(protocol.AuditFilePulled, inst, actor, p, 0, "too large", ""))
		return s.fileTooLarge(fmt.Sprintf("the file's %d bytes", f.Size))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(f.Size, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	n, err := io.Copy(w, f)
	result := "ok"
	if err != nil {
		// The status is sent: the client sees a body shorter than its
		// Content-Length, and the connection is closed.
		result = "failed"
		s.cfg.Logger.Warn("file pull cut", "instance", inst, "path", p, "bytes", n, "err", err)
	}
	s.appendAudit(auditFile(protocol.AuditFilePulled, inst, actor, p, n, result, ""))
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	return nil
}
