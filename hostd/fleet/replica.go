package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// envelope is a persona as stored in etcd: the persona (without its
// revision, which is the key's Version), and the request that wrote it, so
// that a retry of a write whose outcome was unknown is recognised.
type envelope struct {
	Persona   protocol.Persona `json:"persona"`
	RequestID string           `json:"request_id,omitempty"`
	Host      string           `json:"host,omitempty"`
}

func encodeEnvelope(p protocol.Persona, reqID, host string) (string, error) {
	p.Revision = 0
	b, err := json.Marshal(envelope{Persona: p, RequestID: reqID, Host: host})
	return string(b), err
}

// decodePersona reads a persona key-value: its revision is the key's
// Version.
func decodePersona(kv *mvccpb.KeyValue) (*protocol.Persona, *envelope, error) {
	var e envelope
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return nil, nil, fmt.Errorf("fleet: persona %s: %w", kv.Key, err)
	}
	p := e.Persona
	p.Revision = uint64(kv.Version)
	return &p, &e, nil
}

// errCompacted: the watch's start revision has been compacted away.
var errCompacted = errors.New("fleet: watch revision compacted")

// replicate keeps the local copy: a full load when there is none (or after
// a compaction), then a watch from the next revision, batch by batch.
func (b *Backend) replicate(ctx context.Context) {
	needFull := b.Applied() == 0
	for attempt := 0; ctx.Err() == nil; {
		if needFull {
			if err := b.fullLoad(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				b.log.Warn("fleet: reading the catalogue failed", "err", err)
				b.setLink(&b.watchUp, false)
				backoff(ctx, attempt)
				attempt++
				continue
			}
			needFull = false
		}
		err := b.watch(ctx, b.Applied()+1)
		if ctx.Err() != nil {
			return
		}
		b.setLink(&b.watchUp, false)
		if errors.Is(err, errCompacted) {
			b.log.Warn("fleet: the local copy's revision was compacted in etcd; reading everything again", "revision", b.Applied())
			needFull = true
			attempt = 0
			backoff(ctx, 2) // jitter, so that a fleet does not re-read at once
			continue
		}
		b.log.Warn("fleet: watch ended", "err", err, "revision", b.Applied())
		backoff(ctx, attempt)
		attempt++
	}
}

// fullLoad reads the whole catalogue at one revision and replaces the copy.
func (b *Backend) fullLoad(ctx context.Context) error {
	lctx, cancel := context.WithTimeout(ctx, 4*b.cfg.WriteTimeout)
	defer cancel()
	resp, err := b.cli.Get(lctx, b.keyCatalog, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	batch := store.ReplicaBatch{Full: true, Personas: map[string]*protocol.Persona{}, Assignments: map[string]*assignment.Assignment{}, Revision: resp.Header.Revision}
	def := ""
	batch.Default = &def
	for _, kv := range resp.Kvs {
		b.collect(&batch, kv, false)
	}
	if err := b.Local().ApplyReplica(batch); err != nil {
		return fmt.Errorf("apply the catalogue to the local copy: %w", err)
	}
	b.fullReads.Add(1)
	b.setApplied(batch.Revision)
	b.log.Info("fleet: catalogue read", "revision", batch.Revision, "personas", len(batch.Personas), "assignments", len(batch.Assignments))
	b.changed()
	b.dispatchRollouts()
	return nil
}

// Local is the host's own store.
func (b *Backend) Local() *store.Store { return b.Store }

// collect adds one key's change to batch.
func (b *Backend) collect(batch *store.ReplicaBatch, kv *mvccpb.KeyValue, deleted bool) {
	key := string(kv.Key)
	switch {
	case key == b.keyDefault:
		name := ""
		if !deleted {
			name = string(kv.Value)
		}
		batch.Default = &name
	case strings.HasPrefix(key, b.keyRollouts):
		if !deleted {
			b.noteRollout(kv)
		}
	case strings.HasPrefix(key, b.keyAssignments):
		name := key[len(b.keyAssignments):]
		if deleted {
			batch.Assignments[name] = nil
			return
		}
		a, _, err := decodeAssignment(kv)
		if err != nil || a.Name != name {
			b.log.Error("fleet: ignoring an unreadable assignment in etcd", "key", key, "err", err)
			return
		}
		batch.Assignments[name] = a
	case strings.HasPrefix(key, b.keyPersonas):
		name := key[len(b.keyPersonas):]
		if deleted {
			batch.Personas[name] = nil
			return
		}
		p, _, err := decodePersona(kv)
		if err != nil || p.Name != name {
			b.log.Error("fleet: ignoring an unreadable persona in etcd", "key", key, "err", err)
			return
		}
		batch.Personas[name] = p
	}
}

// watch follows the catalogue from revision from until the watch fails.
func (b *Backend) watch(ctx context.Context, from int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := b.cli.Watch(wctx, b.keyCatalog, clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithCreatedNotify(), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return errCompacted
		}
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return errCompacted
			}
			return err
		}
		if resp.Created {
			b.setLink(&b.watchUp, true)
		}
		batch := store.ReplicaBatch{Personas: map[string]*protocol.Persona{}, Assignments: map[string]*assignment.Assignment{}}
		for _, ev := range resp.Events {
			b.collect(&batch, ev.Kv, ev.Type == clientv3.EventTypeDelete)
			batch.Revision = max(batch.Revision, ev.Kv.ModRevision)
		}
		if resp.IsProgressNotify() {
			// Nothing in the catalogue changed up to the header's revision.
			batch.Revision = max(batch.Revision, resp.Header.Revision)
		}
		if batch.Revision <= b.Applied() {
			continue
		}
		start := time.Now()
		if err := b.Local().ApplyReplica(batch); err != nil {
			return fmt.Errorf("apply revision %d to the local copy: %w", batch.Revision, err)
		}
		b.m.applySeconds(time.Since(start))
		b.setApplied(batch.Revision)
		if len(resp.Events) > 0 {
			b.changed()
			b.dispatchRollouts()
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.New("watch channel closed")
}
