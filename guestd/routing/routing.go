// Package routing decides what happens to a command the host asks the guest
// to run under the active persona: denied (restricted, or outside the
// allowlist), overridden (an absolute path or an inline script runs instead),
// run as it is (default), or refused because it does not exist or cannot be
// executed.
//
// A restriction holds however the command is named. The request's command is
// resolved the way the guest resolves it, through the guest's own PATH
// (never a PATH from the request), or relative to the request's working
// directory when it contains a slash. It is then compared with the table by
// basename, by the path found, by its real path when that path is a symbolic
// link, and by device and inode, which catches hard links, bind mounts and
// the /bin versus /usr/bin aliases of a merged /usr.
//
// Multi-call binaries (busybox: /bin/rm is a symbolic link to
// /bin/busybox, which picks its applet from argv[0]) are recognised when a
// table is built (a known multi-call binary, or a file many names in PATH
// lead to): such an entry is matched by name, by the linked path and by
// every link on the way to it, never by inode, so restricting rm does not
// restrict every applet. Any other link (python3 -> python3.11, Debian's
// alternatives) restricts the file it leads to.
//
// Route, the decision, does not allocate in the common case (a command found
// in PATH that is not a symbolic link); see BenchmarkRoute.
package routing

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Kind is the outcome of a routing decision.
type Kind uint8

const (
	// Default: run the command itself.
	Default Kind = iota
	// Override: run the persona's override instead.
	Override
	// Denied: the persona forbids the command; nothing is started.
	Denied
	// NotFound: the command does not exist in the guest.
	NotFound
	// NotExecutable: the command exists but cannot be executed.
	NotExecutable
)

