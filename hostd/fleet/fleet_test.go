package fleet

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/internal/testetcd"
	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// host is one host's fleet backend on its own real Badger directory.
type host struct {
	t   *testing.T
	dir string
	cfg Config
	st  *store.Store
	b   *Backend
}

func newHost(t *testing.T, name string, endpoints []string) *host {
	t.Helper()
	h := &host{t: t, dir: t.TempDir(), cfg: Config{Endpoints: endpoints, Host: name, Prefix: "/test/"}}
	h.open()
	t.Cleanup(h.close)
	return h
}

func (h *host) open() {
	h.t.Helper()
	st, err := store.Open(h.dir, store.Options{Logger: testLogger()})
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := h.cfg
	cfg.Local, cfg.Logger = st, testLogger()
	b, err := Open(cfg)
	if err != nil {
		st.Close()
		h.t.Fatal(err)
	}
	h.st, h.b = st, b
}

func (h *host) close() {
	if h.b != nil {
		h.b.Close()
		h.st.Close()
		h.b, h.st = nil, nil
	}
}

// waitFor polls cond until it holds; the test fails after a minute (an
// election or a reconnection under load can take a while).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testproc.WaitWithin(t, time.Minute, what, cond)
}

// twoHosts starts a one-member cluster and two hosts, a and b, connected to
// it.
func twoHosts(t *testing.T) (a, b *host) {
	t.Helper()
	c := testetcd.Start(t, 1)
	a, b = newHost(t, "a", c.Endpoints()), newHost(t, "b", c.Endpoints())
	a.waitConnected()
	b.waitConnected()
	return a, b
}

func (h *host) waitConnected() {
	h.t.Helper()
	waitFor(h.t, h.cfg.Host+" connected", func() bool { return h.b.Status().Connected })
}

func persona(name string, def bool) protocol.Persona {
	return protocol.Persona{Name: name, EnvironmentVariables: map[string]string{"APP_ENV": name}, DefaultPersona: def}
}

func TestPersonaCompareAndSwap(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	a := newHost(t, "a", c.Endpoints())
	a.waitConnected()

	p, err := a.b.CreatePersona(persona("web", false))
	if err != nil {
		t.Fatal(err)
	}
	if p.Revision != 1 || p.CreatedAt.IsZero() {
		t.Fatalf("created %+v, want revision 1 with a creation time", p)
	}
	// Read your own write: the local copy has it when the create returns.
	if got, err := a.b.GetPersona("web"); err != nil || got.Revision != 1 {
		t.Fatalf("read after create: %+v, %v", got, err)
	}
	if _, err := a.b.CreatePersona(persona("web", false)); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	upd := persona("web", false)
	upd.RestrictedCommands = []string{"rm"}
	if _, err := a.b.UpdatePersona(upd, 7); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("update with a stale If-Match: %v, want ErrPreconditionFailed", err)
	}
	p2, err := a.b.UpdatePersona(upd, 1)
	if err != nil || p2.Revision != 2 || !p2.CreatedAt.Equal(p.CreatedAt) {
		t.Fatalf("update: %+v, %v; want revision 2 and the creation time kept", p2, err)
	}
	if got, _ := a.b.GetPersona("web"); got.Revision != 2 || len(got.RestrictedCommands) != 1 {
		t.Fatalf("read after update: %+v", got)
	}
	if _, err := a.b.UpdatePersona(persona("nope", false), 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of a missing persona: %v, want ErrNotFound", err)
	}
	if err := a.b.DeletePersona("web", 1, false); !errors.Is(err, store.ErrPreconditionFailed) {
		t.Fatalf("delete with a stale If-Match: %v, want ErrPreconditionFailed", err)
	}
	if err := a.b.DeletePersona("web", 2, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.GetPersona("web"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("read after delete: %v, want ErrNotFound", err)
	}
	if p, err := a.b.CreatePersona(persona("web", false)); err != nil || p.Revision != 1 {
		t.Fatalf("create again after delete: %+v, %v; want revision 1", p, err)
	}
}

func TestRetryWithSameRequestIDIsSafe(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	a := newHost(t, "a", c.Endpoints())
	a.waitConnected()
	// The first attempt commits but its answer is lost: the retry with the
	// same id answers what it stored instead of a conflict or a second
	// revision.
	first, err := a.b.CreatePersonaRequest(persona("api", false), "req-1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.b.CreatePersonaRequest(persona("api", false), "req-1")
	if err != nil || again.Revision != first.Revision {
		t.Fatalf("retried create: %+v, %v; want the first answer", again, err)
	}
	if _, err := a.b.CreatePersonaRequest(persona("api", false), "req-2"); !errors.Is(err, store.ErrExists) {
		t.Fatalf("another request's create: %v, want ErrExists", err)
	}
	upd := persona("api", false)
	upd.RestrictedCommands = []string{"shutdown"}
	u1, err := a.b.UpdatePersonaRequest(upd, 1, "req-3")
	if err != nil || u1.Revision != 2 {
		t.Fatalf("update: %+v, %v", u1, err)
	}
	u2, err := a.b.UpdatePersonaRequest(upd, 1, "req-3") // If-Match 1 would fail for anyone else
	if err != nil || u2.Revision != 2 {
		t.Fatalf("retried update: %+v, %v; want revision 2 once", u2, err)
	}
}

func TestExactlyOneDefaultWinsARace(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 1)
	hosts := []*host{newHost(t, "a", c.Endpoints()), newHost(t, "b", c.Endpoints())}
	for _, h := range hosts {
		h.waitConnected()
	}
	const racers = 8
	var wg sync.WaitGroup
	errs := make([]error, racers)
	names := make([]string, racers)
	start := make(chan struct{})
	for i := range racers {
		names[i] = "default-" + string(rune('a'+i))
		wg.Go(func() {
			<-start
			_, errs[i] = hosts[i%2].b.CreatePersona(persona(names[i], true))
		})
	}
	close(start)
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil:
			if winner != "" {
				t.Fatalf("two defaults won: %s and %s", winner, names[i])
			}
			winner = names[i]
		case !errors.Is(err, store.ErrDefaultConflict):
			t.Fatalf("%s: %v, want a default conflict", names[i], err)
		}
	}
	if winner == "" {
		t.Fatal("no default won")
	}
	for i, err := range errs {
		var dc *store.DefaultConflictError
		if err != nil && (!errors.As(err, &dc) || dc.Current != winner) {
			t.Fatalf("%s refused with %v, want it to name %s", names[i], err, winner)
		}
	}
	for _, h := range hosts {
		waitFor(t, "the default on "+h.cfg.Host, func() bool {
			p, ok, _ := h.b.DefaultPersona()
			return ok && p.Name == winner
		})
	}
	// Releasing the default lets another claim it.
	if _, err := hosts[0].b.UpdatePersona(persona(winner, false), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := hosts[1].b.CreatePersona(persona("next-default", true)); err != nil {
		t.Fatalf("claim after release: %v", err)
	}
}

