package store

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/vmpersona/vmpersona/protocol"
)

var t0 = time.Date(2026, 11, 26, 9, 0, 0, 0, time.UTC)

func ids(evs []AuditEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
	}
	return out
}

func TestAppendAudit(t *testing.T) {
	s := openTemp(t)
	before := time.Now()
	out, err := s.AppendAudit(
		AuditEvent{Type: AuditPersonaCreated, Persona: "p", Actor: "alice", Source: "guest"},
		AuditEvent{Type: AuditExec, Time: t0.In(time.FixedZone("X", 7200)), Instance: "vm1", Command: "ls"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].ID == "" || out[1].ID == "" || out[0].ID == out[1].ID {
		t.Fatalf("AppendAudit IDs = %v", ids(out))
	}
	if out[0].Time.Before(before.Add(-time.Second)) || out[0].Time.Location() != time.UTC {
		t.Errorf("zero time became %v, want now in UTC", out[0].Time)
	}
	if out[0].Source != SourceHost || out[1].Source != SourceHost {
		t.Errorf("sources = %q, %q; want host", out[0].Source, out[1].Source)
	}
	if !out[1].Time.Equal(t0) || out[1].Time.Location() != time.UTC {
		t.Errorf("time = %v, want %v in UTC", out[1].Time, t0)
	}
	got, err := s.QueryAudit(AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	// In the order they were stored, whatever time they carry.
	if want := []AuditEvent{out[0], out[1]}; !reflect.DeepEqual(got, want) {
		t.Fatalf("QueryAudit = %+v\nwant %+v", got, want)
	}
	if _, err := s.AppendAudit(AuditEvent{}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("AppendAudit without type = %v, want ErrInvalidArgument", err)
	}
	if out, err := s.AppendAudit(); err != nil || len(out) != 0 {
		t.Fatalf("AppendAudit() = %v, %v", out, err)
	}
}

// Order is the order the host stored events in, whatever time they carry
// (a time in 2200 cannot move the cursor past later events); IDs sort the
// same way.
func TestAuditOrder(t *testing.T) {
	s := openTemp(t)
	times := []time.Time{t0.Add(3 * time.Second), t0, t0.AddDate(174, 0, 0), t0, t0.Add(-time.Hour), time.Unix(0, 0).Add(-time.Hour)}
	var appended []AuditEvent
	for i, tm := range times {
		out, err := s.AppendAudit(AuditEvent{Type: "t", Time: tm, Detail: fmt.Sprint(i)})
		if err != nil {
			t.Fatal(err)
		}
		appended = append(appended, out...)
	}
	got, _ := s.QueryAudit(AuditQuery{})
	var details []string
	for _, e := range got {
		details = append(details, e.Detail)
	}
	if want := []string{"0", "1", "2", "3", "4", "5"}; !reflect.DeepEqual(details, want) {
		t.Fatalf("order = %v, want %v", details, want)
	}
	if !slices.IsSorted(ids(got)) {
		t.Fatalf("IDs not sorted: %v", ids(got))
	}
	// The IDs the appends answered are those the query lists.
	if want := slices.Sorted(slices.Values(ids(appended))); !slices.Equal(ids(got), want) {
		t.Fatalf("queried IDs %v, appended %v", ids(got), want)
	}
}

func guestEvents(from, to uint64) []protocol.AuditEvent {
	var evs []protocol.AuditEvent
	for seq := from; seq <= to; seq++ {
		evs = append(evs, protocol.AuditEvent{
			Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond), Type: protocol.AuditExec,
			Persona: "p", Command: "ls", Route: protocol.RouteDefault, Result: "0", Actor: "bob",
		})
	}
	return evs
}

func seqs(evs []AuditEvent) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.GuestSeq)
	}
	return out
}