func (k Kind) String() string {
	switch k {
	case Default:
		return "default"
	case Override:
		return "override"
	case Denied:
		return "denied"
	case NotFound:
		return "not_found"
	case NotExecutable:
		return "not_executable"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Reasons a command is denied.
const (
	ReasonRestricted = "restricted in the current persona"
	ReasonNotAllowed = "not in the current persona's allowed commands"
)

// ErrInvalidEntry reports a restricted, allowed or override entry the table
// cannot use (a relative path, an empty name).
var ErrInvalidEntry = errors.New("routing: invalid entry")

// DefaultPath is the PATH used when the guest's own environment has none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// OverrideTarget is what runs instead of an overridden command.
type OverrideTarget struct {
	// Command is the override's key in the persona.
	Command string
	// Path is the absolute path executed (an inline script is materialised
	// into a file by the caller before the table is built).
	Path string
	// Inline reports that Path is a materialised inline script.
	Inline bool
}

// Spec describes a table to build.
type Spec struct {
	// Persona is the active persona's name, empty for none.
	Persona    string
	Restricted []string
	// Allowed, when non-empty, turns the table into an allowlist.
	Allowed []string
	// Overrides maps a command (name or absolute path) to its target.
	Overrides map[string]OverrideTarget
	// PathEnv is the PATH commands are resolved through (DefaultPath when
	// empty). Relative entries are ignored: they would depend on the
	// request's working directory.
	PathEnv string
}

type fileID struct{ dev, ino uint64 }

// matchSet is one way of naming a set of files.
type matchSet struct {
	names map[string]struct{}
	paths map[string]struct{}
	ids   map[fileID]struct{}
	// files are the real paths of the files matched by inode (for the
	// kernel's enforcement).
	files []string
}

func newMatchSet() matchSet {
	return matchSet{names: map[string]struct{}{}, paths: map[string]struct{}{}, ids: map[fileID]struct{}{}}
}

// Table is an immutable routing table. It is safe for concurrent use.
type Table struct {
	persona    string
	dirs       []string
	restricted matchSet
	allowlist  bool
	allowed    matchSet
	ovNames    map[string]*OverrideTarget
	ovPaths    map[string]*OverrideTarget
	ovIDs      map[fileID]*OverrideTarget
	maxDir     int // length of the longest PATH directory

	// listing holds, while Build runs, the names in each PATH directory;
	// linkCounts, computed when first needed, how many links in PATH lead
	// to each file.
	listing    *dirListing
	linkCounts map[fileID]int
}

// dirListing records, for each bare name a Build resolves, which PATH
// directories hold it: each directory is read once (raw getdents, no
// allocation per entry), and a name is stat'ed only where it exists (a
// persona's restricted names are mostly absent from most PATH directories).
type dirListing struct {
	in map[string]uint64 // name -> bit i set when PATH directory i holds it
	// unlisted has bit i set when directory i could not be read (it may
	// still be searchable): names there are stat'ed as before. Directories
	// beyond the 64th are always stat'ed.
	unlisted uint64
}

func newDirListing(dirs []string, names []string) *dirListing {
	l := &dirListing{in: make(map[string]uint64, len(names))}
	for _, n := range names {
		l.in[n] = 0
	}
	if len(names) == 0 {
		return l
	}
	buf := make([]byte, 32<<10)
	seen := map[fileID]int{}
	for i, d := range dirs {
		if i >= 64 {
			break
		}
		bit := uint64(1) << i
		// The same directory again (/bin -> usr/bin of a merged /usr):
		// copy what the first reading found.
		var st unix.Stat_t
		if unix.Stat(d, &st) == nil {
			id := fileID{uint64(st.Dev), uint64(st.Ino)}
			if j, ok := seen[id]; ok {
				jb := uint64(1) << j
				if l.unlisted&jb != 0 {
					l.unlisted |= bit
				}
				for n, m := range l.in {
					if m&jb != 0 {
						l.in[n] = m | bit
					}
				}
				continue
			}
			seen[id] = i
			if names, ok := listings.get(d, &st); ok {
				for n, m := range l.in {
					if names.has(n) {
						l.in[n] = m | bit
					}
				}
				continue
			}
			if names, ok := readNames(d, buf); ok {
				listings.put(d, &st, names)
				for n, m := range l.in {
					if names.has(n) {
						l.in[n] = m | bit
					}
				}
				continue
			}
		}
		if !l.scan(d, bit, buf) {
			l.unlisted |= bit
		}
	}
	return l
}

// dirNames are the sorted names of one directory.
type dirNames []string

func (d dirNames) has(name string) bool {
	_, found := slices.BinarySearch(d, name)
	return found
}

// readNames reads every name of directory d (raw getdents: the names share
// one string).
func readNames(d string, buf []byte) (dirNames, bool) {
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer unix.Close(fd)
	var blob []byte
	var ends []int
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return nil, false
		}
		if n <= 0 {
			break
		}
		for off := 0; off+19 < n; {
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			if reclen <= 19 || off+reclen > n {
				return nil, false
			}
			name := buf[off+19 : off+reclen]
			if z := bytesIndexZero(name); z >= 0 {
				name = name[:z]
			}
			blob = append(blob, name...)
			ends = append(ends, len(blob))
			off += reclen
		}
	}
	all := string(blob)
	names := make(dirNames, len(ends))
	start := 0
	for i, e := range ends {
		names[i] = all[start:e]
		start = e
	}
	slices.Sort(names)
	return names, true
}

// listings caches the names of PATH directories between table builds: a
// large persona's build otherwise reads /usr/bin and its neighbours on
// every activation. An entry is used while the directory's device, inode,
// size and change and modification times are those it was read with (an
// entry added or removed changes them). A directory changed less than
// racyWindow before it was read is not cached: a second change within the
// same timestamp tick would not show.
var listings = listingCache{m: map[string]cachedListing{}}

// maxCachedDirs bounds the cache (a persona's PATH may name any directory).
const maxCachedDirs = 64

// racyWindow is far above a file system timestamp tick (a jiffy: 1–10 ms);
// a variable for tests.
var racyWindow = 100 * time.Millisecond

type dirStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

func stampOf(st *unix.Stat_t) dirStamp {
	return dirStamp{uint64(st.Dev), uint64(st.Ino), st.Size, st.Mtim, st.Ctim}
}

