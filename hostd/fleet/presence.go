package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// Presence is a host's entry under hosts/<host>/presence, kept on a lease:
// it disappears LeaseTTL after the host stops renewing it.
type Presence struct {
	Host       string            `json:"host"`
	Version    string            `json:"version"`
	APIAddress string            `json:"api_address,omitempty"`
	Revision   int64             `json:"applied_revision"`
	Labels     map[string]string `json:"labels,omitempty"`
	StartedAt  time.Time         `json:"started_at"`
}

func (b *Backend) presenceKey(host string) string {
	return b.cfg.Prefix + "hosts/" + host + "/presence"
}

// presence publishes this host's presence on a lease and keeps the lease
// alive; the applied revision is refreshed every 2 s when it moved.
func (b *Backend) presence(ctx context.Context) {
	started := time.Now().UTC()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if err := b.holdPresence(ctx, started); err != nil && ctx.Err() == nil {
			b.log.Debug("fleet: presence lease lost", "err", err)
		}
		backoff(ctx, attempt)
	}
}

func (b *Backend) holdPresence(ctx context.Context, started time.Time) error {
	gctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
	lease, err := b.cli.Grant(gctx, int64(b.cfg.LeaseTTL/time.Second))
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		b.cli.Revoke(rctx, lease.ID)
		cancel()
	}()
	put := func(rev int64) error {
		v, _ := json.Marshal(Presence{Host: b.host, Version: b.cfg.Version, APIAddress: b.cfg.APIAddress, Revision: rev, StartedAt: started, Labels: b.cfg.HostLabels})
		pctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
		defer cancel()
		_, err := b.cli.Put(pctx, b.presenceKey(b.host), string(v), clientv3.WithLease(lease.ID))
		return err
	}
	published := b.Applied()
	if err := put(published); err != nil {
		return err
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ka, err := b.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		return err
	}
	t := time.NewTicker(min(b.cfg.LeaseTTL, 2*time.Second))
	defer t.Stop()
	for {
		select {
		case _, ok := <-ka:
			if !ok {
				return ctx.Err()
			}
		case <-t.C:
			if rev := b.Applied(); rev != published {
				if err := put(rev); err != nil {
					return err
				}
				published = rev
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// Hosts lists the hosts present in the fleet (their leases alive).
func (b *Backend) Hosts(ctx context.Context) ([]Presence, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
	defer cancel()
	resp, err := b.cli.Get(ctx, b.cfg.Prefix+"hosts/", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil {
		return nil, errdefs.WithMessage(fmt.Errorf("%w: hosts: %v", ErrUnavailable, err), "the fleet store (etcd) did not answer: "+err.Error())
	}
	var out []Presence
	for _, kv := range resp.Kvs {
		if len(kv.Key) < len("/presence") || string(kv.Key[len(kv.Key)-len("/presence"):]) != "/presence" {
			continue
		}
		var p Presence
		if json.Unmarshal(kv.Value, &p) == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// FleetHosts is Hosts as the API shows them, sorted by name.
func (b *Backend) FleetHosts(ctx context.Context) ([]apitypes.FleetHost, error) {
	ps, err := b.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]apitypes.FleetHost, 0, len(ps))
	for _, p := range ps {
		out = append(out, apitypes.FleetHost{Host: p.Host, Version: p.Version, APIAddress: p.APIAddress, AppliedRevision: p.Revision, StartedAt: p.StartedAt, Labels: p.Labels})
	}
	slices.SortFunc(out, func(a, c apitypes.FleetHost) int { return strings.Compare(a.Host, c.Host) })
	return out, nil
}
