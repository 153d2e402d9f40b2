package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

// Persona writes are compare-and-swap transactions: each reads the persona's
// key and the default claim (one round trip, one revision), checks the
// request against them, and commits only if neither key moved since
// (ModRevision compares). A transaction that lost a race is tried again
// from the read; one that found its own request id already there (a retry
// of a write whose answer was lost) answers what that write stored.

// NewRequestID returns a fresh request id for a write.
func NewRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// maxCASAttempts bounds the retries of a transaction that lost a race.
const maxCASAttempts = 16

// observed is what a write saw of the persona's key and the default claim.
type observed struct {
	persona    *mvccpb.KeyValue // nil: absent
	def        *mvccpb.KeyValue // nil: no default
	defaultNow string
}

func (b *Backend) personaKey(name string) string { return b.keyPersonas + name }

func (b *Backend) observe(ctx context.Context, name string) (observed, error) {
	resp, err := b.cli.Txn(ctx).Then(clientv3.OpGet(b.personaKey(name)), clientv3.OpGet(b.keyDefault)).Commit()
	if err != nil {
		return observed{}, err
	}
	var o observed
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		o.persona = kvs[0]
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		o.def = kvs[0]
		o.defaultNow = string(kvs[0].Value)
	}
	return o, nil
}

// unchanged compares both keys with what o saw.
func (b *Backend) unchanged(name string, o observed) []clientv3.Cmp {
	pr, dr := int64(0), int64(0)
	if o.persona != nil {
		pr = o.persona.ModRevision
	}
	if o.def != nil {
		dr = o.def.ModRevision
	}
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(b.personaKey(name)), "=", pr),
		clientv3.Compare(clientv3.ModRevision(b.keyDefault), "=", dr),
	}
}

// defaultOps claims (claims) or releases the default for name, or refuses
// with *store.DefaultConflictError naming the holder.
func (b *Backend) defaultOps(name string, claims bool, o observed) ([]clientv3.Op, error) {
	switch {
	case claims && o.defaultNow != "" && o.defaultNow != name:
		return nil, &store.DefaultConflictError{Current: o.defaultNow}
	case claims && o.defaultNow == "":
		return []clientv3.Op{clientv3.OpPut(b.keyDefault, name)}, nil
	case !claims && o.defaultNow == name:
		return []clientv3.Op{clientv3.OpDelete(b.keyDefault)}, nil
	}
	return nil, nil
}

// write runs attempt until it commits or refuses, within WriteTimeout, then
// waits for the local copy to reach the commit's revision.
func (b *Backend) write(op string, attempt func(ctx context.Context) (rev int64, done bool, err error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.WriteTimeout)
	defer cancel()
	start := time.Now()
	for range maxCASAttempts {
		rev, done, err := attempt(ctx)
		if err != nil {
			if refusal(err) {
				b.m.write(op, "refused", time.Since(start))
				return err
			}
			if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) {
				b.m.write(op, "forbidden", time.Since(start))
				return errdefs.WithMessage(fmt.Errorf("%w: %v", ErrForbidden, err),
					"etcd refused the "+op+" to this host's etcd user: give it a role that may write "+b.keyCatalog)
			}
			b.m.write(op, "unavailable", time.Since(start))
			return unavailable(op, err)
		}
		if done {
			b.m.write(op, "ok", time.Since(start))
			wctx, wcancel := context.WithTimeout(context.Background(), b.cfg.ApplyTimeout)
			defer wcancel()
			if err := b.waitApplied(wctx, rev); err != nil {
				b.log.Warn("fleet: write committed but the local copy has not caught up yet", "op", op, "revision", rev, "local_revision", b.Applied())
			}
			return nil
		}
	}
	return unavailable(op, fmt.Errorf("still racing other writers after %d attempts", maxCASAttempts))
}

// CreatePersona creates p in the fleet with a fresh request id.
func (b *Backend) CreatePersona(p protocol.Persona) (protocol.Persona, error) {
	return b.CreatePersonaRequest(p, NewRequestID())
}

// CreatePersonaRequest creates p; a retry with the same reqID after an
// unknown outcome answers the persona that request created.
func (b *Backend) CreatePersonaRequest(p protocol.Persona, reqID string) (protocol.Persona, error) {
	return b.writePersona("create", p, reqID, func(o observed) (personaWrite, error) {
		if o.persona != nil {
			cur, env, err := decodePersona(o.persona)
			if err == nil && reqID != "" && env.RequestID == reqID {
				return personaWrite{retried: cur}, nil
			}
			return personaWrite{}, fmt.Errorf("persona %q: %w", p.Name, store.ErrExists)
		}
		now := time.Now().UTC()
		return personaWrite{created: now, updated: now, revision: 1}, nil
	})
}

// personaWrite is what a persona write makes of what it observed: the
// server-kept fields of the persona to store, or the persona an earlier
// attempt of the same request stored.
type personaWrite struct {
	created, updated time.Time
	revision         uint64 // once committed
	retried          *protocol.Persona
}

