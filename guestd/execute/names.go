package execute

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// fdPath is how a child executes the file it was handed as descriptor 3.
const fdPath = "/proc/self/fd/3"

// maxNames bounds the links a Names makes: command names come from the
// host, and past the bound a process is simply listed as "3".
const maxNames = 4096

// Names are links to /proc/self/fd/3, one per command name, through which
// a child executes the file it was handed. The kernel names a process after
// the last element of the path it executes: through /proc/self/fd/3 every
// command was listed as "3" by ps, top and pgrep; through NAMES/cat it is
// "cat", and it still runs the very file that was checked (the link leads
// to the descriptor, not to a path resolved again).
//
// A link is only as safe as its directory: Names keeps its own, emptied when
// opened, that must belong to this daemon's user and be writable by no one
// else, in a parent that no one else can write to either.
type Names struct {
	dir string
	// public: every user can reach the links (each directory on the way
	// is searchable by others), so commands run as another user use them
	// too.
	public bool
	made   sync.Map // command name → its link
	count  atomic.Int32
}

// OpenNames empties or makes dir (mode 0755) for the links.
func OpenNames(dir string) (*Names, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := checkPrivate(filepath.Dir(dir)); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("command names: %w", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("command names: %w", err)
	}
	if err := checkPrivate(dir); err != nil {
		return nil, err
	}
	return &Names{dir: dir, public: searchable(dir)}, nil
}

// checkPrivate refuses a directory that another user owns or may write to.
func checkPrivate(dir string) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return fmt.Errorf("command names: %w", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		return fmt.Errorf("command names: %s must be a directory of uid %d that no one else can write to", dir, os.Geteuid())
	}
	return nil
}

// searchable reports whether every directory down to dir may be searched
// by any user.
func searchable(dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" {
			return true
		}
	}
}

// Path returns the link through which a process of command, run as cred
// (nil: as the daemon), is listed under command's last path element; "" when
// it has none (no Names, a name no link can have, the bound reached, a
// directory the user cannot reach).
func (n *Names) Path(command string, cred *syscall.Credential) string {
	if n == nil || (cred != nil && cred.Uid != uint32(os.Geteuid()) && !n.public) {
		return ""
	}
	name := command[strings.LastIndexByte(command, '/')+1:]
	if name == "" || name == "." || name == ".." || len(name) > 255 || strings.IndexByte(name, 0) >= 0 {
		return ""
	}
	if p, ok := n.made.Load(name); ok {
		return p.(string)
	}
	if n.count.Add(1) > maxNames {
		n.count.Add(-1)
		return ""
	}
	p := filepath.Join(n.dir, name)
	if err := os.Symlink(fdPath, p); err != nil {
		// Made meanwhile for another command of the same name.
		if t, rerr := os.Readlink(p); !errors.Is(err, fs.ErrExist) || rerr != nil || t != fdPath {
			n.count.Add(-1)
			return ""
		}
	}
	n.made.Store(name, p)
	return p
}
