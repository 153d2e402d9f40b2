package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// errQGA is a qemu-guest-agent error answer.
var errQGA = errors.New("qemu-ga error")

// qga speaks qemu-guest-agent's JSON protocol on its unix socket.
type qga struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialQGA(path string) (*qga, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	q := &qga{conn: c, r: bufio.NewReaderSize(c, 64<<10)}
	// guest-sync flushes anything stale, as a real client does first.
	var id int
	if err := q.call("guest-sync", map[string]any{"id": 4242}, &id); err != nil {
		c.Close()
		return nil, err
	}
	if id != 4242 {
		c.Close()
		return nil, fmt.Errorf("%w: guest-sync answered %d", errQGA, id)
	}
	return q, nil
}

func (q *qga) call(cmd string, args any, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	_ = q.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := q.conn.Write(b); err != nil {
		return err
	}
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("qemu-ga answer %q: %w", line, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("%w: %s: %s", errQGA, resp.Error.Class, resp.Error.Desc)
	}
	if out != nil {
		return json.Unmarshal(resp.Return, out)
	}
	return nil
}

// exec runs path through guest-exec and polls guest-exec-status without
// pause until it has exited (the fastest a qemu-ga client can be).
func (q *qga) exec(path string) error {
	var started struct {
		PID int `json:"pid"`
	}
	if err := q.call("guest-exec", map[string]any{"path": path, "capture-output": true}, &started); err != nil {
		return err
	}
	for {
		var st struct {
			Exited   bool `json:"exited"`
			ExitCode int  `json:"exitcode"`
		}
		if err := q.call("guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return err
		}
		if st.Exited {
			if st.ExitCode != 0 {
				return fmt.Errorf("%w: %s exited %d", errQGA, path, st.ExitCode)
			}
			return nil
		}
	}
}

func (q *qga) close() { q.conn.Close() }

// bareRun is the floor of every exec round trip.
func bareRun(path string, args ...string) error { return exec.Command(path, args...).Run() }

// samples holds latencies.
type samples []time.Duration

func (s samples) pct(p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	c := slices.Clone(s)
	slices.Sort(c)
	i := int(p/100*float64(len(c))+0.5) - 1
	i = max(0, min(i, len(c)-1))
	return c[i]
}

// sides is a set of named operations measured against each other.
type side struct {
	name string
	op   func() error
}

// latencies measures each side's operation n times, interleaved in batches
// (the order rotates every round), so that all see the same machine.
func latencies(ctx context.Context, n, batch int, sides ...side) (map[string]samples, error) {
	out := map[string]samples{}
	for _, s := range sides {
		// One warm-up call each.
		if err := s.op(); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	for round := 0; len(out[sides[0].name]) < n; round++ {
		for k := range sides {
			s := sides[(round+k)%len(sides)]
			for range batch {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				t := time.Now()
				if err := s.op(); err != nil {
					return nil, fmt.Errorf("%s: %w", s.name, err)
				}
				out[s.name] = append(out[s.name], time.Since(t))
			}
		}
	}
	return out, nil
}

// rate is operations per second with the failures seen.
type rate struct {
	ops, errs int64
	elapsed   time.Duration
	firstErr  error
}

func (r rate) perSec() float64 { return float64(r.ops) / r.elapsed.Seconds() }

// throughput runs each side with conc goroutines for seg, alternating the
// sides segs times, and sums each side's completions and time.
func throughput(ctx context.Context, conc int, seg time.Duration, segs int, sides ...side) map[string]*rate {
	out := map[string]*rate{}
	for _, s := range sides {
		out[s.name] = &rate{}
	}
	for round := range segs {
		for k := range sides {
			s := sides[(round+k)%len(sides)]
			r := out[s.name]
			var ops, errs atomic.Int64
			var once sync.Once
			stop := time.Now().Add(seg)
			var wg sync.WaitGroup
			t := time.Now()
			for range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(stop) && ctx.Err() == nil {
						if err := s.op(); err != nil {
							errs.Add(1)
							once.Do(func() { r.firstErr = err })
							continue
						}
						ops.Add(1)
					}
				}()
			}
			wg.Wait()
			r.elapsed += time.Since(t)
			r.ops += ops.Load()
			r.errs += errs.Load()
		}
	}
	return out
}
