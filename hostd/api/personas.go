package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/julienschmidt/httprouter"

	"github.com/vmpersona/vmpersona/errdefs"
	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/hostd/store"
	"github.com/vmpersona/vmpersona/hostd/validate"
	"github.com/vmpersona/vmpersona/protocol"
)

func (s *Server) listPersonas(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	limit, after, err := pageQuery(r)
	if err != nil {
		return err
	}
	ps, err := s.cfg.Store.ListPersonas()
	if err != nil {
		return err
	}
	if !sort.SliceIsSorted(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name }) {
		sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	}
	from, to, next := pageOf(len(ps), func(i int) string { return ps[i].Name }, limit, after)
	ps = ps[from:to]
	for i := range ps {
		validate.Normalize(&ps[i])
	}
	writeJSON(w, http.StatusOK, apitypes.PersonaList{Personas: ps, Next: next})
	return nil
}

func (s *Server) getPersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, ifNoneMatch, err := personaTarget(r, ps, "If-None-Match")
	if err != nil {
		return err
	}
	rev, at, err := s.cfg.Store.PersonaVersion(name)
	if err != nil {
		s.personaJSON.forget(name)
		return personaErr(name, err)
	}
	body, ok := s.personaJSON.get(name, rev, at)
	if !ok {
		p, err := s.cfg.Store.GetPersona(name)
		if err != nil {
			return personaErr(name, err)
		}
		validate.Normalize(&p)
		body = encodeJSON(p)
		rev = p.Revision
		s.personaJSON.put(name, p.Revision, p.UpdatedAt, body)
	}
	h := w.Header()
	h.Set("ETag", etag(rev))
	if ifNoneMatch.present && ifNoneMatch.matchWeak(rev) {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(body)
	return nil
}

// personaJSONCache holds each persona's encoded GET answer, keyed by the
// version it encodes (revision and update time), so reads of an unchanged
// persona cost no encoding. An entry of an older version is simply replaced.
type personaJSONCache struct {
	mu sync.RWMutex
	m  map[string]personaJSONEntry
}

type personaJSONEntry struct {
	rev  uint64
	at   time.Time
	body []byte // never modified once stored
}

// maxPersonaJSONEntries bounds the cache; past it, it starts again empty.
const maxPersonaJSONEntries = 4096

func (c *personaJSONCache) get(name string, rev uint64, at time.Time) ([]byte, bool) {
	c.mu.RLock()
	e, ok := c.m[name]
	c.mu.RUnlock()
	if !ok || e.rev != rev || !e.at.Equal(at) {
		return nil, false
	}
	return e.body, true
}

func (c *personaJSONCache) put(name string, rev uint64, at time.Time, body []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxPersonaJSONEntries {
		c.m = map[string]personaJSONEntry{}
	}
	c.m[name] = personaJSONEntry{rev: rev, at: at, body: body}
}

func (c *personaJSONCache) forget(name string) {
	c.mu.Lock()
	delete(c.m, name)
	c.mu.Unlock()
}

func (s *Server) createPersona(w http.ResponseWriter, r *http.Request, _ httprouter.Params) error {
	var p protocol.Persona
	if err := decodeJSON(r, &p); err != nil {
		return err
	}
	if err := validate.Persona(&p); err != nil {
		return err
	}
	created, err := s.storeCreatePersona(r, p)
	if err != nil {
		if errors.Is(err, errdefs.ErrAlreadyExists) {
			err = errdefs.WithMessage(err, fmt.Sprintf("persona %q already exists; use PUT /personas/%s to change it", p.Name, p.Name))
		}
		return err
	}
	s.personaCreated(w, r, created)
	return nil
}

// personaCreated records a new persona's audit event and answers it (201).
func (s *Server) personaCreated(w http.ResponseWriter, r *http.Request, created protocol.Persona) {
	s.appendAudit(store.AuditEvent{Type: protocol.AuditPersonaCreated, Actor: identityOf(r).User, Persona: created.Name, Result: "revision " + strconv.FormatUint(created.Revision, 10)})
	w.Header().Set("Location", "/personas/"+url.PathEscape(created.Name))
	writePersona(w, http.StatusCreated, created)
}