type cachedListing struct {
	stamp dirStamp
	names dirNames
}

type listingCache struct {
	mu sync.Mutex
	m  map[string]cachedListing
}

// get returns the cached names of d when d (stat st) is unchanged.
func (c *listingCache) get(d string, st *unix.Stat_t) (dirNames, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[d]
	if !ok || e.stamp != stampOf(st) {
		return nil, false
	}
	return e.names, true
}

// put caches the names of d, read after st was taken.
func (c *listingCache) put(d string, st *unix.Stat_t, names dirNames) {
	now := time.Now()
	if now.Sub(time.Unix(st.Mtim.Unix())) < racyWindow || now.Sub(time.Unix(st.Ctim.Unix())) < racyWindow {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxCachedDirs {
		clear(c.m)
	}
	c.m[d] = cachedListing{stampOf(st), names}
}

// scan marks the wanted names directory d holds; false when d could not be
// read (a directory that does not exist holds nothing).
func (l *dirListing) scan(d string, bit uint64, buf []byte) bool {
	fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err == unix.ENOENT || err == unix.ENOTDIR
	}
	defer unix.Close(fd)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			return false
		}
		if n <= 0 {
			return true
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for off := 0; off+19 < n; {
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			if reclen <= 19 || off+reclen > n {
				return false
			}
			name := buf[off+19 : off+reclen]
			if z := bytesIndexZero(name); z >= 0 {
				name = name[:z]
			}
			if m, ok := l.in[string(name)]; ok {
				l.in[string(name)] = m | bit
			}
			off += reclen
		}
	}
}

func bytesIndexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// has reports whether PATH directory i may hold name.
func (l *dirListing) has(i int, name string) bool {
	if i >= 64 {
		return true
	}
	bit := uint64(1) << i
	if l.unlisted&bit != 0 {
		return true
	}
	m, ok := l.in[name]
	return !ok || m&bit != 0
}

// Decision is the outcome of Route.
type Decision struct {
	Kind Kind
	// Override is the target when Kind is Override.
	Override *OverrideTarget
	// Reason explains a denial (one of the Reason constants).
	Reason string
	// where is the index in the table's PATH where the command was found,
	// or -1 when the command was named by a path.
	where int
	// fd+1 of the file the decision was made on (Default) or of the
	// override's target (Override), opened O_PATH; 0 for none.
	fd int
}

// FD returns the opened file the decision was made on, which is the file
// to execute (through /proc/self/fd, never by its name again), or -1 when
// there is none (a denial, a command not found, an override target that
// cannot be opened). The descriptor belongs to the Decision: Close it.
func (d *Decision) FD() int { return d.fd - 1 }

// File hands the opened file over as an *os.File (nil when there is none);
// the Decision no longer holds it, and the caller closes it.
func (d *Decision) File(name string) *os.File {
	if d.fd <= 0 {
		return nil
	}
	f := os.NewFile(uintptr(d.fd-1), name)
	d.fd = 0
	return f
}

// Close releases the opened file, if any. It is safe to call twice.
func (d *Decision) Close() {
	if d.fd > 0 {
		unix.Close(d.fd - 1)
		d.fd = 0
	}
}

// Empty returns the table of a guest with no persona: everything runs as it is.
func Empty(pathEnv string) *Table {
	t, _ := Build(Spec{PathEnv: pathEnv})
	return t
}