// writePersona validates and normalizes p and writes it to the fleet under
// op: at each attempt, plan checks p against what is stored (o), then the
// persona and the default claim are written if neither key changed since.
func (b *Backend) writePersona(op string, p protocol.Persona, reqID string, plan func(o observed) (personaWrite, error)) (protocol.Persona, error) {
	if err := validate.Persona(&p); err != nil {
		return protocol.Persona{}, err
	}
	validate.Normalize(&p)
	var out protocol.Persona
	err := b.write(op, func(ctx context.Context) (int64, bool, error) {
		o, err := b.observe(ctx, p.Name)
		if err != nil {
			return 0, false, err
		}
		w, err := plan(o)
		if err != nil {
			return 0, false, err
		}
		if w.retried != nil {
			out = *w.retried
			return o.persona.ModRevision, true, nil
		}
		ops, err := b.defaultOps(p.Name, p.DefaultPersona, o)
		if err != nil {
			return 0, false, err
		}
		np := p
		np.CreatedAt, np.UpdatedAt = w.created, w.updated
		val, err := encodeEnvelope(np, reqID, b.host)
		if err != nil {
			return 0, false, err
		}
		resp, err := b.cli.Txn(ctx).If(b.unchanged(p.Name, o)...).
			Then(append(ops, clientv3.OpPut(b.personaKey(p.Name), val))...).Commit()
		if err != nil || !resp.Succeeded {
			return 0, false, err
		}
		np.Revision = w.revision
		out = np
		return resp.Header.Revision, true, nil
	})
	return out, err
}

// UpdatePersona updates p in the fleet with a fresh request id.
func (b *Backend) UpdatePersona(p protocol.Persona, ifMatch uint64) (protocol.Persona, error) {
	return b.UpdatePersonaRequest(p, ifMatch, NewRequestID())
}

// UpdatePersonaRequest replaces the persona p.Name, its revision (the key's
// Version) going up by one. ifMatch 0 updates whatever the revision.
func (b *Backend) UpdatePersonaRequest(p protocol.Persona, ifMatch uint64, reqID string) (protocol.Persona, error) {
	return b.writePersona("update", p, reqID, func(o observed) (personaWrite, error) {
		if o.persona == nil {
			return personaWrite{}, fmt.Errorf("persona %q: %w", p.Name, store.ErrNotFound)
		}
		cur, env, err := decodePersona(o.persona)
		if err != nil {
			return personaWrite{}, err
		}
		if reqID != "" && env.RequestID == reqID {
			return personaWrite{retried: cur}, nil
		}
		if ifMatch != 0 && ifMatch != cur.Revision {
			return personaWrite{}, fmt.Errorf("persona %q is at revision %d, not %d: %w", p.Name, cur.Revision, ifMatch, store.ErrPreconditionFailed)
		}
		return personaWrite{created: cur.CreatedAt, updated: time.Now().UTC(), revision: cur.Revision + 1}, nil
	})
}

// DeletePersona removes a persona from the fleet. While an instance record
// of this host holds it, it is refused with *store.InUseError unless force.
func (b *Backend) DeletePersona(name string, ifMatch uint64, force bool) error {
	if !force {
		recs, err := b.Store.ListInstances()
		if err != nil {
			return err
		}
		var holders []string
		for _, r := range recs {
			if r.Persona != nil && r.Persona.Name == name {
				holders = append(holders, r.Instance)
			}
		}
		if len(holders) > 0 {
			slices.Sort(holders)
			return &store.InUseError{Persona: name, Instances: holders}
		}
	}
	return b.write("delete", func(ctx context.Context) (int64, bool, error) {
		o, err := b.observe(ctx, name)
		if err != nil {
			return 0, false, err
		}
		if o.persona == nil {
			return 0, false, fmt.Errorf("persona %q: %w", name, store.ErrNotFound)
		}
		if ifMatch != 0 && uint64(o.persona.Version) != ifMatch {
			return 0, false, fmt.Errorf("persona %q is at revision %d, not %d: %w", name, o.persona.Version, ifMatch, store.ErrPreconditionFailed)
		}
		ops, _ := b.defaultOps(name, false, o)
		resp, err := b.cli.Txn(ctx).If(b.unchanged(name, o)...).
			Then(append(ops, clientv3.OpDelete(b.personaKey(name)))...).Commit()
		if err != nil || !resp.Succeeded {
			return 0, false, err
		}
		return resp.Header.Revision, true, nil
	})
}

// refusal tells the write's own answers (not found, exists, a revision
// mismatch, a default conflict, invalid input) from etcd failing.
func refusal(err error) bool {
	c := errdefs.Class(err)
	return c != nil && c != errdefs.ErrTimeout && c != errdefs.ErrCanceled && c != errdefs.ErrUnavailable
}