func TestWatchAppliesAndResumesFromStoredRevision(t *testing.T) {
	t.Parallel()
	a, b := twoHosts(t)
	if _, err := a.b.CreatePersona(persona("one", false)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to see one", func() bool { _, err := b.b.GetPersona("one"); return err == nil })
	rev := b.b.Applied()
	if stored, _ := b.st.ReplicaRevision(); stored != rev {
		t.Fatalf("stored revision %d, applied %d", stored, rev)
	}

	b.close()
	if _, err := a.b.CreatePersona(persona("two", false)); err != nil {
		t.Fatal(err)
	}
	if err := a.b.DeletePersona("one", 0, false); err != nil {
		t.Fatal(err)
	}
	target := a.b.Applied()
	b.open()
	if got := b.b.Applied(); got != rev {
		t.Fatalf("reopened at revision %d, want the stored %d", got, rev)
	}
	waitFor(t, "b to catch up", func() bool { return b.b.Applied() >= target })
	if _, err := b.b.GetPersona("two"); err != nil {
		t.Fatalf("b after restart: %v", err)
	}
	if _, err := b.b.GetPersona("one"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("b after restart still has the deleted persona: %v", err)
	}
	if n := b.b.Status().FullReads; n != 0 {
		t.Fatalf("b read everything again %d times; it should resume from its stored revision", n)
	}
}

func TestCompactionForcesFullReRead(t *testing.T) {
	t.Parallel()
	a, b := twoHosts(t)
	if _, err := a.b.CreatePersona(persona("old", false)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to see old", func() bool { _, err := b.b.GetPersona("old"); return err == nil })
	b.close()
	if err := a.b.DeletePersona("old", 0, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.CreatePersona(persona("new", false)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := a.b.Client().Get(ctx, "compact-marker")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.b.Client().Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	b.open()
	waitFor(t, "b to read everything again", func() bool { return b.b.Status().FullReads == 1 })
	if _, err := b.b.GetPersona("new"); err != nil {
		t.Fatalf("b after the re-read: %v", err)
	}
	if _, err := b.b.GetPersona("old"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("b after the re-read still has a persona deleted meanwhile: %v", err)
	}
}

func TestQuorumLossFailsWritesAndServesTheCopy(t *testing.T) {
	t.Parallel()
	c := testetcd.Start(t, 3)
	a := newHost(t, "a", c.Endpoints())
	a.waitConnected()
	if _, err := a.b.CreatePersona(persona("kept", false)); err != nil {
		t.Fatal(err)
	}
	before := a.b.Applied()
	c.Kill(1)
	c.Kill(2)

	start := time.Now()
	_, err := a.b.CreatePersona(persona("lost", false))
	took := time.Since(start)
	if !errors.Is(err, ErrUnavailable) || errdefs.Class(err) != errdefs.ErrUnavailable {
		t.Fatalf("write without quorum: %v, want the unavailable class", err)
	}
	t.Logf("write without quorum refused after %v (WriteTimeout %v)", took.Round(time.Millisecond), a.b.cfg.WriteTimeout)
	if got, err := a.b.GetPersona("kept"); err != nil || got.Revision != 1 {
		t.Fatalf("read from the copy without quorum: %+v, %v", got, err)
	}
	lost := time.Now()
	waitFor(t, "a to notice", func() bool { return !a.b.Status().Connected })
	t.Logf("quorum loss noticed %v after the refused write", time.Since(lost).Round(time.Millisecond))
	st := a.b.Status()
	if st.StaleSince.IsZero() || st.Revision != before {
		t.Fatalf("status without quorum: %+v; want stale since a time, at revision %d", st, before)
	}
	if _, err := a.st.GetPersona("lost"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a refused write was kept locally: %v", err)
	}

	c.Restart(1)
	c.Restart(2)
	a.waitConnected()
	if _, err := a.b.CreatePersona(persona("after", false)); err != nil {
		t.Fatalf("write after healing: %v", err)
	}
	if n := a.b.Status().FullReads; n != 1 {
		t.Fatalf("full reads %d after healing; want only the first load (catch-up from the stored revision)", n)
	}
}
