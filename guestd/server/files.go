package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/vmpersona/vmpersona/protocol"
)

// files are the open file handles of one connection. A written file lives
// in a temporary file beside its target until it is committed; whatever is
// still open when the connection ends is closed and its temporary file
// removed, so an interrupted upload leaves the target as it was.
type files struct {
	mu   sync.Mutex
	next uint64
	open map[uint64]*openFile
}

type openFile struct {
	mu     sync.Mutex
	f      *os.File
	write  bool
	target string // the path a written file is renamed to
	req    protocol.FileOpen
	n      int64 // bytes written
	done   bool
}

func fileRefused(format string, a ...any) error {
	return &protocol.Error{Code: protocol.CodeBadRequest, Message: fmt.Sprintf(format, a...)}
}

// fileErr turns an I/O error into the answer the host maps to a problem.
func fileErr(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &protocol.Error{Code: protocol.CodeNotFound, Message: path + ": no such file or directory"}
	case errors.Is(err, fs.ErrPermission):
		return fileRefused("%s: permission denied", path)
	case errors.Is(err, syscall.EISDIR), errors.Is(err, syscall.ENOTDIR):
		return fileRefused("%s: %v", path, err)
	}
	return &protocol.Error{Code: protocol.CodeInternal, Message: err.Error()}
}

func (fs *files) add(o *openFile) uint64 {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.open == nil {
		fs.open = map[uint64]*openFile{}
	}
	fs.next++
	fs.open[fs.next] = o
	return fs.next
}

func (fs *files) get(h uint64) (*openFile, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	o, ok := fs.open[h]
	if !ok {
		return nil, fileRefused("no open file with handle %d", h)
	}
	return o, nil
}

func (fs *files) remove(h uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	delete(fs.open, h)
}

// closeAll abandons every open file (the connection ended).
func (fs *files) closeAll() {
	fs.mu.Lock()
	open := fs.open
	fs.open = nil
	fs.mu.Unlock()
	for _, o := range open {
		o.abandon()
	}
}

func (o *openFile) abandon() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return
	}
	o.done = true
	o.f.Close()
	if o.write {
		os.Remove(o.f.Name())
	}
}

// maxOpenFiles bounds the handles one connection holds.
const maxOpenFiles = 16

func (fs *files) count() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return len(fs.open)
}

func (c *conn) fileOpen(req protocol.FileOpen) (protocol.FileOpened, error) {
	p := req.Path
	if p == "" || !filepath.IsAbs(p) {
		return protocol.FileOpened{}, fileRefused("path %q is not absolute", p)
	}
	p = filepath.Clean(p)
	if c.files.count() >= maxOpenFiles {
		return protocol.FileOpened{}, &protocol.Error{Code: protocol.CodeBusy, Message: "too many open files on this connection"}
	}
	if !req.Write {
		f, err := os.Open(p)
		if err != nil {
			return protocol.FileOpened{}, fileErr(p, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return protocol.FileOpened{}, fileErr(p, err)
		}
		if !st.Mode().IsRegular() {
			f.Close()
			return protocol.FileOpened{}, fileRefused("%s is not a regular file (%s)", p, st.Mode().Type())
		}
		h := c.files.add(&openFile{f: f, req: req})
		return protocol.FileOpened{Handle: h, Size: st.Size(), Mode: uint32(st.Mode().Perm())}, nil
	}
	if req.Mode > 0o7777 {
		return protocol.FileOpened{}, fileRefused("mode %o is not a permission mode", req.Mode)
	}
	mode := fs.FileMode(0o644)
	uid, gid := -1, -1
	if st, err := os.Lstat(p); err == nil {
		if !st.Mode().IsRegular() {
			return protocol.FileOpened{}, fileRefused("%s exists and is not a regular file (%s)", p, st.Mode().Type())
		}
		mode = st.Mode().Perm() | st.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(sys.Uid), int(sys.Gid)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return protocol.FileOpened{}, fileErr(p, err)
	}
	if req.Mode != 0 {
		mode = fs.FileMode(req.Mode & 0o777)
		if req.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if req.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if req.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
	}
	if req.Owner != "" {
		u, err := lookupUser(req.Owner)
		if err != nil {
			return protocol.FileOpened{}, fileRefused("owner %q: %v", req.Owner, err)
		}
		uid = u
	}
	if req.Group != "" {
		g, err := lookupGroup(req.Group)
		if err != nil {
			return protocol.FileOpened{}, fileRefused("group %q: %v", req.Group, err)
		}
		gid = g
	}
	dir := filepath.Dir(p)
	if st, err := os.Stat(dir); err != nil {
		return protocol.FileOpened{}, fileErr(dir, err)
	} else if !st.IsDir() {
		return protocol.FileOpened{}, fileRefused("%s is not a directory", dir)
	}
	// The temporary name stays within NAME_MAX whatever the target's.
	base := filepath.Base(p)
	if len(base) > 64 {
		base = base[:64]
	}
	f, err := os.CreateTemp(dir, "."+base+".vmpersona-*")
	if err != nil {
		return protocol.FileOpened{}, fileErr(dir, err)
	}
	o := &openFile{f: f, write: true, target: p, req: req}
	// Mode and owner are the temporary file's before a byte is written, so
	// the target never shows other ones.
	if err := f.Chmod(mode); err != nil {
		o.abandon()
		return protocol.FileOpened{}, fileErr(p, err)
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			o.abandon()
			return protocol.FileOpened{}, fileRefused("%s: cannot set owner %d:%d: %v", p, uid, gid, err)
		}
		// chown clears set-id bits on some systems.
		if mode&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
			if err := f.Chmod(mode); err != nil {
				o.abandon()
				return protocol.FileOpened{}, fileErr(p, err)
			}
		}
	}
	return protocol.FileOpened{Handle: c.files.add(o), Mode: uint32(mode.Perm())}, nil
}

