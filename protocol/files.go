package protocol

// Files: the host copies a whole file into or out of the guest in chunks,
// each chunk one request and its answer (capability files, §3.13 of
// README.md). A guest without the capability answers unsupported_type.
const (
	TypeFileOpen   Type = 0x40 // host → guest: FileOpen; answered by FileOpened
	TypeFileOpened Type = 0x41 // guest → host: FileOpened
	TypeFileWrite  Type = 0x42 // host → guest: FileWrite; answered by FileData (Size: bytes held)
	TypeFileRead   Type = 0x43 // host → guest: FileRead; answered by FileData
	TypeFileData   Type = 0x44 // guest → host: FileData
	TypeFileClose  Type = 0x45 // host → guest: FileClose; answered by FileData (Size: the file's size)
)

// CapFiles announces FileOpen, FileWrite, FileRead and FileClose.
const CapFiles = "files"

// FileChunk is the most data one FileWrite or FileData carries.
const FileChunk = 256 << 10

// FileOpen opens a file of the guest. To write (Write true), the guest
// creates a temporary file beside Path; FileClose with Commit applies Mode,
// Owner and Group to it, syncs it and renames it over Path. To read, the
// guest opens Path and answers its size and mode. Path must be absolute and
// name a regular file (or, to write, nothing yet).
type FileOpen struct {
	Path  string `json:"path"`
	Write bool   `json:"write,omitempty"`
	// Mode is the permission bits of a written file (0: those of the file
	// it replaces, else 0644).
	Mode uint32 `json:"mode,omitempty"`
	// Owner and Group are a user and group name or number (empty: those of
	// the file it replaces, else the guest agent's).
	Owner string `json:"owner,omitempty"`
	Group string `json:"group,omitempty"`
	// Size is the announced length of a written file (0: not announced);
	// a commit of another length is refused.
	Size  int64  `json:"size,omitempty"`
	Actor string `json:"actor,omitempty"`
}

// FileOpened answers FileOpen.
type FileOpened struct {
	Handle uint64 `json:"handle"`
	// Size and Mode are those of a file opened to read.
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"`
}

// FileWrite appends Data (at most FileChunk bytes) to a file opened to
// write; Offset is where it starts, and must equal the bytes written so far.
type FileWrite struct {
	Handle uint64 `json:"handle"`
	Offset int64  `json:"offset"`
	Data   []byte `json:"data"`
}

// FileRead asks for the next chunk (at most Max, at most FileChunk bytes)
// of a file opened to read.
type FileRead struct {
	Handle uint64 `json:"handle"`
	Max    int    `json:"max,omitempty"`
}

// FileData answers FileWrite, FileRead and FileClose.
type FileData struct {
	Data []byte `json:"data,omitempty"`
	// EOF: the file has no more data after Data.
	EOF bool `json:"eof,omitempty"`
	// Size: the bytes written so far, or of the file.
	Size int64 `json:"size"`
}

// FileClose ends a handle. Commit puts a written file in place; without
// it the temporary file is removed and the target is untouched.
type FileClose struct {
	Handle uint64 `json:"handle"`
	Commit bool   `json:"commit,omitempty"`
}