func TestIngestGuestAudit(t *testing.T) {
	s := openTemp(t)
	b := protocol.AuditBatch{SpoolID: "spool-a", Events: guestEvents(1, 5)}
	upTo, ins, err := s.IngestGuestAudit("vm1", b)
	if err != nil {
		t.Fatal(err)
	}
	if upTo != 5 || !reflect.DeepEqual(seqs(ins), []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("first ingest upTo %d, seqs %v", upTo, seqs(ins))
	}
	e := ins[2]
	if e.Instance != "vm1" || e.Source != SourceGuest || e.GuestSpool != "spool-a" || e.GuestSeq != 3 ||
		e.Type != "exec" || e.Persona != "p" || e.Command != "ls" || e.Route != "default" || e.Actor != "bob" ||
		!e.GuestTime.Equal(t0.Add(3*time.Millisecond)) || e.ClockSkew || e.ID == "" {
		t.Fatalf("ingested event = %+v", e)
	}

	// The same batch again: nothing new, same upTo.
	upTo, ins, err = s.IngestGuestAudit("vm1", b)
	if err != nil || upTo != 5 || len(ins) != 0 {
		t.Fatalf("repeated ingest = %d, %v, %v; want 5, none", upTo, seqs(ins), err)
	}
	// Overlapping batch: only 6..8 are new.
	upTo, ins, err = s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "spool-a", Events: guestEvents(3, 8)})
	if err != nil || upTo != 8 || !reflect.DeepEqual(seqs(ins), []uint64{6, 7, 8}) {
		t.Fatalf("overlapping ingest = %d, %v, %v; want 8, [6 7 8]", upTo, seqs(ins), err)
	}
	// A batch that repeats a seq inside itself stores it once.
	dup := guestEvents(9, 10)
	dup = append(dup, dup[0])
	if upTo, ins, err = s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "spool-a", Events: dup}); err != nil || upTo != 10 || !reflect.DeepEqual(seqs(ins), []uint64{9, 10}) {
		t.Fatalf("self-duplicating batch = %d, %v, %v", upTo, seqs(ins), err)
	}
	// The same seqs under a new spool (guest state recreated) or another
	// instance are different events.
	if _, ins, _ = s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "spool-b", Events: guestEvents(1, 2)}); len(ins) != 2 {
		t.Fatalf("new spool inserted %d, want 2", len(ins))
	}
	if _, ins, _ = s.IngestGuestAudit("vm2", protocol.AuditBatch{SpoolID: "spool-a", Events: guestEvents(1, 2)}); len(ins) != 2 {
		t.Fatalf("other instance inserted %d, want 2", len(ins))
	}
	all, _ := s.QueryAudit(AuditQuery{Limit: 1000})
	if len(all) != 14 {
		t.Fatalf("%d events stored, want 14", len(all))
	}
	vm1a, _ := s.QueryAudit(AuditQuery{Instance: "vm1", Limit: 1000})
	count := 0
	for _, e := range vm1a {
		if e.GuestSpool == "spool-a" {
			count++
		}
	}
	if count != 10 {
		t.Fatalf("vm1/spool-a holds %d events, want 10 (exactly once)", count)
	}

	// Empty batch; bad arguments.
	if upTo, ins, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "x"}); err != nil || upTo != 0 || len(ins) != 0 {
		t.Fatalf("empty batch = %d, %v, %v", upTo, ins, err)
	}
	for _, tc := range []struct{ inst, spool string }{{"", "s"}, {"vm1", ""}, {"vm\x00", "s"}, {"vm1", "s\x00"}} {
		if _, _, err := s.IngestGuestAudit(tc.inst, protocol.AuditBatch{SpoolID: tc.spool, Events: guestEvents(1, 1)}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("IngestGuestAudit(%q, %q) = %v, want ErrInvalidArgument", tc.inst, tc.spool, err)
		}
	}
}

func TestIngestZeroTime(t *testing.T) {
	s := openTemp(t)
	before := time.Now()
	_, ins, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "s", Events: []protocol.AuditEvent{{Seq: 1, Type: "denial"}}})
	if err != nil {
		t.Fatal(err)
	}
	if ins[0].Time.Before(before.Add(-time.Second)) {
		t.Fatalf("zero guest time became %v, want now", ins[0].Time)
	}
}