func lookupUser(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(u.Uid)
}

func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

func (c *conn) fileWrite(req protocol.FileWrite) (protocol.FileData, error) {
	o, err := c.files.get(req.Handle)
	if err != nil {
		return protocol.FileData{}, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.done:
		return protocol.FileData{}, fileRefused("handle %d is closed", req.Handle)
	case !o.write:
		return protocol.FileData{}, fileRefused("handle %d is open to read", req.Handle)
	case len(req.Data) > protocol.FileChunk:
		return protocol.FileData{}, fileRefused("chunk of %d bytes exceeds %d", len(req.Data), protocol.FileChunk)
	case req.Offset != o.n:
		return protocol.FileData{}, fileRefused("chunk at offset %d; %d bytes written so far", req.Offset, o.n)
	}
	n, err := o.f.Write(req.Data)
	o.n += int64(n)
	if err != nil {
		return protocol.FileData{}, fileErr(o.target, err)
	}
	return protocol.FileData{Size: o.n}, nil
}

func (c *conn) fileRead(req protocol.FileRead) (protocol.FileData, error) {
	o, err := c.files.get(req.Handle)
	if err != nil {
		return protocol.FileData{}, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done || o.write {
		return protocol.FileData{}, fileRefused("handle %d is not open to read", req.Handle)
	}
	max := req.Max
	if max <= 0 || max > protocol.FileChunk {
		max = protocol.FileChunk
	}
	buf := make([]byte, max)
	n, err := io.ReadFull(o.f, buf)
	o.n += int64(n)
	switch {
	case err == io.EOF, err == io.ErrUnexpectedEOF:
		return protocol.FileData{Data: buf[:n], EOF: true, Size: o.n}, nil
	case err != nil:
		return protocol.FileData{}, fileErr(o.req.Path, err)
	}
	return protocol.FileData{Data: buf[:n], Size: o.n}, nil
}

func (c *conn) fileClose(req protocol.FileClose) (protocol.FileData, error) {
	o, err := c.files.get(req.Handle)
	if err != nil {
		return protocol.FileData{}, err
	}
	c.files.remove(req.Handle)
	if !o.write || !req.Commit {
		o.abandon()
		return protocol.FileData{Size: o.n}, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return protocol.FileData{}, fileRefused("handle %d is closed", req.Handle)
	}
	o.done = true
	tmp := o.f.Name()
	fail := func(err error) (protocol.FileData, error) {
		o.f.Close()
		os.Remove(tmp)
		return protocol.FileData{}, fileErr(o.target, err)
	}
	if o.req.Size > 0 && o.req.Size != o.n {
		o.f.Close()
		os.Remove(tmp)
		return protocol.FileData{}, fileRefused("%d bytes written of %d announced", o.n, o.req.Size)
	}
	if err := o.f.Sync(); err != nil {
		return fail(err)
	}
	if err := o.f.Close(); err != nil {
		os.Remove(tmp)
		return protocol.FileData{}, fileErr(o.target, err)
	}
	// The target may have become something else since it was opened.
	if st, err := os.Lstat(o.target); err == nil && !st.Mode().IsRegular() {
		os.Remove(tmp)
		return protocol.FileData{}, fileRefused("%s exists and is not a regular file (%s)", o.target, st.Mode().Type())
	}
	if err := os.Rename(tmp, o.target); err != nil {
		os.Remove(tmp)
		return protocol.FileData{}, fileErr(o.target, err)
	}
	if d, err := os.Open(filepath.Dir(o.target)); err == nil {
		d.Sync()
		d.Close()
	}
	c.log.Info("file written", "path", o.target, "bytes", o.n, "actor", o.req.Actor)
	return protocol.FileData{Size: o.n}, nil
}

func decodeServe[T, R any](f func(T) (R, error)) func(context.Context, *protocol.Request) (any, error) {
	return func(_ context.Context, r *protocol.Request) (any, error) {
		var req T
		if err := r.Decode(&req); err != nil {
			return nil, err
		}
		return f(req)
	}
}

func (c *conn) fileHandlers(h map[protocol.Type]protocol.Handler) {
	h[protocol.TypeFileOpen] = protocol.Handler{Answer: protocol.TypeFileOpened, Serve: decodeServe(c.fileOpen)}
	h[protocol.TypeFileWrite] = protocol.Handler{Answer: protocol.TypeFileData, Serve: decodeServe(c.fileWrite)}
	h[protocol.TypeFileRead] = protocol.Handler{Answer: protocol.TypeFileData, Serve: decodeServe(c.fileRead)}
	h[protocol.TypeFileClose] = protocol.Handler{Answer: protocol.TypeFileData, Serve: decodeServe(c.fileClose)}
}
