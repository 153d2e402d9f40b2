package main

// The least chain of the exec figure's shape: what any Go agent behind a REST
// host daemon pays on this machine before it does anything of its own. Two
// child processes of the bench itself, each as plain as Go allows:
//
//   - a guest (-serve-chain-guest SOCKET) that reads one length-prefixed
//     request at a time from its unix socket, runs the named command with
//     os/exec (exactly the bare spawn of the figure) and answers its exit code;
//   - a host (-serve-chain-host SOCKET GUEST-SOCKET) that answers POST /exec
//     on its own unix socket through httprouter by sending the command to the
//     guest in one frame and writing the answer back as JSON.
//
// No checks, routing, cgroup, process group, output capture, audit, metrics,
// authentication or deadlines: the product's exec minus this chain is what
// its guarantees and its own code cost.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/julienschmidt/httprouter"
)

type chainRequest struct {
	Command string `json:"command"`
}

type chainAnswer struct {
	ExitCode int `json:"exit_code"`
}

// maxChainFrame bounds a frame of the chain (its requests are a path).
const maxChainFrame = 4096

func writeChainFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(frame, b...))
	return err
}

func readChainFrame(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxChainFrame {
		return fmt.Errorf("frame of %d bytes (at most %d)", size, maxChainFrame)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// serveChainGuest is the chain's guest: args SOCKET.
func serveChainGuest(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: bench -serve-chain-guest SOCKET")
		return 2
	}
	l, err := net.Listen("unix", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				var req chainRequest
				if err := readChainFrame(r, &req); err != nil {
					return
				}
				ans := chainAnswer{}
				if err := exec.Command(req.Command).Run(); err != nil {
					var ee *exec.ExitError
					if !errors.As(err, &ee) {
						ans.ExitCode = -1
					} else {
						ans.ExitCode = ee.ExitCode()
					}
				}
				if err := writeChainFrame(c, ans); err != nil {
					return
				}
			}
		}()
	}
}

type chainConn struct {
	c net.Conn
	r *bufio.Reader
}

// serveChainHost is the chain's host: args SOCKET GUEST-SOCKET.
func serveChainHost(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: bench -serve-chain-host SOCKET GUEST-SOCKET")
		return 2
	}
	// One guest connection per call in flight, kept for the next call.
	idle := make(chan *chainConn, 64)
	call := func(q chainRequest) (chainAnswer, error) {
		var cc *chainConn
		select {
		case cc = <-idle:
		default:
			c, err := net.Dial("unix", args[1])
			if err != nil {
				return chainAnswer{}, err
			}
			cc = &chainConn{c: c, r: bufio.NewReader(c)}
		}
		var ans chainAnswer
		err := writeChainFrame(cc.c, q)
		if err == nil {
			err = readChainFrame(cc.r, &ans)
		}
		if err != nil {
			cc.c.Close()
			return ans, err
		}
		select {
		case idle <- cc:
		default:
			cc.c.Close()
		}
		return ans, nil
	}
	r := httprouter.New()
	r.POST("/exec", func(w http.ResponseWriter, req *http.Request, _ httprouter.Params) {
		var q chainRequest
		if err := json.NewDecoder(io.LimitReader(req.Body, maxChainFrame)).Decode(&q); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ans, err := call(q)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ans)
	})
	return serveUnix(args[0], r)
}

// chainOps are the least chain's operations: the whole chain through its
// host (rest), and its guest spoken to directly (guest, no HTTP or host).
type chainOps struct {
	rest, guest func() error
	stop        func()
	// hostPid and guestPid are the chain's processes.
	hostPid, guestPid int
}

// chain starts the chain's two processes.
func (b *bench) chain(ctx context.Context) (*chainOps, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	gsock, hsock := filepath.Join(b.dir, "chain-guest.sock"), filepath.Join(b.dir, "chain-host.sock")
	for _, s := range []string{gsock, hsock} { // an earlier figure's chain left them
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	gp, err := b.ps.start("chain-guest", self, "-serve-chain-guest", gsock)
	if err != nil {
		return nil, err
	}
	if err := waitSocket(ctx, gsock, gp, 10*time.Second); err != nil {
		gp.stop()
		return nil, err
	}
	hp, err := b.ps.start("chain-host", self, "-serve-chain-host", hsock, gsock)
	if err != nil {
		gp.stop()
		return nil, err
	}
	if err := waitSocket(ctx, hsock, hp, 10*time.Second); err != nil {
		hp.stop()
		gp.stop()
		return nil, err
	}
	gc, err := net.Dial("unix", gsock)
	if err != nil {
		hp.stop()
		gp.stop()
		return nil, err
	}
	gr := bufio.NewReader(gc)
	hc := unixClient(hsock, 64)
	body, _ := json.Marshal(chainRequest{Command: "/bin/true"})
	check := func(ans chainAnswer) error {
		if ans.ExitCode != 0 {
			return fmt.Errorf("/bin/true exited %d", ans.ExitCode)
		}
		return nil
	}
	return &chainOps{
		rest: func() error {
			out, err := do(ctx, hc, "POST", "/exec", body, http.StatusOK)
			if err != nil {
				return err
			}
			var ans chainAnswer
			if err := json.Unmarshal(out, &ans); err != nil {
				return err
			}
			return check(ans)
		},
		guest: func() error { // one caller at a time
			var ans chainAnswer
			_ = gc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := writeChainFrame(gc, chainRequest{Command: "/bin/true"}); err != nil {
				return err
			}
			if err := readChainFrame(gr, &ans); err != nil {
				return err
			}
			return check(ans)
		},
		stop:    func() { hc.CloseIdleConnections(); gc.Close(); hp.stop(); gp.stop() },
		hostPid: hp.pid(), guestPid: gp.pid(),
	}, nil
}
