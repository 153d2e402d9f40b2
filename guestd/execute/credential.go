package execute

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"syscall"
)

// ErrUnknownUser reports a user or group the guest does not know.
var ErrUnknownUser = errors.New("execute: unknown user or group")

// Identity is who a process runs as: a credential, and the variables that
// name the user to it (HOME, USER, LOGNAME).
type Identity struct {
	Credential *syscall.Credential
	Env        map[string]string
}

// LookupIdentity resolves a user and a group, each a name or a numeric
// id, through the guest's user database (/etc/passwd, /etc/group). A user
// alone runs with its primary group and its supplementary groups; a group
// alone keeps root as the user. Numeric ids unknown to the database are
// taken as they are (as incus exec --user does). Both empty: nil (root, as
// the daemon).
func LookupIdentity(userName, groupName string) (*Identity, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	cred := &syscall.Credential{}
	id := &Identity{Credential: cred}
	if userName != "" {
		u, err := lookupUser(userName)
		if err != nil {
			return nil, err
		}
		if u == nil {
			n, _ := strconv.ParseUint(userName, 10, 32)
			cred.Uid, cred.Gid = uint32(n), uint32(n)
			id.Env = map[string]string{"HOME": "/", "USER": userName, "LOGNAME": userName}
		} else {
			uid, _ := strconv.ParseUint(u.Uid, 10, 32)
			gid, _ := strconv.ParseUint(u.Gid, 10, 32)
			cred.Uid, cred.Gid = uint32(uid), uint32(gid)
			if gids, err := u.GroupIds(); err == nil {
				for _, g := range gids {
					if n, err := strconv.ParseUint(g, 10, 32); err == nil {
						cred.Groups = append(cred.Groups, uint32(n))
					}
				}
			}
			home := u.HomeDir
			if home == "" {
				home = "/"
			}
			id.Env = map[string]string{"HOME": home, "USER": u.Username, "LOGNAME": u.Username}
		}
	}
	if groupName != "" {
		gid, err := lookupGroup(groupName)
		if err != nil {
			return nil, err
		}
		cred.Gid = gid
		if userName == "" {
			cred.Groups = []uint32{}
		}
	}
	return id, nil
}

// lookupUser returns the user named (or numbered) s; nil, nil for a number
// the database does not know.
func lookupUser(s string) (*user.User, error) {
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		u, err := user.LookupId(s)
		if err != nil {
			return nil, nil
		}
		return u, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return nil, fmt.Errorf("%w: user %q: %v", ErrUnknownUser, s, err)
	}
	return u, nil
}

func lookupGroup(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	g, err := user.LookupGroup(s)
	if err != nil {
		return 0, fmt.Errorf("%w: group %q: %v", ErrUnknownUser, s, err)
	}
	n, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: group %q has gid %q", ErrUnknownUser, s, g.Gid)
	}
	return uint32(n), nil
}
