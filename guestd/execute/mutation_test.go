package execute

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hangGuard bounds the waits below: a limit on a hang, not a timing
// assertion.
const hangGuard = 30 * time.Second

// TestCancelKillsGroup: cancelling the context (the host went away) kills
// the whole group. The command runs in a process group of its own, led by
// itself, and a child it left running in the background dies with it.
func TestCancelKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pids")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan Result, 1)
	go func() {
		script := "sleep 300 & echo $$ $! > " + pidFile + ".tmp && mv " + pidFile + ".tmp " + pidFile + "; wait"
		res, _ := Run(ctx, Spec{Path: "/bin/sh", Args: []string{"sh", "-c", script}})
		done <- res
	}()

	var leader, child int
	for deadline := time.Now().Add(hangGuard); ; time.Sleep(5 * time.Millisecond) {
		if data, err := os.ReadFile(pidFile); err == nil {
			f := strings.Fields(string(data))
			if len(f) != 2 {
				t.Fatalf("pid file: %q", data)
			}
			leader, _ = strconv.Atoi(f[0])
			child, _ = strconv.Atoi(f[1])
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the command never started its background child")
		}
	}
	// Should the group survive, the background sleep is ended here, not
	// left for 300 s.
	t.Cleanup(func() {
		if cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(child) + "/cmdline"); bytes.Equal(cmdline, []byte("sleep\x00300\x00")) {
			syscall.Kill(child, syscall.SIGKILL)
		}
	})

	if pgid, err := syscall.Getpgid(child); err != nil || pgid != leader {
		t.Fatalf("the background child is in process group %d (%v), want the command's own group %d (the daemon's is %d)",
			pgid, err, leader, syscall.Getpgrp())
	}

	cancel()
	select {
	case res := <-done:
		if res.Signal != "SIGKILL" || res.TimedOut {
			t.Fatalf("cancelled command: %+v, want killed by SIGKILL and not timed out", res)
		}
	case <-time.After(hangGuard):
		t.Fatal("Run did not return after its context was cancelled")
	}
	for deadline := time.Now().Add(hangGuard); alive(child); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the background child %d survived the cancelled command", child)
		}
	}
}

// alive reports whether pid runs (a zombie, killed and waiting for its new
// parent to reap it, does not).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i < 0 || i+2 >= len(data) || data[i+2] != 'Z'
}
