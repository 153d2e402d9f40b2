package auth

import (
	"fmt"
	"net"
	"os/user"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// AdminGroup is the system group whose members are admin on the unix socket.
const AdminGroup = "vmpersona"

// Peer is the process at the other end of a unix socket connection.
type Peer struct {
	UID, GID, PID int
}

// PeerOf reads the peer credentials (SO_PEERCRED) of a unix connection.
func PeerOf(c net.Conn) (Peer, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return Peer{}, false
	}
	return Peer{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}, true
}

// PeerIdentity grants admin to root and to members of the vmpersona group;
// anyone else gets no role from the socket alone (a token may still grant one).
func PeerIdentity(p Peer) Identity {
	name := "uid:" + strconv.Itoa(p.UID)
	if u, err := user.LookupId(strconv.Itoa(p.UID)); err == nil {
		name = u.Username
	}
	id := Identity{User: name, Via: "unix"}
	if p.UID == 0 || inAdminGroup(p) {
		id.Role = RoleAdmin
	}
	return id
}

func inAdminGroup(p Peer) bool {
	g, err := user.LookupGroup(AdminGroup)
	if err != nil {
		return false
	}
	if g.Gid == strconv.Itoa(p.GID) {
		return true
	}
	u, err := user.LookupId(strconv.Itoa(p.UID))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	if err != nil {
		return false
	}
	return slices.Contains(gids, g.Gid)
}

func (p Peer) String() string { return fmt.Sprintf("uid=%d gid=%d pid=%d", p.UID, p.GID, p.PID) }
