package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// Each host publishes its instances (as GET /instances shows them) under
// hosts/<host>/instances/<id>, id being the libvirt UUID when there is one,
// else the instance's name: the fleet-wide answer to "which VM runs what".
// A record changes in etcd only when it changed on the host; while etcd is
// unreachable nothing is published, and everything is again once it is back.

func (b *Backend) instancesPrefix(host string) string {
	return b.cfg.Prefix + "hosts/" + host + "/instances/"
}

// PublishInstances publishes list's answer every interval until ctx ends.
func (b *Backend) PublishInstances(ctx context.Context, interval time.Duration, list func() ([]apitypes.Instance, error)) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() { // Close ends publishing too
			select {
			case <-b.closed:
				cancel()
			case <-ctx.Done():
			}
		}()
		var published map[string]string // key → value in etcd, nil: unknown
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if b.connected() {
				p, err := b.publishOnce(ctx, published, list)
				if err != nil && ctx.Err() == nil {
					b.log.Debug("fleet: publishing instances", "err", err)
				}
				published = p
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// publishOnce writes what changed since published (nil: read etcd first)
// and returns what etcd holds after it (nil when unknown).
func (b *Backend) publishOnce(ctx context.Context, published map[string]string, list func() ([]apitypes.Instance, error)) (map[string]string, error) {
	insts, err := list()
	if err != nil {
		return published, err
	}
	prefix := b.instancesPrefix(b.host)
	if published == nil {
		gctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
		resp, err := b.cli.Get(gctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return nil, err
		}
		published = map[string]string{}
		for _, kv := range resp.Kvs {
			published[string(kv.Key)] = string(kv.Value)
		}
	}
	want := map[string]string{}
	for _, in := range insts {
		id := in.UUID
		if id == "" {
			id = in.ID
		}
		in.Host = b.host
		v, err := json.Marshal(in)
		if err != nil {
			return published, err
		}
		want[prefix+id] = string(v)
	}
	next := maps.Clone(published)
	for k, v := range want {
		if published[k] == v {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
		_, err := b.cli.Put(pctx, k, v)
		cancel()
		if err != nil {
			return nil, err
		}
		next[k] = v
	}
	for k := range published {
		if _, ok := want[k]; ok {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
		_, err := b.cli.Delete(dctx, k)
		cancel()
		if err != nil {
			return nil, err
		}
		delete(next, k)
	}
	return next, nil
}

// FleetInstances reads every host's published instances, sorted by host
// and id. It reads from any live member (serializable), so it answers
// while a quorum is lost, from that member's data.
func (b *Backend) FleetInstances(ctx context.Context) ([]apitypes.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.WriteTimeout)
	defer cancel()
	resp, err := b.cli.Get(ctx, b.cfg.Prefix+"hosts/", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil {
		return nil, errdefs.WithMessage(fmt.Errorf("%w: instances: %v", ErrUnavailable, err), "the fleet store (etcd) did not answer: "+err.Error())
	}
	out := []apitypes.Instance{}
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), b.cfg.Prefix+"hosts/")
		host, id, ok := strings.Cut(rest, "/instances/")
		if !ok || strings.Contains(host, "/") || id == "" {
			continue
		}
		var in apitypes.Instance
		if json.Unmarshal(kv.Value, &in) != nil {
			continue
		}
		in.Host = host
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, c apitypes.Instance) int {
		if x := strings.Compare(a.Host, c.Host); x != 0 {
			return x
		}
		return strings.Compare(a.ID, c.ID)
	})
	return out, nil
}
