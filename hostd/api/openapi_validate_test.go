package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// Every answer the API tests receive (through env.do) is validated against
// openapi.json with kin-openapi's openapi3filter: its status must be
// documented for the operation, its headers and body must fit the schema.
// An NDJSON stream is validated line by line against the line schema.

var openapiValidator struct {
	once   sync.Once
	router routers.Router
	err    error
}

func openapiRouter(t *testing.T) routers.Router {
	t.Helper()
	v := &openapiValidator
	v.once.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(openapiDoc)
		if err != nil {
			v.err = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			v.err = err
			return
		}
		// Routes match on the path alone: the test servers listen on
		// ports of their own.
		doc.Servers = nil
		v.router, v.err = gorillamux.NewRouter(doc)
	})
	if v.err != nil {
		t.Fatalf("openapi.json: %v", v.err)
	}
	return v.router
}

// checkAgainstOpenAPI fails t when an answer to req does not fit the
// document.
func checkAgainstOpenAPI(t *testing.T, req *http.Request, status int, header http.Header, body []byte) {
	t.Helper()
	for _, err := range openapiCheck(openapiRouter(t), req, status, header, body) {
		t.Errorf("%s %s → %d does not fit openapi.json: %v\n%s", req.Method, req.URL.RequestURI(), status, err, trimBody(body))
	}
}

// openapiCheck validates one answer to req. Paths the document does not
// describe (the 404 of an unknown path, a 405) and HEAD are not checked.
func openapiCheck(router routers.Router, req *http.Request, status int, header http.Header, body []byte) []error {
	if req.Method == http.MethodHead {
		return nil
	}
	route, params, err := router.FindRoute(req)
	if err != nil {
		if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
			return []error{fmt.Errorf("the document has no such operation: %w", err)}
		}
		return nil
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	ndjson := header.Get("Content-Type") == "application/x-ndjson"
	if ndjson {
		in.Options.ExcludeResponseBody = true
	}
	in.SetBodyBytes(body)
	var errs []error
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		errs = append(errs, err)
	}
	if !ndjson {
		return errs
	}
	resp := route.Operation.Responses.Status(status)
	var mt *openapi3.MediaType
	if resp != nil && resp.Value != nil {
		mt = resp.Value.Content.Get("application/x-ndjson")
	}
	if mt == nil || mt.Schema == nil {
		return append(errs, errors.New("an NDJSON stream the document does not describe"))
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var v any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			errs = append(errs, fmt.Errorf("NDJSON line is not JSON: %w", err))
			continue
		}
		if err := mt.Schema.Value.VisitJSON(v, openapi3.MultiErrors()); err != nil {
			errs = append(errs, fmt.Errorf("NDJSON line %s: %w", trimBody(sc.Bytes()), err))
		}
	}
	return errs
}

func trimBody(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// TestOpenAPIValidatorCatchesAWrongAnswer: the check fails on answers the
// document does not allow (so its silence elsewhere means something).
func TestOpenAPIValidatorCatchesAWrongAnswer(t *testing.T) {
	router := openapiRouter(t)
	bad := []struct {
		method, path string
		status       int
		ct           string
		body         string
	}{
		{"GET", "/personas", 200, "application/json", `{"personas": "none"}`},
		{"GET", "/personas", 200, "application/json", `{}`},
		{"GET", "/personas", 418, "application/problem+json", `{"type":"x","title":"x","status":418,"detail":"x"}`},
		{"GET", "/personas", 401, "application/problem+json", `{"title":"x"}`},
		{"POST", "/instances/vm1/exec", 200, "application/x-ndjson", "{\"stream\":\"stdout\",\"data\":3}\n"},
		{"GET", "/nowhere", 200, "application/json", `{}`},
	}
	for _, b := range bad {
		req, _ := http.NewRequest(b.method, "http://127.0.0.1"+b.path, nil)
		if errs := openapiCheck(router, req, b.status, http.Header{"Content-Type": {b.ct}}, []byte(b.body)); len(errs) == 0 {
			t.Errorf("%s %s → %d %s passed the check", b.method, b.path, b.status, b.body)
		}
	}
	req, _ := http.NewRequest("GET", "http://127.0.0.1/personas", nil)
	if errs := openapiCheck(router, req, 200, http.Header{"Content-Type": {"application/json"}}, []byte(`{"personas":[]}`)); len(errs) != 0 {
		t.Errorf("a good answer fails the check: %v", errs)
	}
}
