package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The fleet figures: a real hostd in fleet mode against three real etcd
// members (Debian's etcd-server, loopback, temporary data) and N simulated
// hosts — each an etcd client of its own with the watch a hostd keeps on the
// catalogue (WithRequireLeader, from the revision it has). A persona update
// is sent to the real hostd's API; the figure is the time until the last of
// the N watchers has the new revision (the watch fan-out of etcd, no Badger
// apply on the simulated side), and the real hostd's RSS in fleet mode.

const etcdServerBin = "/usr/bin/etcd"

func freeLoopback() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "http://" + l.Addr().String(), nil
}

// startEtcd starts three members and returns the client URLs.
func (b *bench) startEtcd(ctx context.Context) ([]string, error) {
	if _, err := os.Stat(etcdServerBin); err != nil {
		cmd := exec.CommandContext(ctx, filepath.Join(b.cfg.root, "scripts", "ensure-deps"), "etcd-server", "etcd-client")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("installing etcd-server: %w", err)
		}
	}
	names := []string{"e0", "e1", "e2"}
	var peers, clients, initial []string
	for _, n := range names {
		p, err := freeLoopback()
		if err != nil {
			return nil, err
		}
		c, err := freeLoopback()
		if err != nil {
			return nil, err
		}
		peers, clients = append(peers, p), append(clients, c)
		initial = append(initial, n+"="+p)
	}
	for i, n := range names {
		_, err := b.ps.start("etcd "+n, etcdServerBin, "--name", n, "--data-dir", filepath.Join(b.dir, "etcd-"+n),
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--listen-client-urls", clients[i], "--advertise-client-urls", clients[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new", "--log-level", "error", "--logger", "zap")
		if err != nil {
			return nil, err
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: clients, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Put(cctx, "/bench/ready", "1")
		cancel()
		if err == nil {
			return clients, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("etcd not ready: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// watcher is one simulated host: its own client and catalogue watch.
type watcher struct {
	cli *clientv3.Client
	mu  sync.Mutex
	// seen: the time each persona version arrived.
	seen map[int64]time.Time
	cond *sync.Cond
}

func (b *bench) fleet(ctx context.Context) error {
	n := 1000
	if b.cfg.quick {
		n = 100
	}
	// Each simulated host costs this process about 0.3 MiB (a client, a
	// connection, a watch); keep well inside the memory available.
	if avail := memAvailableKiB(); avail > 0 && n*1024/3 > avail/4 {
		n = max(10, avail/4*3/1024)
		b.note("fleet: %d simulated hosts (memory available: %d MiB)", n, avail/1024)
	}
	endpoints, err := b.startEtcd(ctx)
	if err != nil {
		return err
	}
	prefix := "/bench-fleet/"
	sock := filepath.Join(b.dir, "hostd-fleet.sock")
	p, err := b.ps.start("vmpersona-hostd fleet", b.bins.hostd, "--data-dir", filepath.Join(b.dir, "hostd-fleet"), "--unix-socket", sock,
		"--libvirt-uri", "", "--log-level", "warn",
		"--fleet-etcd", strings.Join(endpoints, ","), "--fleet-host", "bench-host", "--fleet-prefix", prefix)
	if err != nil {
		return err
	}
	if err := waitSocket(ctx, sock, p, 60*time.Second); err != nil {
		return err
	}
	hc := unixClient(sock, 4)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if v, err := metric(ctx, hc, "vmpersona_fleet_connected"); err == nil && v == 1 {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the fleet hostd never connected to etcd")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := do(ctx, hc, "POST", "/personas", []byte(`{"name":"fanout"}`), 201); err != nil {
		return err
	}

	// The simulated hosts, watching from now on.
	start := time.Now()
	ws := make([]*watcher, n)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	sem := make(chan struct{}, 32)
	for i := range ws {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				errc <- err
				return
			}
			w := &watcher{cli: cli, seen: map[int64]time.Time{}}
			w.cond = sync.NewCond(&w.mu)
			ws[i] = w
			created := make(chan struct{})
			go func() {
				wch := cli.Watch(clientv3.WithRequireLeader(ctx), prefix+"catalog/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
				for resp := range wch {
					if resp.Created {
						close(created)
					}
					now := time.Now()
					w.mu.Lock()
					for _, ev := range resp.Events {
						if strings.HasSuffix(string(ev.Kv.Key), "/fanout") {
							w.seen[ev.Kv.Version] = now
						}
					}
					w.cond.Broadcast()
					w.mu.Unlock()
				}
			}()
			select {
			case <-created:
			case <-time.After(30 * time.Second):
				errc <- errors.New("a watch was not created within 30 s")
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, w := range ws {
			if w != nil {
				w.cli.Close()
			}
		}
	}()
	select {
	case err := <-errc:
		return err
	default:
	}
	slog.Info("fleet: simulated hosts watching", "n", n, "took", time.Since(start).Round(time.Millisecond))

	// Updates through the real hostd; the time until the last watcher has
	// each (from just before the PUT was sent).
	const updates = 7
	var lastAll, p50s []time.Duration
	for u := 2; u <= updates+1; u++ {
		body := fmt.Sprintf(`{"name":"fanout","environment_variables":{"N":"%d"}}`, u)
		sent := time.Now()
		if _, err := do(ctx, hc, "PUT", "/personas/fanout", []byte(body), 200); err != nil {
			return err
		}
		var lat []time.Duration
		for _, w := range ws {
			w.mu.Lock()
			deadline := time.Now().Add(30 * time.Second)
			for w.seen[int64(u)].IsZero() && time.Now().Before(deadline) {
				w.mu.Unlock()
				time.Sleep(time.Millisecond)
				w.mu.Lock()
			}
			at := w.seen[int64(u)]
			w.mu.Unlock()
			if at.IsZero() {
				return fmt.Errorf("a simulated host did not see revision %d within 30 s", u)
			}
			lat = append(lat, at.Sub(sent))
		}
		slices.Sort(lat)
		lastAll = append(lastAll, lat[len(lat)-1])
		p50s = append(p50s, lat[len(lat)/2])
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(lastAll)
	slices.Sort(p50s)
	b.add(row{fmt.Sprintf("· persona update → all %d fleet hosts (median of %d)", n, updates), ms(lastAll[len(lastAll)/2]),
		"p50 host " + ms(p50s[len(p50s)/2]), "—", "< 1 s", metLE(float64(lastAll[len(lastAll)/2]), float64(time.Second))})
	b.note("fleet: %d simulated hosts (each its own etcd client and catalogue watch, in this process) on 3 etcd members, loopback; "+
		"time from the PUT sent to the real hostd until the last watcher had the revision, %d updates: min %s, median %s, max %s",
		n, updates, ms(lastAll[0]), ms(lastAll[len(lastAll)/2]), ms(lastAll[len(lastAll)-1]))
	rss, err := rssKiB(p.pid())
	if err != nil {
		return err
	}
	ref := "—"
	if b.hostdRSS1 > 0 {
		ref = fmt.Sprintf("single host, 1 agent: %.1f MiB", float64(b.hostdRSS1)/1024)
	}
	b.add(row{"· hostd RSS in fleet mode (no instance, etcd link)", fmt.Sprintf("%.1f MiB", float64(rss)/1024), ref, ratioOf(rss, b.hostdRSS1), "< 40 MiB (as one host)", metLE(float64(rss), 40*1024)})
	return nil
}

func ratioOf(a, b int) string {
	if b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", float64(a)/float64(b))
}