// Build resolves a persona's entries into a table. Entries are resolved now,
// through spec.PathEnv: a restricted name is matched by name and by every
// file of that name in PATH.
func Build(spec Spec) (*Table, error) {
	t := &Table{
		persona:    spec.Persona,
		dirs:       splitPath(spec.PathEnv),
		restricted: newMatchSet(),
		allowed:    newMatchSet(),
		ovNames:    map[string]*OverrideTarget{},
		ovPaths:    map[string]*OverrideTarget{},
		ovIDs:      map[fileID]*OverrideTarget{},
	}
	var names []string
	for _, list := range [][]string{spec.Restricted, spec.Allowed} {
		for _, e := range list {
			if e = strings.TrimSpace(e); e != "" && !strings.ContainsRune(e, '/') {
				names = append(names, e)
			} else if t.pathDir(e) >= 0 {
				// An absolute entry in a PATH directory: the listing
				// says whether it exists.
				names = append(names, filepath.Base(e))
			}
		}
	}
	for k := range spec.Overrides {
		if k = strings.TrimSpace(k); k != "" && !strings.ContainsRune(k, '/') {
			names = append(names, k)
		}
	}
	for _, d := range t.dirs {
		t.maxDir = max(t.maxDir, len(d))
	}
	t.listing = newDirListing(t.dirs, names)
	defer func() { t.listing, t.linkCounts = nil, nil }()
	for _, e := range spec.Restricted {
		if err := t.add(e, func(kind int, key any) { put(&t.restricted, kind, key) }, true); err != nil {
			return nil, fmt.Errorf("restricted_commands: %w", err)
		}
	}
	for _, e := range spec.Allowed {
		t.allowlist = true
		if err := t.add(e, func(kind int, key any) { put(&t.allowed, kind, key) }, false); err != nil {
			return nil, fmt.Errorf("allowed_commands: %w", err)
		}
	}
	for key, target := range spec.Overrides {
		if !filepath.IsAbs(target.Path) {
			return nil, fmt.Errorf("command_overrides[%q]: %w: target %q is not an absolute path", key, ErrInvalidEntry, target.Path)
		}
		tg := target
		tg.Command = key
		err := t.add(key, func(kind int, k any) {
			switch kind {
			case keyName:
				t.ovNames[k.(string)] = &tg
			case keyPath:
				t.ovPaths[k.(string)] = &tg
			case keyID:
				t.ovIDs[k.(fileID)] = &tg
			}
		}, true)
		if err != nil {
			return nil, fmt.Errorf("command_overrides: %w", err)
		}
	}
	return t, nil
}

const (
	keyName = iota
	keyPath
	keyID
	keyFile
)

func put(s *matchSet, kind int, key any) {
	switch kind {
	case keyFile:
		s.files = append(s.files, key.(string))
	case keyName:
		s.names[key.(string)] = struct{}{}
	case keyPath:
		s.paths[key.(string)] = struct{}{}
	case keyID:
		s.ids[key.(fileID)] = struct{}{}
	}
}

// add resolves one entry and reports its keys. byName says whether a bare
// name matches by itself (restrictions, overrides) or only grants what it
// resolves to (allowlist: a file merely named like an allowed command is not
// allowed).
func (t *Table) add(entry string, emit func(kind int, key any), byName bool) error {
	entry = strings.TrimSpace(entry)
	if entry == "" {
		return fmt.Errorf("%w: empty command", ErrInvalidEntry)
	}
	if strings.ContainsRune(entry, '/') {
		if !filepath.IsAbs(entry) {
			return fmt.Errorf("%w: %q is neither a command name nor an absolute path", ErrInvalidEntry, entry)
		}
		p := filepath.Clean(entry)
		emit(keyPath, p)
		if i := t.pathDir(p); i >= 0 && !t.listing.has(i, filepath.Base(p)) {
			return nil // no such file: nothing more to resolve
		}
		if multi := t.addFile(p, filepath.Base(p), emit); multi && byName {
			emit(keyName, filepath.Base(p))
		}
		return nil
	}
	if byName {
		emit(keyName, entry)
	}
	for i, d := range t.dirs {
		if !t.listing.has(i, entry) {
			continue
		}
		p := d + "/" + entry
		if _, err := os.Stat(p); err == nil {
			emit(keyPath, p)
			t.addFile(p, entry, emit)
		}
	}
	return nil
}

