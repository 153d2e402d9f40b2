package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
)

// bigExecSize is the file `exec -- cat` returns: under qemu-ga's 16 MB
// capture limit, so both sides return all of it.
const bigExecSize = 10 << 20

// countWriter counts what it is given.
type countWriter struct{ n int }

func (c *countWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

// qgaCat runs cat FILE through guest-exec with capture-output, polls
// guest-exec-status until it has exited and decodes the output (qemu-ga
// answers it in base64 in one document).
func (q *qga) qgaCat(path string) (int, error) {
	return q.qgaExecCat(map[string]any{"path": "/bin/cat", "arg": []string{path}, "capture-output": true})
}

// qgaCatInput runs cat with input as its standard input (guest-exec's
// input-data, base64 in the request) and captures its output.
func (q *qga) qgaCatInput(input []byte) (int, error) {
	return q.qgaExecCat(map[string]any{"path": "/bin/cat", "input-data": base64.StdEncoding.EncodeToString(input), "capture-output": true})
}

func (q *qga) qgaExecCat(args map[string]any) (int, error) {
	var started struct {
		PID int `json:"pid"`
	}
	if err := q.call("guest-exec", args, &started); err != nil {
		return 0, err
	}
	for {
		var st struct {
			Exited  bool   `json:"exited"`
			OutData string `json:"out-data"`
		}
		if err := q.call("guest-exec-status", map[string]any{"pid": started.PID}, &st); err != nil {
			return 0, err
		}
		if st.Exited {
			b, err := base64.StdEncoding.DecodeString(st.OutData)
			return len(b), err
		}
	}
}

// bigExec: `exec -- cat` of a 10 MiB binary file, streamed through hostd's
// REST API as vmpersonactl does (paced, byte-exact), beside qemu-ga's
// guest-exec with capture-output on the same file.
func (b *bench) bigExec(ctx context.Context) error {
	file := filepath.Join(b.dir, "big-exec.bin")
	data := make([]byte, bigExecSize)
	rand.Read(data)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	api, q, err := b.bothSides()
	if err != nil {
		return err
	}
	defer api.Close()
	defer q.close()
	ours := func() error {
		var out, errOut countWriter
		res, err := api.ExecStream(ctx, "vm", apitypes.ExecRequest{Command: "cat", Args: []string{file}}, &out, &errOut)
		if err != nil {
			return err
		}
		if out.n != bigExecSize || res.ExitCode != 0 {
			return fmt.Errorf("exec cat returned %d bytes of %d, exit %d", out.n, bigExecSize, res.ExitCode)
		}
		return nil
	}
	theirs := func() error {
		n, err := q.qgaCat(file)
		if err == nil && n != bigExecSize {
			err = fmt.Errorf("qemu-ga returned %d bytes of %d", n, bigExecSize)
		}
		return err
	}
	n := 20
	if b.cfg.quick {
		n = 6
	}
	res, err := latencies(ctx, n, 2, side{"ours", ours}, side{"qemu-ga", theirs})
	if err != nil {
		return err
	}
	o, qg := res["ours"].pct(50), res["qemu-ga"].pct(50)
	mibps := func(d interface{ Seconds() float64 }) string {
		return fmt.Sprintf("%.0f MiB/s", float64(bigExecSize)/(1<<20)/d.Seconds())
	}
	b.add(row{fmt.Sprintf("· exec -- cat of a 10 MiB file p50 (n=%d; ours streamed and paced, qemu-ga capture-output)", n),
		ms(o) + " (" + mibps(o) + ")", "qemu-ga " + ms(qg) + " (" + mibps(qg) + ")",
		fmt.Sprintf("%.2f×", float64(o)/float64(qg)), "", "—"})

	// The same 10 MiB in through standard input and back out: ours
	// streamed both ways as vmpersonactl exec -i does, qemu-ga's in one
	// base64 request (input-data) and one captured answer.
	oursIn := func() error {
		var out, errOut countWriter
		res, err := api.ExecStreamInput(ctx, "vm", apitypes.ExecRequest{Command: "cat"}, bytes.NewReader(data), &out, &errOut)
		if err != nil {
			return err
		}
		if out.n != bigExecSize || res.ExitCode != 0 {
			return fmt.Errorf("exec -i cat returned %d bytes of %d, exit %d", out.n, bigExecSize, res.ExitCode)
		}
		return nil
	}
	theirsIn := func() error {
		n, err := q.qgaCatInput(data)
		if err == nil && n != bigExecSize {
			err = fmt.Errorf("qemu-ga returned %d bytes of %d", n, bigExecSize)
		}
		return err
	}
	res, err = latencies(ctx, n, 2, side{"ours", oursIn}, side{"qemu-ga", theirsIn})
	if err != nil {
		return err
	}
	o, qg = res["ours"].pct(50), res["qemu-ga"].pct(50)
	b.add(row{fmt.Sprintf("· exec -i -- cat of 10 MiB on stdin p50 (n=%d; ours stdin and stdout streamed, qemu-ga input-data + capture-output)", n),
		ms(o) + " (" + mibps(o) + ")", "qemu-ga " + ms(qg) + " (" + mibps(qg) + ")",
		fmt.Sprintf("%.2f×", float64(o)/float64(qg)), "", "—"})
	return nil
}
