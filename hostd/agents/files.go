package agents

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/protocol"
)

// ErrFilesUnsupported: the guest agent predates file transfer (it does not
// announce protocol.CapFiles).
var ErrFilesUnsupported = errdefs.New(errdefs.ErrNotImplemented, "files-unsupported", "the guest agent cannot transfer files; upgrade vmpersona-guestd")

// fileCall makes one call of a transfer, within CallTimeout.
func fileCall[T any](ctx context.Context, m *Manager, a *agent, s *session, t protocol.Type, req any) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	v, err := call[T](ctx, s.cl, t, req, nil)
	if err != nil {
		return v, a.callErr(s, err)
	}
	return v, nil
}

func (m *Manager) fileSession(instance string) (*agent, *session, error) {
	a, s, err := m.connected(instance)
	if err != nil {
		return nil, nil, err
	}
	if !slices.Contains(s.hello.Capabilities, protocol.CapFiles) {
		return nil, nil, ErrFilesUnsupported
	}
	return a, s, nil
}

// abandon closes a handle without committing it, even when ctx has ended.
func (m *Manager) abandonFile(ctx context.Context, a *agent, s *session, h uint64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	fileCall[protocol.FileData](ctx, m, a, s, protocol.TypeFileClose, protocol.FileClose{Handle: h})
}

// PushFile writes what r holds to open.Path in the instance's guest, in
// chunks of protocol.FileChunk bytes. The guest writes a temporary file
// beside the target and renames it over the target only once everything
// arrived; when r fails (a body over its bound, a client gone), the
// temporary file is removed and the target is untouched. Each chunk's call
// has CallTimeout. It answers the bytes written.
//
// Errors: ErrUnknownInstance, ErrNotConnected, ErrFilesUnsupported, r's
// error, or a *protocol.Error (bad_request: a relative path, not a regular
// file, an unknown owner; not_found: no such directory).
func (m *Manager) PushFile(ctx context.Context, instance string, open protocol.FileOpen, r io.Reader) (int64, error) {
	a, s, err := m.fileSession(instance)
	if err != nil {
		return 0, err
	}
	open.Write = true
	opened, err := fileCall[protocol.FileOpened](ctx, m, a, s, protocol.TypeFileOpen, open)
	if err != nil {
		return 0, err
	}
	var n int64
	buf := make([]byte, protocol.FileChunk)
	for {
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			if _, err := fileCall[protocol.FileData](ctx, m, a, s, protocol.TypeFileWrite, protocol.FileWrite{Handle: opened.Handle, Offset: n, Data: buf[:k]}); err != nil {
				m.abandonFile(ctx, a, s, opened.Handle)
				return n, err
			}
			n += int64(k)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			m.abandonFile(ctx, a, s, opened.Handle)
			return n, rerr
		}
	}
	if _, err := fileCall[protocol.FileData](ctx, m, a, s, protocol.TypeFileClose, protocol.FileClose{Handle: opened.Handle, Commit: true}); err != nil {
		return n, err
	}
	return n, nil
}

// FileReader reads a file of a guest, chunk by chunk; Close it.
type FileReader struct {
	Size int64  // as the guest announced it when opened
	Mode uint32 // permission bits
	m    *Manager
	a    *agent
	s    *session
	ctx  context.Context
	h    uint64
	buf  []byte
	n    int64
	eof  bool
	done bool
}

// OpenFile opens path in the instance's guest to read. ctx bounds every
// later Read.
//
// Errors: as PushFile's; not_found when the file does not exist,
// bad_request when it is not a regular file.
func (m *Manager) OpenFile(ctx context.Context, instance, path, actor string) (*FileReader, error) {
	a, s, err := m.fileSession(instance)
	if err != nil {
		return nil, err
	}
	opened, err := fileCall[protocol.FileOpened](ctx, m, a, s, protocol.TypeFileOpen, protocol.FileOpen{Path: path, Actor: actor})
	if err != nil {
		return nil, err
	}
	if opened.Size < 0 {
		m.abandonFile(ctx, a, s, opened.Handle)
		return nil, fmt.Errorf("%w: guest announced size %d", errdefs.ErrUpstream, opened.Size)
	}
	return &FileReader{Size: opened.Size, Mode: opened.Mode, m: m, a: a, s: s, ctx: ctx, h: opened.Handle}, nil
}

// errFileGrew: the guest sent more than it announced (the file grew while
// it was read, or the guest misbehaves); the copy is not the file.
var errFileGrew = errdefs.New(errdefs.ErrUpstream, "file-changed", "the file changed while it was read")

// Read reads the next bytes of the file.
func (f *FileReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.eof {
			if f.n != f.Size {
				return 0, errFileGrew
			}
			return 0, io.EOF
		}
		d, err := fileCall[protocol.FileData](f.ctx, f.m, f.a, f.s, protocol.TypeFileRead, protocol.FileRead{Handle: f.h})
		if err != nil {
			return 0, err
		}
		if len(d.Data) > protocol.FileChunk {
			return 0, fmt.Errorf("%w: chunk of %d bytes", errdefs.ErrUpstream, len(d.Data))
		}
		f.n += int64(len(d.Data))
		if f.n > f.Size {
			return 0, errFileGrew
		}
		f.buf, f.eof = d.Data, d.EOF
		if len(d.Data) == 0 && !d.EOF {
			return 0, errors.New("guest sent an empty chunk")
		}
	}
	k := copy(p, f.buf)
	f.buf = f.buf[k:]
	return k, nil
}

// Close releases the guest's handle.
func (f *FileReader) Close() error {
	if f.done {
		return nil
	}
	f.done = true
	f.m.abandonFile(f.ctx, f.a, f.s, f.h)
	return nil
}