// addFile emits the real path and inode of an existing file p named name.
// It reports whether p is an alias of a multi-call binary, in which case
// only the path and the name identify it: the binary picks what it does
// from the name it is called by, so its file cannot be restricted without
// restricting every command it provides. Any other link is an alias of one
// program (python3 -> python3.11, awk -> /etc/alternatives/awk -> mawk):
// restricting the name restricts the file.
func (t *Table) addFile(p, name string, emit func(kind int, key any)) (multi bool) {
	// One stat first: most absolute entries name no file, and resolving
	// the links of every component of a missing path costs one lstat each.
	// The stat (followed) is also the real file's device and inode.
	var st unix.Stat_t
	if unix.Stat(p, &st) != nil {
		return false
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return false
	}
	if filepath.Base(real) != name && t.multiCall(real, &st) {
		return true
	}
	emit(keyPath, real)
	emit(keyID, fileID{uint64(st.Dev), uint64(st.Ino)})
	emit(keyFile, real)
	return false
}

// Known multi-call binaries, by the name of their file.
var multiCallNames = map[string]bool{"busybox": true, "toybox": true, "toolbox": true, "coreutils": true}

// multiCallLinks is how many names in PATH must lead to one file for it to
// count as a multi-call binary. Debian's alternatives give a program a
// handful (vim.basic: vi, vim, view, ex, rvim, rview, vimdiff, editor);
// busybox and toybox give hundreds.
const multiCallLinks = 24

// multiCall reports whether the file real (stat st) is a multi-call binary:
// a known one, or one that many names in PATH lead to (as links or as hard
// links).
func (t *Table) multiCall(real string, st *unix.Stat_t) bool {
	if multiCallNames[filepath.Base(real)] {
		return true
	}
	if st.Nlink >= multiCallLinks {
		return true
	}
	if t.linkCounts == nil {
		t.linkCounts = countLinks(t.dirs)
	}
	return t.linkCounts[fileID{uint64(st.Dev), uint64(st.Ino)}] >= multiCallLinks
}

// countLinks counts, for each file, the symbolic links in dirs that lead to
// it.
func countLinks(dirs []string) map[fileID]int {
	counts := map[fileID]int{}
	seen := map[string]bool{}
	for _, d := range dirs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		ents, err := os.ReadDir(real)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.Type()&os.ModeSymlink == 0 {
				continue
			}
			var st unix.Stat_t
			if unix.Stat(real+"/"+e.Name(), &st) == nil {
				counts[fileID{uint64(st.Dev), uint64(st.Ino)}]++
			}
		}
	}
	return counts
}

// pathDir returns the index in the table's PATH of the directory of the
// absolute path p, -1 when it is not one of them.
func (t *Table) pathDir(p string) int {
	if !filepath.IsAbs(p) {
		return -1
	}
	return slices.Index(t.dirs, filepath.Dir(filepath.Clean(p)))
}

func splitPath(pathEnv string) []string {
	if pathEnv == "" {
		pathEnv = DefaultPath
	}
	var dirs []string
	for _, d := range filepath.SplitList(pathEnv) {
		if filepath.IsAbs(d) {
			dirs = append(dirs, filepath.Clean(d))
		}
	}
	return dirs
}

// Persona returns the name of the persona the table belongs to, "" for none.
func (t *Table) Persona() string { return t.persona }

// RestrictedFiles returns the real paths of the files restricted by what
// they are (not multi-call binaries, restricted by name only).
func (t *Table) RestrictedFiles() []string { return slices.Clone(t.restricted.files) }

// AllowedFiles returns the real paths of the allowed files.
func (t *Table) AllowedFiles() []string { return slices.Clone(t.allowed.files) }

// Allowlist reports whether the table only runs allowed commands.
func (t *Table) Allowlist() bool { return t.allowlist }

// pathMax bounds the paths Route builds on its stack.
const pathMax = 4096

