package reliability

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/internal/testproc"
	"github.com/vmpersona/vmpersona/protocol"
)

// mountSmall mounts a small file system of the given kind ("tmpfs", or
// "ext4" on a loop image) on a new directory, unmounted at cleanup.
func mountSmall(t *testing.T, kind string, sizeMB int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system needs root")
	}
	dir := testproc.ShortDir(t)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	switch kind {
	case "tmpfs":
		cmd = exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", sizeMB), "tmpfs", mnt)
	case "ext4":
		img := filepath.Join(dir, "fs.img")
		if out, err := exec.Command("truncate", "-s", fmt.Sprintf("%dM", sizeMB), img).CombinedOutput(); err != nil {
			t.Fatalf("truncate: %v %s", err, out)
		}
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
			t.Skipf("mkfs.ext4 is not usable here: %v %s", err, out)
		}
		cmd = exec.Command("mount", "-o", "loop", img, mnt)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot mount a %s here (%v: %s): the disk-full test needs it", kind, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			exec.Command("umount", "-l", mnt).Run()
			t.Logf("umount %s: %v %s", mnt, err, out)
		}
	})
	return mnt
}

func freeMB(t *testing.T, dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize >> 20
}

// fill writes a file until the file system has at most leaveMB free (0:
// until it is full).
func fill(t *testing.T, path string, leaveMB int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for freeMB(t, filepath.Dir(path)) > leaveMB {
		if _, err := f.Write(buf); err != nil {
			break // full
		}
	}
	f.Sync()
}

// TestDiskFullIsAnAnswer: hostd on a small file system (tmpfs, and ext4 on
// a loop image) that fills up. Under the free-space watermark writes are
// answered 507 problem documents, reads keep working, /readyz says why and
// vmpersona_storage_low shows it; with the disk completely full hostd stays
// up; when space returns it takes writes again by itself; nothing
// acknowledged is lost across a restart.
func TestDiskFullIsAnAnswer(t *testing.T) {
	parallel(t)
	for _, kind := range []string{"tmpfs", "ext4"} {
		t.Run(kind, func(t *testing.T) { diskFullRun(t, kind) })
	}
}

func diskFullRun(t *testing.T, kind string) {
	mnt := mountSmall(t, kind, 96)
	data := filepath.Join(mnt, "data")
	sock := filepath.Join(testproc.ShortDir(t), "hostd.sock")
	// A guest sends audit events all along, as fast as they are
	// acknowledged: what the host acknowledges must survive.
	gsock := filepath.Join(testproc.ShortDir(t), "guest.sock")
	g := startFakeGuest(t, gsock, &fakeGuest{hello: protocol.HelloAck{AgentVersion: "1", BootID: "b"}, flood: 20, floodDetail: 200})
	args := []string{"--min-free-space", fmt.Sprint(16 << 20), "--instance=vm1=unix:" + gsock}
	h := startHostd(t, data, sock, args...)
	var acked []string
	create := func(name string) int {
		a, err := call(h.client, "POST", "/personas", map[string]any{"name": name, "pre_activation_script": strings.Repeat("# pad\n", 4<<10)})
		if err != nil {
			t.Fatalf("POST /personas: %v\n%s", err, h.stderr)
		}
		if a.status == 201 {
			acked = append(acked, name)
		} else {
			checkProblem(t, "create under a full disk", a)
		}
		return a.status
	}
	for i := range 5 {
		if s := create(fmt.Sprintf("before-%d", i)); s != 201 {
			t.Fatalf("create with space: %d", s)
		}
	}

	// Under the watermark: 507, reads work, /readyz says why.
	fill(t, filepath.Join(mnt, "filler-1"), 8)
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, _ := call(h.client, "GET", "/readyz", nil)
		if a.status == 503 && strings.Contains(string(a.body), "watermark") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with %d MB free: %d %s", freeMB(t, mnt), a.status, a.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := create("refused"); s != 507 {
		t.Fatalf("create under the watermark: %d, want 507", s)
	}
	if got := h.metric(t, "vmpersona_storage_low"); got != 1 {
		t.Errorf("vmpersona_storage_low = %v under the watermark", got)
	}
	// The guest's events are not acknowledged while writes are refused:
	// they wait in its spool.
	time.Sleep(500 * time.Millisecond)
	held := g.acked.Load()
	time.Sleep(time.Second)
	if now := g.acked.Load(); now != held {
		t.Errorf("guest audit acknowledged under the watermark: up to %d, then %d", held, now)
	}
	// Completely full: still an answer, never a crash.
	fill(t, filepath.Join(mnt, "filler-2"), 0)
	for i := range 20 {
		if s := create(fmt.Sprintf("full-%d", i)); s != 507 {
			t.Fatalf("create on a full disk: %d, want 507", s)
		}
		h.must(t, "GET", "/personas/before-0", nil, 200)
		h.must(t, "GET", "/audit?limit=5", nil, 200)
	}
	if h.Exited() {
		t.Fatalf("hostd died on a full disk: %s", h.stderr)
	}
	// A restart while the disk is full (as Restart=on-failure would do)
	// comes up and answers the same way instead of failing again.
	h.Cmd.Process.Signal(syscall.SIGTERM)
	<-h.Done()
	h = startHostd(t, data, sock, args...)
	h.must(t, "GET", "/personas/before-0", nil, 200)
	if s := create("full-after-restart"); s != 507 {
		t.Fatalf("create on a full disk after a restart: %d, want 507", s)
	}
	if a, _ := call(h.client, "GET", "/readyz", nil); a.status != 503 {
		t.Fatalf("/readyz on a full disk after a restart: %d %s", a.status, a.body)
	}

	// Space returns: writes resume by themselves.
	os.Remove(filepath.Join(mnt, "filler-1"))
	os.Remove(filepath.Join(mnt, "filler-2"))
	deadline = time.Now().Add(10 * time.Second)
	for create("after") != 201 {
		if time.Now().After(deadline) {
			t.Fatalf("writes did not resume with %d MB free", freeMB(t, mnt))
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.must(t, "GET", "/readyz", nil, 200)
	if got := h.metric(t, "vmpersona_storage_low"); got != 0 {
		t.Errorf("vmpersona_storage_low = %v after space returned", got)
	}
	deadline = time.Now().Add(10 * time.Second)
	for g.acked.Load() <= held {
		if time.Now().After(deadline) {
			t.Fatalf("guest audit not acknowledged again after space returned (up to %d)", held)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Nothing acknowledged is lost.
	h.Cmd.Process.Signal(syscall.SIGTERM)
	<-h.Done()
	h = startHostd(t, data, sock, args...)
	for _, name := range acked {
		h.must(t, "GET", "/personas/"+name, nil, 200)
	}
	upTo := g.acked.Load()
	seqs := map[float64]bool{}
	for _, ev := range h.auditEvents(t, "instance=vm1") {
		if s, ok := ev["guest_seq"].(float64); ok {
			seqs[s] = true
		}
	}
	for s := uint64(1); s <= upTo; s++ {
		if !seqs[float64(s)] {
			t.Fatalf("guest audit event %d was acknowledged (up to %d) but is not stored", s, upTo)
		}
	}
	t.Logf("%s: %d personas and %d guest audit events acknowledged, all present after a restart", kind, len(acked), upTo)
}
