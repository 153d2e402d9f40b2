package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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
	ps, err := s.cfg.Store.ListPersonas()
	if err != nil {
		return err
	}
	for i := range ps {
		validate.Normalize(&ps[i])
	}
	writeJSON(w, http.StatusOK, apitypes.PersonaList{Personas: ps})
	return nil
}

func (s *Server) getPersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name := ps.ByName("name")
	if err := validate.Name(name); err != nil {
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
	created, err := s.cfg.Store.CreatePersona(p)
	if err != nil {
		if errors.Is(err, errdefs.ErrAlreadyExists) {
			err = errdefs.WithMessage(err, fmt.Sprintf("persona %q already exists; use PUT /personas/%s to change it", p.Name, p.Name))
		}
		return err
	}
	s.appendAudit(store.AuditEvent{Type: protocol.AuditPersonaCreated, Actor: identityOf(r).User, Persona: created.Name, Result: "revision " + strconv.FormatUint(created.Revision, 10)})
	w.Header().Set("Location", "/personas/"+url.PathEscape(created.Name))
	writePersona(w, http.StatusCreated, created)
	return nil
}

func (s *Server) updatePersona(w http.ResponseWriter, r *http.Request, ps httprouter.Params) error {
	name := ps.ByName("name")
	if err := validate.Name(name); err != nil {
		return err
	}
	ifMatch, err := parseIfMatch(r)
	if err != nil {
		return err
	}
	var p protocol.Persona
	if err := decodeJSON(r, &p); err != nil {
		return err
	}
	if p.Name == "" {
		p.Name = name
	}
	if p.Name != name {
		return errdefs.InvalidField("name", fmt.Sprintf("name %q in the body differs from %q in the path; renaming is not supported", p.Name, name))
	}
	if err := validate.Persona(&p); err != nil {
		return err
	}
	updated, err := s.cfg.Store.UpdatePersona(p, ifMatch)
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
	name := ps.ByName("name")
	if err := validate.Name(name); err != nil {
		return err
	}
	ifMatch, err := parseIfMatch(r)
	if err != nil {
		return err
	}
	force, err := boolQuery(r, "force")
	if err != nil {
		return err
	}
	if err := s.cfg.Store.DeletePersona(name, ifMatch, force); err != nil {
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

// parseIfMatch returns the revision an If-Match header requires, 0 for none.
func parseIfMatch(r *http.Request) (uint64, error) {
	h := strings.TrimSpace(r.Header.Get("If-Match"))
	if h == "" || h == "*" {
		return 0, nil
	}
	v := strings.TrimPrefix(h, "W/")
	v = strings.Trim(v, `"`)
	rev, err := strconv.ParseUint(v, 10, 64)
	if err != nil || rev == 0 {
		return 0, problem(http.StatusBadRequest, "bad-if-match", "Bad If-Match", fmt.Sprintf("If-Match %q is not a revision ETag such as \"3\"", h), "field", "If-Match")
	}
	return rev, nil
}

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