func basename(s string) string {
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Route decides what happens to command under this table. cwd is the
// request's working directory (absolute; "" means "/"), against which a
// command such as ./rm is resolved.
//
// The decision is made on an opened file: the command is opened once
// (O_PATH, the kernel resolving every "..", symbolic link and mount on the
// way), the opened file is compared with the table, and the same file is
// what runs (Decision.FD). Nothing is resolved again by name after the
// decision, so a path rewritten as text ("x/.." with x a symbolic link) or
// a link flipped meanwhile cannot run another file. Close the Decision.
func (t *Table) Route(command, cwd string) Decision {
	if command == "" {
		return Decision{Kind: NotFound}
	}
	base := basename(command)
	if _, ok := t.restricted.names[base]; ok {
		return Decision{Kind: Denied, Reason: ReasonRestricted}
	}

	// A small buffer keeps Route's frame small (a 4 KiB one made every
	// handler goroutine grow its stack); longer paths take a heap buffer.
	var small [256]byte
	buf := small[:]
	if need := len(command) + max(len(cwd), t.maxDir) + 2; need > len(small) {
		buf = make([]byte, min(need, pathMax+1))
	}
	var st unix.Stat_t
	fd, p, where, executable, link := t.resolve(buf, command, cwd, &st)
	found := fd >= 0
	d := Decision{where: where}
	if found {
		d.fd = fd + 1
	}
	deny := func(reason string) Decision {
		d.Close()
		return Decision{Kind: Denied, Reason: reason}
	}
	var id fileID
	var real string
	if found {
		id = fileID{uint64(st.Dev), uint64(st.Ino)}
		if _, ok := t.restricted.ids[id]; ok {
			return deny(ReasonRestricted)
		}
		if _, ok := t.restricted.paths[string(p)]; ok {
			return deny(ReasonRestricted)
		}
		if link {
			// Rare: named through a symbolic link. The file opened
			// decides (its path as the kernel knows it), and so does every
			// link on the way: a link to a restricted applet of a
			// multi-call binary is refused, not run as an unknown applet.
			real = fdPath(fd)
			if _, ok := t.restricted.paths[real]; ok {
				return deny(ReasonRestricted)
			}
			if _, ok := t.restricted.names[basename(real)]; ok {
				return deny(ReasonRestricted)
			}
			if t.linkRestricted(string(p)) {
				return deny(ReasonRestricted)
			}
		}
	}

	override := func(o *OverrideTarget) Decision {
		d.Close()
		od := Decision{Kind: Override, Override: o, where: -1}
		if ofd, err := openPath(o.Path); err == nil {
			od.fd = ofd + 1
		}
		return od
	}
	if o := t.ovNames[base]; o != nil {
		return override(o)
	}
	if found {
		if o := t.ovIDs[id]; o != nil {
			return override(o)
		}
		if o := t.ovPaths[string(p)]; o != nil {
			return override(o)
		}
		if real != "" {
			if o := t.ovPaths[real]; o != nil {
				return override(o)
			}
		}
	}

	if t.allowlist {
		allowed := false
		if found {
			_, a := t.allowed.ids[id]
			_, b := t.allowed.paths[string(p)]
			_, c := t.allowed.paths[real]
			allowed = a || b || (real != "" && c)
		}
		if !allowed {
			return deny(ReasonNotAllowed)
		}
	}
	if !found {
		return Decision{Kind: NotFound}
	}
	if !executable {
		d.Close()
		return Decision{Kind: NotExecutable, where: where}
	}
	d.Kind = Default
	return d
}

// linkRestricted follows the chain of symbolic links starting at p and
// reports whether a link on the way names a restricted command or path.
// It only ever adds denials; what runs is the file opened.
func (t *Table) linkRestricted(p string) bool {
	for range 40 {
		target, err := os.Readlink(p)
		if err != nil {
			return false
		}
		if !strings.HasPrefix(target, "/") {
			if i := strings.LastIndexByte(p, '/'); i >= 0 {
				target = p[:i+1] + target
			}
		}
		if _, ok := t.restricted.names[basename(target)]; ok {
			return true
		}
		if _, ok := t.restricted.paths[target]; ok {
			return true
		}
		p = target
	}
	return false
}

// fdPath returns the path of the opened file fd as the kernel resolved it.
func fdPath(fd int) string {
	var b [pathMax]byte
	n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), b[:])
	if err != nil || n <= 0 {
		return ""
	}
	return string(b[:n])
}

