package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
)

// A fleet rollout is asked by writing catalog/rollouts/<persona> (the
// persona's revision at that moment, and the rollout's limits); every host
// sees it through the catalogue's watch, rolls that revision out to its own
// instances and publishes its progress under hosts/<host>/rollouts/<persona>.
// A host that sees the request again (a restart, a full re-read) and has
// reported it done does not run it twice; one whose copy of the persona has
// moved past the revision asked for skips it and says why.

// hostRolloutRecord is a host's progress as kept in etcd: which rollout
// (id, revision) it is about.
type hostRolloutRecord struct {
	apitypes.FleetRolloutHost
	ID       string `json:"id"`
	Revision uint64 `json:"revision"`
}

// RolloutRunner rolls persona's current revision out on this host
// (reconcile.Reconciler.Rollout), reporting each instance's result.
type RolloutRunner func(ctx context.Context, persona string, q apitypes.RolloutRequest, actor string, progress func(apitypes.RolloutResult)) (apitypes.RolloutSummary, error)

// ErrRolloutNotFound: no fleet rollout of that persona was asked.
var ErrRolloutNotFound = errdefs.New(errdefs.ErrNotFound, "no-fleet-rollout", "no fleet rollout of this persona")

func (b *Backend) rolloutKey(persona string) string { return b.keyRollouts + persona }

func (b *Backend) hostRolloutKey(host, persona string) string {
	return b.cfg.Prefix + "hosts/" + host + "/rollouts/" + persona
}

// RequestRollout asks every host to roll persona's current revision out.
// The answer comes once the request is in etcd (and this host's copy).
func (b *Backend) RequestRollout(persona string, q apitypes.FleetRolloutRequest, actor string) (apitypes.FleetRollout, error) {
	var out apitypes.FleetRollout
	err := b.write("rollout", func(ctx context.Context) (int64, bool, error) {
		resp, err := b.cli.Get(ctx, b.personaKey(persona))
		if err != nil {
			return 0, false, err
		}
		if len(resp.Kvs) == 0 {
			return 0, false, errdefs.WithDetails(fmt.Errorf("persona %q: %w", persona, store.ErrNotFound), "persona", persona)
		}
		pkv := resp.Kvs[0]
		r := apitypes.FleetRollout{ID: NewRequestID(), Persona: persona, Revision: uint64(pkv.Version), DryRun: q.DryRun,
			MaxParallel: q.MaxParallel, MaxFailures: q.MaxFailures, Actor: actor, RequestedAt: time.Now().UTC()}
		v, err := json.Marshal(r)
		if err != nil {
			return 0, false, err
		}
		tr, err := b.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(b.personaKey(persona)), "=", pkv.ModRevision)).
			Then(clientv3.OpPut(b.rolloutKey(persona), string(v))).Commit()
		if err != nil || !tr.Succeeded {
			return 0, false, err
		}
		out = r
		return tr.Header.Revision, true, nil
	})
	return out, err
}

// SetRolloutRunner makes this host run the fleet rollouts it sees with run.
// Call it once, before the first catalogue load matters (rollouts seen
// before are run once it is set).
func (b *Backend) SetRolloutRunner(run RolloutRunner) {
	b.rolloutMu.Lock()
	defer b.rolloutMu.Unlock()
	if b.rollouts != nil {
		return
	}
	b.rollouts = make(chan apitypes.FleetRollout, 256)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			select {
			case <-b.closed:
				return
			case r := <-b.rollouts:
				b.runRollout(r, run)
			}
		}
	}()
}

// noteRollout queues a rollout request seen in the catalogue.
func (b *Backend) noteRollout(kv *mvccpb.KeyValue) {
	var r apitypes.FleetRollout
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		b.log.Error("fleet: ignoring an unreadable rollout request", "key", string(kv.Key), "err", err)
		return
	}
	b.rolloutMu.Lock()
	defer b.rolloutMu.Unlock()
	b.seenRollouts = append(b.seenRollouts, r)
}

// dispatchRollouts hands the requests seen in the last applied batch to the
// runner (after the batch is in the copy: the persona revision is there).
func (b *Backend) dispatchRollouts() {
	b.rolloutMu.Lock()
	seen, ch := b.seenRollouts, b.rollouts
	b.seenRollouts = nil
	b.rolloutMu.Unlock()
	if ch == nil {
		return
	}
	for _, r := range seen {
		select {
		case ch <- r:
		default:
			b.log.Warn("fleet: too many rollout requests queued; dropping one", "persona", r.Persona, "id", r.ID)
		}
	}
}

// publishRollout writes this host's progress in a fleet rollout.
func (b *Backend) publishRollout(ctx context.Context, persona string, st hostRolloutRecord) error {
	v, err := json.Marshal(st)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
	defer cancel()
	_, err = b.cli.Put(pctx, b.hostRolloutKey(b.host, persona), string(v))
	return err
}

