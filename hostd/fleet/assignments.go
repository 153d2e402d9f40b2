package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/hostd/assignment"
	"github.com/vmpersona/vmpersona/hostd/store"
)

// Assignments live under catalog/assignments/<name>, beside the personas,
// so the catalogue's load and watch copy them into each host's store. A
// write is a compare-and-swap on the key's ModRevision; an assignment's
// revision (its ETag) is the key's Version; each write carries a request id
// so that a retry after an unknown outcome answers what the first stored.

type assignmentEnvelope struct {
	Assignment assignment.Assignment `json:"assignment"`
	RequestID  string                `json:"request_id,omitempty"`
	Host       string                `json:"host,omitempty"`
}

func (b *Backend) assignmentKey(name string) string { return b.keyAssignments + name }

func decodeAssignment(kv *mvccpb.KeyValue) (*assignment.Assignment, *assignmentEnvelope, error) {
	var e assignmentEnvelope
	if err := json.Unmarshal(kv.Value, &e); err != nil {
		return nil, nil, fmt.Errorf("fleet: assignment %s: %w", kv.Key, err)
	}
	a := e.Assignment
	a.Revision = uint64(kv.Version)
	return &a, &e, nil
}

// PutAssignment creates or replaces an assignment in the fleet. ifMatch not
// 0 requires the current revision to be that one. A retry with the same
// requestID answers what that request stored.
func (b *Backend) PutAssignment(a assignment.Assignment, ifMatch uint64, requestID string) (assignment.Assignment, bool, error) {
	if err := assignment.Validate(&a); err != nil {
		return a, false, err
	}
	if requestID == "" {
		requestID = NewRequestID()
	}
	key := b.assignmentKey(a.Name)
	var out assignment.Assignment
	var created bool
	err := b.write("assignment put", func(ctx context.Context) (int64, bool, error) {
		// The assignment and its persona, read at one revision.
		rd, err := b.cli.Txn(ctx).Then(clientv3.OpGet(key), clientv3.OpGet(b.personaKey(a.Persona))).Commit()
		if err != nil {
			return 0, false, err
		}
		kvs, pkvs := rd.Responses[0].GetResponseRange().Kvs, rd.Responses[1].GetResponseRange().Kvs
		var cur *assignment.Assignment
		var modRev int64
		if len(kvs) > 0 {
			kv := kvs[0]
			c, env, err := decodeAssignment(kv)
			if err != nil {
				return 0, false, err
			}
			if env.RequestID == requestID {
				out, created = *c, c.Revision == 1
				return kv.ModRevision, true, nil
			}
			cur, modRev = c, kv.ModRevision
		}
		if len(pkvs) == 0 {
			return 0, false, store.NoPersonaError(a.Persona)
		}
		if ifMatch != 0 {
			if cur == nil {
				return 0, false, fmt.Errorf("assignment %q: %w", a.Name, store.ErrNotFound)
			}
			if cur.Revision != ifMatch {
				return 0, false, fmt.Errorf("assignment %q is at revision %d, not %d: %w", a.Name, cur.Revision, ifMatch, store.ErrPreconditionFailed)
			}
		}
		now := time.Now().UTC()
		n := a
		n.Revision, n.CreatedAt, n.UpdatedAt = 0, now, now
		if cur != nil {
			n.CreatedAt = cur.CreatedAt
		}
		v, err := json.Marshal(assignmentEnvelope{Assignment: n, RequestID: requestID, Host: b.host})
		if err != nil {
			return 0, false, err
		}
		// Committed only if neither the assignment nor its persona moved.
		tr, err := b.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev),
			clientv3.Compare(clientv3.ModRevision(b.personaKey(a.Persona)), "=", pkvs[0].ModRevision)).
			Then(clientv3.OpPut(key, string(v))).Commit()
		if err != nil || !tr.Succeeded {
			return 0, false, err
		}
		n.Revision = 1
		if cur != nil {
			n.Revision = cur.Revision + 1
		}
		out, created = n, cur == nil
		return tr.Header.Revision, true, nil
	})
	return out, created, err
}

// DeleteAssignment removes an assignment from the fleet; ifMatch as in
// PutAssignment.
func (b *Backend) DeleteAssignment(name string, ifMatch uint64) error {
	key := b.assignmentKey(name)
	return b.write("assignment delete", func(ctx context.Context) (int64, bool, error) {
		resp, err := b.cli.Get(ctx, key)
		if err != nil {
			return 0, false, err
		}
		if len(resp.Kvs) == 0 {
			return 0, false, fmt.Errorf("assignment %q: %w", name, store.ErrNotFound)
		}
		kv := resp.Kvs[0]
		if ifMatch != 0 && uint64(kv.Version) != ifMatch {
			return 0, false, fmt.Errorf("assignment %q is at revision %d, not %d: %w", name, kv.Version, ifMatch, store.ErrPreconditionFailed)
		}
		tr, err := b.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
			Then(clientv3.OpDelete(key)).Commit()
		if err != nil || !tr.Succeeded {
			return 0, false, err
		}
		return tr.Header.Revision, true, nil
	})
}
