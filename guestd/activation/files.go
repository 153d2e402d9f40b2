package activation

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// fileStamp identifies one version of a file: a file written again,
// replaced or changed in place gets another (inode, size, change time).
type fileStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

func stampOf(path string) (fileStamp, bool) {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return fileStamp{}, false
	}
	return fileStamp{uint64(st.Dev), uint64(st.Ino), st.Size, st.Mtim, st.Ctim}, true
}

// racyWindow: a file changed this recently may change again within the
// same timestamp tick without its stamp changing, so its check is not
// remembered yet (far above a timestamp tick, a jiffy: 1–10 ms).
var racyWindow = 100 * time.Millisecond

// checkedFiles remembers which materialised files were compared byte for
// byte with their content, and in which version: a file whose stamp is
// unchanged since is not read again (50 overrides cost 50 opens and reads
// per activation otherwise).
type checkedFiles struct {
	mu sync.Mutex
	m  map[string]fileStamp
}

// ok reports whether path is, unchanged, a file checked before.
func (c *checkedFiles) ok(path string) bool {
	c.mu.Lock()
	want, found := c.m[path]
	c.mu.Unlock()
	if !found {
		return false
	}
	got, exists := stampOf(path)
	return exists && got == want
}

// checked records that path holds its content now.
func (c *checkedFiles) checked(path string) {
	st, ok := stampOf(path)
	if !ok {
		return
	}
	now := time.Now()
	if now.Sub(time.Unix(st.mtime.Unix())) < racyWindow || now.Sub(time.Unix(st.ctime.Unix())) < racyWindow {
		return
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]fileStamp{}
	}
	c.m[path] = st
	c.mu.Unlock()
}

// forget drops path (removed).
func (c *checkedFiles) forget(path string) {
	c.mu.Lock()
	delete(c.m, path)
	c.mu.Unlock()
}