// Several sessions delivering the same batch at once still store each event
// once (the dedup read conflicts and the loser retries).
func TestIngestConcurrentSameBatch(t *testing.T) {
	s := openTemp(t)
	b := protocol.AuditBatch{SpoolID: "s", Events: guestEvents(1, 50)}
	const n = 6
	var wg sync.WaitGroup
	total := make([]int, n)
	for i := range n {
		wg.Go(func() {
			upTo, ins, err := s.IngestGuestAudit("vm1", b)
			if err != nil || upTo != 50 {
				t.Errorf("ingest %d: upTo %d, %v", i, upTo, err)
			}
			total[i] = len(ins)
		})
	}
	wg.Wait()
	sum := 0
	for _, c := range total {
		sum += c
	}
	all, _ := s.QueryAudit(AuditQuery{Limit: 1000})
	if sum != 50 || len(all) != 50 {
		t.Fatalf("inserted %d in total, %d stored; want 50 and 50", sum, len(all))
	}
}

// A batch bigger than one transaction is split, still exactly once.
func TestIngestLargeBatch(t *testing.T) {
	s := openTemp(t)
	evs := guestEvents(1, 3000)
	for i := range evs {
		evs[i].Detail = strings.Repeat("d", 2000)
	}
	evs[10].Detail = strings.Repeat("\x01", 3<<20) // escapes to 18 MiB of JSON: a transaction of its own
	upTo, ins, err := s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "s", Events: evs})
	if err != nil || upTo != 3000 || len(ins) != 3000 {
		t.Fatalf("large ingest = %d, %d inserted, %v", upTo, len(ins), err)
	}
	_, ins, err = s.IngestGuestAudit("vm1", protocol.AuditBatch{SpoolID: "s", Events: evs})
	if err != nil || len(ins) != 0 {
		t.Fatalf("large re-ingest inserted %d, %v", len(ins), err)
	}
	got, _ := s.QueryAudit(AuditQuery{Limit: MaxAuditLimit})
	if len(got) != 3000 || len(got[10].Detail) > MaxGuestDetail || !strings.HasPrefix(got[10].Detail, "\x01\x01") {
		t.Fatalf("stored %d events (big detail cut to its bound: %v)", len(got), len(got) > 10 && len(got[10].Detail) <= MaxGuestDetail)
	}
}