func (b *Backend) runRollout(r apitypes.FleetRollout, run RolloutRunner) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-b.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	log := b.log.With("persona", r.Persona, "rollout", r.ID, "revision", r.Revision)
	// Reported done already (a restart, a re-read): not twice.
	gctx, gcancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
	resp, err := b.cli.Get(gctx, b.hostRolloutKey(b.host, r.Persona))
	gcancel()
	if err == nil && len(resp.Kvs) > 0 {
		var prev hostRolloutRecord
		if json.Unmarshal(resp.Kvs[0].Value, &prev) == nil && prev.ID == r.ID && prev.State != apitypes.FleetRolloutRunning {
			return
		}
	}
	rec := hostRolloutRecord{ID: r.ID, Revision: r.Revision}
	rec.Host, rec.State = b.host, apitypes.FleetRolloutRunning
	publish := func() {
		rec.UpdatedAt = time.Now().UTC()
		if err := b.publishRollout(ctx, r.Persona, rec); err != nil && ctx.Err() == nil {
			log.Warn("fleet: publishing rollout progress failed", "err", err)
		}
	}
	p, err := b.GetPersona(r.Persona)
	switch {
	case errors.Is(err, store.ErrNotFound):
		rec.State, rec.Reason = apitypes.FleetRolloutSkipped, "the persona was deleted"
	case err != nil:
		rec.State, rec.Reason = apitypes.FleetRolloutSkipped, "reading the persona: "+err.Error()
	case p.Revision != r.Revision:
		rec.State, rec.Reason = apitypes.FleetRolloutSkipped,
			fmt.Sprintf("the persona is at revision %d; the rollout asked for revision %d", p.Revision, r.Revision)
	}
	if rec.State == apitypes.FleetRolloutSkipped {
		log.Info("fleet rollout skipped", "reason", rec.Reason)
		publish()
		return
	}
	publish()
	var mu sync.Mutex
	last := time.Now()
	sum, err := run(ctx, r.Persona, apitypes.RolloutRequest{DryRun: r.DryRun, MaxParallel: r.MaxParallel, MaxFailures: r.MaxFailures},
		r.Actor, func(res apitypes.RolloutResult) {
			mu.Lock()
			defer mu.Unlock()
			rec.Results = append(rec.Results, res)
			if time.Since(last) > 250*time.Millisecond {
				last = time.Now()
				publish()
			}
		})
	mu.Lock()
	defer mu.Unlock()
	rec.State = apitypes.FleetRolloutDone
	if err != nil {
		rec.Reason = errdefs.Message(err)
		if ctx.Err() != nil {
			return // closing: the restart runs it again
		}
	} else {
		rec.Summary = &sum
	}
	publish()
	log.Info("fleet rollout done on this host", "activated", sum.Activated, "failed", sum.Failed, "err", err)
}

// FleetRollout reads the last fleet rollout of persona and the present
// hosts' progress in it (from any live member).
func (b *Backend) FleetRollout(ctx context.Context, persona string) (apitypes.FleetRolloutStatus, error) {
	var out apitypes.FleetRolloutStatus
	hosts, err := b.Hosts(ctx)
	if err != nil {
		return out, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
	defer cancel()
	ops := []clientv3.Op{clientv3.OpGet(b.rolloutKey(persona), clientv3.WithSerializable())}
	for _, h := range hosts {
		ops = append(ops, clientv3.OpGet(b.hostRolloutKey(h.Host, persona), clientv3.WithSerializable()))
	}
	resp, err := b.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return out, errdefs.WithMessage(fmt.Errorf("%w: rollouts: %v", ErrUnavailable, err), "the fleet store (etcd) did not answer: "+err.Error())
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return out, errdefs.WithDetails(errdefs.WithMessage(ErrRolloutNotFound, fmt.Sprintf("no fleet rollout of persona %q was asked", persona)), "persona", persona)
	}
	if err := json.Unmarshal(kvs[0].Value, &out.Rollout); err != nil {
		return out, err
	}
	out.Hosts = []apitypes.FleetRolloutHost{}
	for i, h := range hosts {
		st := apitypes.FleetRolloutHost{Host: h.Host, State: apitypes.FleetRolloutPending}
		if kvs := resp.Responses[i+1].GetResponseRange().Kvs; len(kvs) > 0 {
			var rec hostRolloutRecord
			if json.Unmarshal(kvs[0].Value, &rec) == nil && rec.ID == out.Rollout.ID {
				st = rec.FleetRolloutHost
				st.Host = h.Host
			}
		}
		out.Hosts = append(out.Hosts, st)
	}
	return out, nil
}
