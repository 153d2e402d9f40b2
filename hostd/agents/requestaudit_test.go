package agents

import (
	"sync"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/protocol"
)

// writes notes which store call wrote each request event; the writes go to
// the real store.
type writes struct {
	*store.Store
	mu       sync.Mutex
	byRecord []string // request events written by PutInstance
	alone    []string // request events written by AppendAudit
}

func (w *writes) PutInstance(rec store.InstanceRecord, evs ...store.AuditEvent) error {
	err := w.Store.PutInstance(rec, evs...)
	if err == nil {
		w.mu.Lock()
		for _, ev := range evs {
			w.byRecord = append(w.byRecord, ev.Detail)
		}
		w.mu.Unlock()
	}
	return err
}

func (w *writes) AppendAudit(evs ...store.AuditEvent) ([]store.AuditEvent, error) {
	out, err := w.Store.AppendAudit(evs...)
	if err == nil {
		w.mu.Lock()
		for _, ev := range evs {
			if ev.Type == store.AuditActivationRequested || ev.Type == store.AuditDeactivationRequested {
				w.alone = append(w.alone, ev.Detail)
			}
		}
		w.mu.Unlock()
	}
	return out, err
}

// The audit events handed to Activate and Deactivate ride in the commit of
// the instance record the outcome writes, or are written alone when it
// writes none; once each either way.
func TestRequestAuditGoesWithTheOutcome(t *testing.T) {
	g := newGuest(t)
	var w *writes
	h := newHost(t, func(c *Config) {
		w = &writes{Store: c.Store.(*store.Store)}
		c.Store = w
	})
	h.add("vm", g.endpoint())
	h.waitState("vm", StateConnected)
	ok := h.createPersona(hardened())
	fails := h.createPersona(protocol.Persona{Name: "fails", PreActivationScript: "#!/bin/sh\nexit 3\n"})
	ctx := ctxTimeout(t, 30*time.Second)
	req := func(typ, detail string) store.AuditEvent {
		return store.AuditEvent{Type: typ, Actor: "alice", Detail: detail}
	}

	if _, err := h.m.Activate(ctx, "vm", ok, "alice", "api", 0, req(store.AuditActivationRequested, "activated")); err != nil {
		t.Fatal(err)
	}
	if res, err := h.m.Activate(ctx, "vm", fails, "alice", "api", 0, req(store.AuditActivationRequested, "aborted")); err != nil || res.Result != protocol.ResultAborted {
		t.Fatalf("activate fails = %+v, %v; want aborted", res, err)
	}
	if _, err := h.m.Activate(ctx, "nope", ok, "alice", "api", 0, req(store.AuditActivationRequested, "unknown")); err == nil {
		t.Fatal("activation on an unknown instance succeeded")
	}
	if _, err := h.m.Deactivate(ctx, "vm", "alice", 0, req(store.AuditDeactivationRequested, "deactivated")); err != nil {
		t.Fatal(err)
	}

	w.mu.Lock()
	byRecord, alone := w.byRecord, w.alone
	w.mu.Unlock()
	if len(byRecord) != 2 || byRecord[0] != "activated" || byRecord[1] != "deactivated" {
		t.Errorf("written with the instance record: %q, want [activated deactivated]", byRecord)
	}
	if len(alone) != 2 || alone[0] != "aborted" || alone[1] != "unknown" {
		t.Errorf("written alone: %q, want [aborted unknown]", alone)
	}
	count := map[string]int{}
	for _, ev := range h.audit(store.AuditQuery{}) {
		if ev.Actor == "alice" && ev.Source == store.SourceHost {
			count[ev.Detail]++
			if ev.Detail == "unknown" && ev.Instance != "nope" || ev.Detail == "activated" && ev.Instance != "vm" {
				t.Errorf("event %s is about %q", ev.Detail, ev.Instance)
			}
		}
	}
	for _, d := range []string{"activated", "aborted", "unknown", "deactivated"} {
		if count[d] != 1 {
			t.Errorf("request %q audited %d times, want 1 (all: %v)", d, count[d], count)
		}
	}
}