func TestQueryAudit(t *testing.T) {
	s := openTemp(t)
	var all []AuditEvent
	for i := range 20 {
		s.now = func() time.Time { return t0.Add(time.Duration(i) * time.Minute) }
		ev := AuditEvent{
			Instance: []string{"vm1", "vm2"}[i%2],
			Persona:  []string{"p", "q", "r"}[i%3],
			Type:     []string{AuditExec, AuditActivationRequested}[i/10],
		}
		out, err := s.AppendAudit(ev)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, out...)
	}
	filter := func(f func(i int, e AuditEvent) bool) []string {
		var out []string
		for i, e := range all {
			if f(i, e) {
				out = append(out, e.ID)
			}
		}
		return out
	}
	tests := []struct {
		name string
		q    AuditQuery
		want []string
	}{
		{"all", AuditQuery{}, ids(all)},
		{"instance", AuditQuery{Instance: "vm2"}, filter(func(i int, e AuditEvent) bool { return i%2 == 1 })},
		{"persona", AuditQuery{Persona: "q"}, filter(func(i int, e AuditEvent) bool { return i%3 == 1 })},
		{"type", AuditQuery{Type: AuditActivationRequested}, filter(func(i int, e AuditEvent) bool { return i >= 10 })},
		{"instance and persona", AuditQuery{Instance: "vm1", Persona: "p"}, filter(func(i int, e AuditEvent) bool { return i%6 == 0 })},
		{"since inclusive", AuditQuery{Since: t0.Add(15 * time.Minute)}, ids(all[15:])},
		{"until exclusive", AuditQuery{Until: t0.Add(5 * time.Minute)}, ids(all[:5])},
		{"since and until", AuditQuery{Since: t0.Add(3 * time.Minute), Until: t0.Add(6 * time.Minute)}, ids(all[3:6])},
		{"since in another zone", AuditQuery{Since: t0.Add(15 * time.Minute).In(time.FixedZone("Y", -5*3600))}, ids(all[15:])},
		{"after cursor", AuditQuery{After: all[16].ID}, ids(all[17:])},
		{"after cursor and since before it", AuditQuery{After: all[16].ID, Since: t0}, ids(all[17:])},
		{"after cursor before since", AuditQuery{After: all[2].ID, Since: t0.Add(18 * time.Minute)}, ids(all[18:])},
		{"instance since", AuditQuery{Instance: "vm1", Since: t0.Add(13 * time.Minute)}, filter(func(i int, e AuditEvent) bool { return i%2 == 0 && i >= 13 })},
		{"persona until", AuditQuery{Persona: "p", Until: t0.Add(9 * time.Minute)}, filter(func(i int, e AuditEvent) bool { return i%3 == 0 && i < 9 })},
		{"type after cursor", AuditQuery{Type: AuditExec, After: all[4].ID}, ids(all[5:10])},
		{"type after a cursor of another type", AuditQuery{Type: AuditActivationRequested, After: all[3].ID}, ids(all[10:])},
		{"limit", AuditQuery{Limit: 3}, ids(all[:3])},
		{"limit with filter", AuditQuery{Limit: 2, Persona: "r"}, []string{all[2].ID, all[5].ID}},
		{"nothing", AuditQuery{Instance: "vm9"}, nil},
		{"since after everything", AuditQuery{Since: t0.Add(time.Hour)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.QueryAudit(tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("QueryAudit returned nil, want a non-nil slice")
			}
			if g := ids(got); !slices.Equal(g, tc.want) {
				t.Fatalf("got %v\nwant %v", g, tc.want)
			}
		})
	}

	// Paging with the cursor visits every matching event exactly once.
	var paged []string
	q := AuditQuery{Instance: "vm1", Limit: 3}
	for {
		page, err := s.QueryAudit(q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, ids(page)...)
		q.After = page[len(page)-1].ID
	}
	if want := filter(func(i int, e AuditEvent) bool { return i%2 == 0 }); !slices.Equal(paged, want) {
		t.Fatalf("paged %v\nwant %v", paged, want)
	}

	for _, bad := range []string{"x", strings.Repeat("g", 32), strings.ToUpper(all[0].ID)} {
		if _, err := s.QueryAudit(AuditQuery{After: bad}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("QueryAudit(After %q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

// Values the indexes cannot hold as they are: over the indexed length, or
// with a NUL that makes one value a prefix of another.
func TestQueryAuditOddValues(t *testing.T) {
	s := openTemp(t)
	long := strings.Repeat("L", maxIndexedValue+1)
	evs, err := s.AppendAudit(
		AuditEvent{Type: "t", Time: t0, Persona: long},
		AuditEvent{Type: "t", Time: t0.Add(1), Persona: "a"},
		AuditEvent{Type: "t", Time: t0.Add(2), Persona: "a\x00b"},
		AuditEvent{Type: "t\x00" + strings.Repeat("z", 40), Time: t0.Add(3), Persona: "a\x00"},
		AuditEvent{Type: "t", Time: t0.Add(4), Persona: long + "x"},
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		q    AuditQuery
		want []string
	}{
		{AuditQuery{Persona: long}, []string{evs[0].ID}},
		{AuditQuery{Persona: "a"}, []string{evs[1].ID}},
		{AuditQuery{Persona: "a\x00b"}, []string{evs[2].ID}},
		{AuditQuery{Persona: "a\x00"}, []string{evs[3].ID}},
		{AuditQuery{Type: "t"}, []string{evs[0].ID, evs[1].ID, evs[2].ID, evs[4].ID}},
		{AuditQuery{Type: "t\x00" + strings.Repeat("z", 40)}, []string{evs[3].ID}},
	} {
		got, err := s.QueryAudit(tc.q)
		if err != nil {
			t.Fatal(err)
		}
		if g := ids(got); !slices.Equal(g, tc.want) {
			t.Errorf("QueryAudit(persona %.10q type %.10q) = %v, want %v", tc.q.Persona, tc.q.Type, g, tc.want)
		}
	}
}

func TestQueryAuditLimits(t *testing.T) {
	s := openTemp(t)
	evs := make([]AuditEvent, MaxAuditLimit+50)
	for i := range evs {
		evs[i] = AuditEvent{Type: "t", Time: t0.Add(time.Duration(i))}
	}
	if _, err := s.AppendAudit(evs...); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ limit, want int }{{0, DefaultAuditLimit}, {-5, DefaultAuditLimit}, {7, 7}, {MaxAuditLimit + 1, MaxAuditLimit}} {
		got, err := s.QueryAudit(AuditQuery{Limit: tc.limit})
		if err != nil || len(got) != tc.want {
			t.Errorf("Limit %d: %d events, %v; want %d", tc.limit, len(got), err, tc.want)
		}
	}
}

// expiresAt reads the Badger expiry of a key, for white-box TTL checks.
func expiresAt(t *testing.T, s *Store, key []byte) uint64 {
	t.Helper()
	var exp uint64
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		if err != nil {
			return err
		}
		exp = item.ExpiresAt()
		return nil
	})
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return exp
}