func (s *Server) updatePersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, ifMatch, err := personaTarget(r, ps, "If-Match")
	if err != nil {
		return err
	}
	ifNoneMatch, err := parseTagList(r, "If-None-Match")
	if err != nil {
		return err
	}
	var p protocol.Persona
	if err := decodeJSON(r, &p); err != nil {
		return err
	}
	if err := nameFromPath(&p.Name, name); err != nil {
		return err
	}
	if err := validate.Persona(&p); err != nil {
		return err
	}
	rev, _, err := s.cfg.Store.PersonaVersion(name)
	exists := err == nil
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	// If-None-Match: * asks to create the persona when it does not exist
	// (and only then); a list of tags refuses to overwrite those versions.
	if ifNoneMatch.present && exists && ifNoneMatch.matchWeak(rev) {
		return preconditionFailed("If-None-Match", name, rev, true)
	}
	if !exists {
		if !ifNoneMatch.any {
			return personaErr(name, err)
		}
		created, err := s.storeCreatePersona(r, p)
		if errors.Is(err, errdefs.ErrAlreadyExists) {
			// Created by another request since the check above.
			return preconditionFailed("If-None-Match", name, 0, true)
		}
		if err != nil {
			return err
		}
		s.personaCreated(w, r, created)
		return nil
	}
	// The store compares the revision again in the write's transaction, so
	// a change between this check and the write is a 412 too.
	want, err := ifMatch.revisionToMatch("persona", name, func() (uint64, error) { return rev, nil })
	if err != nil {
		return err
	}
	updated, err := s.storeUpdatePersona(r, p, want)
	if err != nil {
		return personaErr(name, err)
	}
	s.appendAudit(store.AuditEvent{Type: protocol.AuditPersonaUpdated, Actor: identityOf(r).User, Persona: name, Result: "revision " + strconv.FormatUint(updated.Revision, 10)})
	// Running guests keep their revision (their instances show drifted)
	// until a rollout, which the persona may ask for at once.
	if updated.Rollout == "auto" {
		s.cfg.Reconciler.AutoRollout(name, identityOf(r).User)
	}
	writePersona(w, http.StatusOK, updated)
	return nil
}

func (s *Server) deletePersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name, ifMatch, err := personaTarget(r, ps, "If-Match")
	if err != nil {
		return err
	}
	force, err := boolQuery(r, "force")
	if err != nil {
		return err
	}
	want, err := ifMatch.revisionToMatch("persona", name, func() (uint64, error) {
		rev, _, err := s.cfg.Store.PersonaVersion(name)
		return rev, personaErr(name, err)
	})
	if err != nil {
		return err
	}
	if err := s.cfg.Store.DeletePersona(name, want, force); err != nil {
		return personaErr(name, err)
	}
	detail := ""
	if force {
		detail = "force"
	}
	s.personaJSON.forget(name)
	s.appendAudit(store.AuditEvent{Type: protocol.AuditPersonaDeleted, Actor: identityOf(r).User, Persona: name, Detail: detail})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// personaTarget is the persona a request names in its path (checked) and
// the request's conditional header h (If-Match, If-None-Match).
func personaTarget(r *http.Request, ps httprouter.Params, h string) (string, tagList, error) {
	name := ps.ByName("name")
	if err := validate.Name(name); err != nil {
		return "", tagList{}, err
	}
	tags, err := parseTagList(r, h)
	return name, tags, err
}

// personaErr says which persona a store error is about.
func personaErr(name string, err error) error {
	if errors.Is(err, errdefs.ErrNotFound) {
		return errdefs.WithDetails(errdefs.WithMessage(err, fmt.Sprintf("no persona named %q", name)), "persona", name)
	}
	return err
}

func writePersona(w http.ResponseWriter, status int, p protocol.Persona) {
	validate.Normalize(&p)
	w.Header().Set("ETag", etag(p.Revision))
	writeJSON(w, status, p)
}

func etag(rev uint64) string { return `"` + strconv.FormatUint(rev, 10) + `"` }

func boolQuery(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, problem(http.StatusBadRequest, "bad-query", "Bad query parameter", fmt.Sprintf("%s=%q is not true or false", key, v), "field", key)
	}
	return b, nil
}
