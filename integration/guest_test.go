//go:build integration

package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/protocol"
)

// guestSession is a direct protocol session with a VM's guest daemon through
// its channel socket: the tier's stand-in for "another host-side tool" while
// hostd is down, and the probe of the bare virtio-serial path.
type guestSession struct {
	*protocol.Client
	mu    sync.Mutex
	audit []protocol.AuditEvent // batches received (never acknowledged when hold is set)
}

var errHoldAudit = errors.New("integration: audit held back (not acknowledged)")

// dialGuest dials the channel socket and performs the handshake within
// timeout. With holdAudit, audit batches are recorded but never acknowledged,
// so the guest keeps them spooled for the next host.
func dialGuest(sock string, timeout time.Duration, holdAudit bool) (*guestSession, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	s := &guestSession{}
	c, err := protocol.Handshake(ctx, conn, protocol.ClientConfig{
		HostVersion: hostVersion() + "-direct",
		Heartbeat:   time.Second,
		OnAudit: func(b protocol.AuditBatch) (uint64, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.audit = append(s.audit, b.Events...)
			if holdAudit {
				return 0, errHoldAudit
			}
			var upTo uint64
			for _, e := range b.Events {
				upTo = max(upTo, e.Seq)
			}
			return upTo, nil
		},
	})
	if err != nil {
		return nil, err
	}
	s.Client = c
	return s, nil
}

// waitGuest dials again and again (each attempt bounded) until the guest
// daemon answers a handshake.
func waitGuest(t *testing.T, vm *VM, timeout time.Duration, holdAudit bool) (*guestSession, time.Duration) {
	t.Helper()
	var s *guestSession
	d := waitFor(t, timeout, "a handshake with the guest daemon of "+vm.Name, func() (bool, string) {
		var err error
		s, err = dialGuest(vm.Sock, 2*time.Second, holdAudit)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	t.Cleanup(func() { s.Close(nil) })
	return s, d
}

func (s *guestSession) exec(t *testing.T, cmd string, args ...string) (protocol.ExecResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var res protocol.ExecResult
	err := s.Call(ctx, protocol.TypeExec, protocol.Exec{Command: cmd, Args: args, TimeoutMillis: 30000, Actor: "integration"}, &res, nil)
	return res, err
}

func (s *guestSession) mustExec(t *testing.T, cmd string, args ...string) protocol.ExecResult {
	t.Helper()
	res, err := s.exec(t, cmd, args...)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("guest exec %s %v: %v (exit %d, stderr %q)", cmd, args, err, res.ExitCode, res.Stderr)
	}
	return res
}

func (s *guestSession) activate(t *testing.T, p protocol.Persona, rev uint64) protocol.ActivateResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var res protocol.ActivateResult
	req := protocol.Activate{Persona: p, Revision: rev, ActivationID: randomID(), Actor: "integration", Reason: "api"}
	if err := s.Call(ctx, protocol.TypeActivate, req, &res, nil); err != nil {
		t.Fatalf("guest activate %s: %v", p.Name, err)
	}
	if res.Result != protocol.ResultActivated || res.Active == nil || res.Active.ActivationID != req.ActivationID {
		t.Fatalf("guest activate %s: %+v", p.Name, res)
	}
	return res
}

func (s *guestSession) received() []protocol.AuditEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]protocol.AuditEvent(nil), s.audit...)
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func describe(err error) string {
	if err == nil {
		return "ok"
	}
	return fmt.Sprintf("%T: %v", err, err)
}