func TestAuditNoRetention(t *testing.T) {
	s := openTemp(t)
	out, _ := s.AppendAudit(AuditEvent{Type: "t"})
	if exp := expiresAt(t, s, auditKey(out[0].ID)); exp != 0 {
		t.Fatalf("audit entry expires at %d without retention", exp)
	}
}

func TestAuditRetention(t *testing.T) {
	const retention = 2 * time.Second
	s := openAt(t, t.TempDir(), Options{AuditRetention: retention})
	// Personas and instance records never expire.
	mustCreate(t, s, persona("p"))
	if err := s.PutInstance(InstanceRecord{Instance: "vm1"}); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	host, err := s.AppendAudit(AuditEvent{Type: AuditPersonaCreated})
	if err != nil {
		t.Fatal(err)
	}
	b := protocol.AuditBatch{SpoolID: "s", Events: guestEvents(1, 1)}
	_, guest, err := s.IngestGuestAudit("vm1", b)
	if err != nil || len(guest) != 1 {
		t.Fatal(err)
	}
	// Every audit entry and the dedup key carry the TTL.
	limit := uint64(written.Add(retention).Unix()) + 1
	for _, k := range [][]byte{
		auditKey(host[0].ID), auditKey(guest[0].ID), dedupKey("vm1", "s", 1),
		append(indexPrefix(indexInstance, "vm1"), guest[0].ID...),
		append(indexPrefix(indexType, AuditPersonaCreated), host[0].ID...),
	} {
		if exp := expiresAt(t, s, k); exp == 0 || exp > limit {
			t.Errorf("key %q expires at %d, want in (0, %d]", k, exp, limit)
		}
	}
	if exp := expiresAt(t, s, personaKey("p")); exp != 0 {
		t.Errorf("persona expires at %d", exp)
	}

	// Wait for expiry (bounded, so a broken TTL fails instead of hanging).
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := s.QueryAudit(AuditQuery{})
		if err != nil {
			t.Fatal(err)
		}
		byIndex, err := s.QueryAudit(AuditQuery{Instance: "vm1"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 && len(byIndex) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d audit events still present long after their retention", len(got))
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The dedup key expired with its event: the same event is new again.
	if _, ins, err := s.IngestGuestAudit("vm1", b); err != nil || len(ins) != 1 {
		t.Fatalf("ingest after expiry inserted %d, %v; want 1", len(ins), err)
	}
	if _, err := s.GetPersona("p"); err != nil {
		t.Fatalf("persona gone after audit retention: %v", err)
	}
	if _, err := s.GetInstance("vm1"); err != nil {
		t.Fatalf("instance record gone after audit retention: %v", err)
	}
}

func TestOpenNegativeRetention(t *testing.T) {
	if s, err := Open(t.TempDir(), Options{AuditRetention: -time.Second, Logger: quietLogger()}); !errors.Is(err, ErrInvalidArgument) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open(negative retention) = %v, want ErrInvalidArgument", err)
	}
}
