// Package auth decides who is calling the host daemon's API and what they may
// do: bearer tokens from a Kubernetes-style static token file, and peer
// credentials on the unix socket.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Role is what a caller may do. Roles are ordered: each includes the ones below.
type Role int

const (
	RoleNone     Role = iota
	RoleViewer        // read personas, instances, active personas
	RoleOperator      // viewer + activate, deactivate, exec
	RoleAdmin         // everything
)

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole maps a group name to a role.
func ParseRole(group string) Role {
	switch strings.TrimSpace(group) {
	case "admin":
		return RoleAdmin
	case "operator":
		return RoleOperator
	case "viewer":
		return RoleViewer
	}
	return RoleNone
}

// Identity is an authenticated caller.
type Identity struct {
	User string
	Role Role
	// Via says how the caller was recognised: "token" or "unix".
	Via string
}

// ErrWorldReadable is returned for a token file its group or other users
// can read or write (like ssh with a private key: only the owner may).
var ErrWorldReadable = errors.New("token file is readable or writable by its group or other users")

type entry struct {
	sum  [sha256.Size]byte
	user string
	role Role
}

// Tokens is a set of bearer tokens with their users and roles.
type Tokens struct {
	entries []entry
}

// LoadTokenFile reads a static token file: CSV lines `token,user,uid,"group1,group2"`.
// The caller's role is the highest of its groups among admin, operator and
// viewer. A file its group or other users may read or write is refused.
func LoadTokenFile(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o066 != 0 {
		return nil, fmt.Errorf("%s (mode %04o): %w; run chmod 600 %s", path, fi.Mode().Perm(), ErrWorldReadable, path)
	}
	t, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTokens parses the token file format from r.
func ParseTokens(r io.Reader) (*Tokens, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	t := &Tokens{}
	seen := map[[sha256.Size]byte]bool{}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := cr.FieldPos(0)
		if len(rec) < 2 || rec[0] == "" || rec[1] == "" {
			return nil, fmt.Errorf("line %d: want token,user,uid,\"groups\"", line)
		}
		e := entry{sum: sha256.Sum256([]byte(rec[0])), user: rec[1]}
		if len(rec) >= 4 {
			for _, g := range strings.Split(rec[3], ",") {
				e.role = max(e.role, ParseRole(g))
			}
		}
		if seen[e.sum] {
			return nil, fmt.Errorf("line %d: duplicate token", line)
		}
		seen[e.sum] = true
		t.entries = append(t.entries, e)
	}
	return t, nil
}

// Len reports how many tokens are known.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}

// Lookup finds the identity of a bearer token. It compares the token's hash
// with every entry in constant time, so timing reveals neither which entry
// matched nor how much of a token was right.
func (t *Tokens) Lookup(token string) (Identity, bool) {
	if t == nil || token == "" {
		return Identity{}, false
	}
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		if subtle.ConstantTimeCompare(sum[:], t.entries[i].sum[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, false
	}
	e := t.entries[found]
	return Identity{User: e.user, Role: e.role, Via: "token"}, true
}