// openPath opens p (absolute) O_PATH, following links.
func openPath(p string) (int, error) {
	if len(p) > pathMax {
		return -1, unix.ENAMETOOLONG
	}
	b := make([]byte, len(p)+1)
	copy(b, p)
	return openBytes(b, true)
}

// resolve opens the file command names. It returns the descriptor (O_PATH,
// -1 when no file is there), the path it was found at (aliasing buf), the
// PATH index (-1 for a command given as a path), whether the file is
// executable and whether the path's last component is a symbolic link; st
// holds the stat of the file opened.
func (t *Table) resolve(buf []byte, command, cwd string, st *unix.Stat_t) (fd int, p []byte, where int, executable, link bool) {
	if strings.IndexByte(command, '/') >= 0 {
		var n int
		if command[0] == '/' {
			if len(command) > pathMax {
				return -1, nil, -1, false, false
			}
			n = copy(buf, command)
		} else {
			if cwd == "" {
				cwd = "/"
			}
			if len(cwd)+1+len(command) > pathMax {
				return -1, nil, -1, false, false
			}
			n = copy(buf, cwd)
			buf[n] = '/'
			n++
			n += copy(buf[n:], command)
		}
		buf[n] = 0
		fd, link := openStat(buf[:n+1], st)
		if fd < 0 {
			return -1, nil, -1, false, false
		}
		return fd, buf[:n], -1, isExecutable(st), link
	}
	// PATH search: the first executable file wins; failing that, the first
	// file that exists (reported as not executable).
	firstNonExec := -1
	for i, d := range t.dirs {
		if len(d)+1+len(command) > pathMax {
			continue
		}
		n := copy(buf, d)
		buf[n] = '/'
		n++
		n += copy(buf[n:], command)
		buf[n] = 0
		fd, link := openStat(buf[:n+1], st)
		if fd < 0 {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			unix.Close(fd)
			continue
		}
		if isExecutable(st) {
			return fd, buf[:n], i, true, link
		}
		if firstNonExec < 0 {
			firstNonExec = i
		}
		unix.Close(fd)
	}
	if firstNonExec < 0 {
		return -1, nil, -1, false, false
	}
	// Reported, never run: open it again for the decision's stat.
	d := t.dirs[firstNonExec]
	n := copy(buf, d)
	buf[n] = '/'
	n++
	n += copy(buf[n:], command)
	buf[n] = 0
	fd, link = openStat(buf[:n+1], st)
	if fd < 0 {
		return -1, nil, -1, false, false
	}
	return fd, buf[:n], firstNonExec, false, link
}

// openStat opens the NUL-terminated path in p (O_PATH) and stats the file
// opened. The last component is opened without following first, which is
// the answer unless it is a symbolic link (rare); then it is opened again
// through the link. fd is -1 when no file is there (or the link dangles).
func openStat(p []byte, st *unix.Stat_t) (fd int, link bool) {
	fd, err := openBytes(p, false)
	if err != nil {
		return -1, false
	}
	if unix.Fstat(fd, st) != nil {
		unix.Close(fd)
		return -1, false
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return fd, false
	}
	unix.Close(fd)
	if fd, err = openBytes(p, true); err != nil {
		return -1, true
	}
	if unix.Fstat(fd, st) != nil {
		unix.Close(fd)
		return -1, true
	}
	return fd, true
}

func isExecutable(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0
}

// Path returns, for messages and audit, the path a Default (or
// NotExecutable) decision found: the command as found in PATH, the command
// itself when it is absolute, or the command after cwd. It is never the
// file executed (that is Decision.FD).
func (t *Table) Path(command, cwd string, d Decision) string {
	if d.where >= 0 && d.where < len(t.dirs) && strings.IndexByte(command, '/') < 0 {
		return t.dirs[d.where] + "/" + command
	}
	if strings.HasPrefix(command, "/") {
		return command
	}
	if cwd == "" || cwd == "/" {
		return "/" + command
	}
	return cwd + "/" + command
}
