package api

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmpersona/vmpersona/hostd/apitypes"
	"github.com/vmpersona/vmpersona/protocol"
)

// The OpenAPI description is written by hand (it carries the descriptions
// users read); these tests hold it to the Go types of package apitypes, so a
// field added to a type and not to the document fails here.

type schemaChecker struct {
	t       *testing.T
	doc     map[string]any
	inputs  map[string]bool // component schemas some request body uses
	visited map[string]bool
}

func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }

// docPath turns a route path (/personas/:name) into the document's form.
func docPath(p string) string {
	for _, seg := range strings.Split(p, "/") {
		if strings.HasPrefix(seg, ":") {
			p = strings.Replace(p, seg, "{"+seg[1:]+"}", 1)
		}
	}
	return p
}

// resolve follows $ref and a lone allOf; it returns the schema, the name of
// the component it came from ("" for inline) and whether it is nullable.
func (c *schemaChecker) resolve(s map[string]any) (map[string]any, string, bool) {
	nullable, _ := s["nullable"].(bool)
	if all, ok := s["allOf"].([]any); ok && len(all) == 1 {
		inner, name, n := c.resolve(obj(all[0]))
		return inner, name, nullable || n
	}
	if ref, ok := s["$ref"].(string); ok {
		name := strings.TrimPrefix(ref, "#/components/schemas/")
		target := obj(obj(obj(c.doc["components"])["schemas"])[name])
		if target == nil {
			c.t.Errorf("dangling $ref %s", ref)
			return map[string]any{}, name, nullable
		}
		inner, _, n := c.resolve(target)
		return inner, name, nullable || n
	}
	return s, "", nullable
}

var timeType = reflect.TypeOf(time.Time{})

// check compares schema s with Go type t; where says where both are.
func (c *schemaChecker) check(where string, s map[string]any, t reflect.Type, input bool) {
	if s == nil {
		c.t.Errorf("%s: no schema (Go type %s)", where, t)
		return
	}
	s, name, _ := c.resolve(s)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	typ, _ := s["type"].(string)
	want := ""
	switch {
	case t == timeType:
		want = "string"
		if s["format"] != "date-time" {
			c.t.Errorf("%s: a time must be format date-time", where)
		}
	case t.Kind() == reflect.Struct:
		want = "object"
	case t.Kind() == reflect.Slice:
		want = "array"
	case t.Kind() == reflect.Map:
		want = "object"
	case t.Kind() == reflect.String:
		want = "string"
	case t.Kind() == reflect.Bool:
		want = "boolean"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		want = "integer"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		want = "number"
	case t.Kind() == reflect.Interface:
		return
	default:
		c.t.Errorf("%s: Go type %s has no schema rule", where, t)
		return
	}
	if typ != want {
		c.t.Errorf("%s: schema type %q, Go type %s wants %q", where, typ, t, want)
		return
	}
	switch {
	case t == timeType:
	case t.Kind() == reflect.Slice:
		c.check(where+"[]", obj(s["items"]), t.Elem(), input)
	case t.Kind() == reflect.Map:
		c.check(where+"{}", obj(s["additionalProperties"]), t.Elem(), input)
	case t.Kind() == reflect.Struct:
		key := fmt.Sprintf("%s/%s/%v", name, t, input)
		if name != "" && c.visited[key] {
			return
		}
		c.visited[key] = true
		c.checkStruct(where, s, name, t, input)
	}
}

func (c *schemaChecker) checkStruct(where string, s map[string]any, name string, t reflect.Type, input bool) {
	props := obj(s["properties"])
	fields := apitypes.JSONFields(reflect.New(t).Interface())
	var goNames, docNames []string
	for _, f := range fields {
		goNames = append(goNames, f.Name)
	}
	for k := range props {
		docNames = append(docNames, k)
	}
	sort.Strings(goNames)
	sort.Strings(docNames)
	if !slices.Equal(goNames, docNames) {
		c.t.Errorf("%s: properties %v, Go type %s has %v", where, docNames, t, goNames)
	}
	if input && s["additionalProperties"] != false {
		c.t.Errorf("%s: the server refuses unknown fields of %s: say additionalProperties: false", where, t)
	}
	var required []string
	req, _ := s["required"].([]any)
	for _, r := range req {
		required = append(required, r.(string))
	}
	sort.Strings(required)
	var always []string
	optional := map[string]bool{}
	for _, f := range fields {
		if f.Optional {
			optional[f.Name] = true
		} else {
			always = append(always, f.Name)
		}
		sub := obj(props[f.Name])
		if sub == nil {
			continue
		}
		// A pointer that is always present is null when unset.
		if !input && !f.Optional && f.Type.Kind() == reflect.Pointer {
			if _, _, nullable := c.resolve(sub); !nullable {
				c.t.Errorf("%s.%s: Go field is a pointer always written: say nullable: true", where, f.Name)
			}
		}
		c.check(where+"."+f.Name, sub, f.Type, input)
	}
	sort.Strings(always)
	for _, r := range required {
		if optional[r] {
			c.t.Errorf("%s: %q is required but the Go field is left out when empty", where, r)
		}
	}
	// An answer's schema lists as required exactly the members always
	// written; a schema that also describes a request body lists what the
	// server demands there.
	if !input && !c.inputs[name] && !slices.Equal(required, always) {
		c.t.Errorf("%s: required %v, but %s always writes %v", where, required, t, always)
	}
}

func TestOpenAPIMatchesTheTypes(t *testing.T) {
	doc := loadOpenAPI(t)
	c := &schemaChecker{t: t, doc: doc, inputs: map[string]bool{}, visited: map[string]bool{}}
	routes := New(Config{}).routes
	paths := obj(doc["paths"])
	op := func(rt route) map[string]any { return obj(obj(paths[docPath(rt.path)])[strings.ToLower(rt.method)]) }
	for _, rt := range routes {
		if rt.in == nil {
			continue
		}
		s := obj(obj(obj(obj(op(rt)["requestBody"])["content"])["application/json"])["schema"])
		if _, name, _ := c.resolve(s); name != "" {
			c.inputs[name] = true
		}
	}
	for _, rt := range routes {
		o := op(rt)
		if o == nil {
			continue // TestOpenAPIDescribesEveryRoute says so
		}
		where := rt.method + " " + docPath(rt.path)
		body := obj(o["requestBody"])
		switch {
		case rt.in != nil:
			c.check(where+" request", obj(obj(obj(body["content"])["application/json"])["schema"]), reflect.TypeOf(rt.in), true)
			if rt.stdin && obj(obj(body["content"])[apitypes.ExecStdinMediaType]) == nil {
				t.Errorf("%s: the route takes streamed standard input; the document describes no %s body", where, apitypes.ExecStdinMediaType)
			}
		case rt.raw && rt.method == "PUT":
			if obj(obj(body["content"])["application/octet-stream"]) == nil {
				t.Errorf("%s: the route reads the file's bytes; the document describes no application/octet-stream body", where)
			}
		case body != nil:
			t.Errorf("%s: the document describes a request body the route does not read", where)
		}
		status := rt.status
		if status == 0 {
			status = 200
		}
		resp := obj(obj(o["responses"])[strconv.Itoa(status)])
		if resp == nil {
			t.Errorf("%s: no %d answer described", where, status)
			continue
		}
		content := obj(resp["content"])
		switch {
		case rt.out != nil:
			c.check(fmt.Sprintf("%s %d", where, status), obj(obj(content["application/json"])["schema"]), reflect.TypeOf(rt.out), false)
		case status == 204 && content != nil:
			t.Errorf("%s: a 204 has no body", where)
		}
		if rt.raw && rt.method == "GET" && obj(content["application/octet-stream"]) == nil {
			t.Errorf("%s: the route answers the file's bytes; the document describes no application/octet-stream answer", where)
		}
		if rt.line != nil {
			c.check(where+" stream line", obj(obj(content["application/x-ndjson"])["schema"]), reflect.TypeOf(rt.line), false)
		}
		var headers []string
		for h := range obj(resp["headers"]) {
			headers = append(headers, h)
		}
		sort.Strings(headers)
		if want := slices.Sorted(slices.Values(rt.headers)); !slices.Equal(headers, want) {
			t.Errorf("%s: %d answer's headers %v, the route sends %v", where, status, headers, want)
		}
		for code, r := range obj(o["responses"]) {
			ref := obj(r)["$ref"]
			if code == "401" && ref != "#/components/responses/Unauthorized" {
				t.Errorf("%s: answer 401 is not the Unauthorized answer (problem document with WWW-Authenticate)", where)
			}
			if n, _ := strconv.Atoi(code); n >= 400 && code != "401" && ref != "#/components/responses/Problem" {
				t.Errorf("%s: answer %s is not the problem document", where, code)
			}
		}
	}
	problem := obj(obj(obj(obj(obj(doc["components"])["responses"])["Problem"])["content"])["application/problem+json"])["schema"]
	c.check("problem document", obj(problem), reflect.TypeOf(apitypes.Problem{}), false)
}

// TestOpenAPIEnumsAreTheVocabularies: the values the document lists are the
// Go vocabularies.
func TestOpenAPIEnumsAreTheVocabularies(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := obj(obj(doc["components"])["schemas"])
	prop := func(path ...string) map[string]any {
		s := obj(schemas[path[0]])
		for _, p := range path[1:] {
			s = obj(obj(s["properties"])[p])
		}
		return s
	}
	enum := func(s map[string]any) []string {
		var out []string
		for _, v := range s["enum"].([]any) {
			out = append(out, v.(string))
		}
		return slices.Sorted(slices.Values(out))
	}
	var auditParam map[string]any
	for _, p := range obj(obj(doc["paths"])["/audit"])["get"].(map[string]any)["parameters"].([]any) {
		if obj(p)["name"] == "type" {
			auditParam = obj(obj(p)["schema"])
		}
	}
	tests := []struct {
		where  string
		schema map[string]any
		want   []string
	}{
		{"Instance.state", prop("Instance", "state"), apitypes.InstanceStates},
		{"Instance.source", prop("Instance", "source"), apitypes.InstanceSources},
		{"Instance.agent.state", prop("Instance", "agent", "state"), apitypes.AgentStates},
		{"AuditEvent.type", prop("AuditEvent", "type"), protocol.AuditTypes},
		{"AuditEvent.source", prop("AuditEvent", "source"), []string{apitypes.SourceHost, apitypes.SourceGuest}},
		{"GET /audit ?type=", auditParam, protocol.AuditTypes},
		{"ActivationResult.result", prop("ActivationResult", "result"), []string{apitypes.ResultActivated, apitypes.ResultDeactivated, apitypes.ResultUnchanged}},
		{"Problem.result", prop("Problem", "result"), []string{apitypes.ResultAborted, apitypes.ResultRolledBack}},
	}
	for _, tt := range tests {
		if tt.schema == nil || tt.schema["enum"] == nil {
			t.Errorf("%s: no enum in the document", tt.where)
			continue
		}
		if got, want := enum(tt.schema), slices.Sorted(slices.Values(tt.want)); !slices.Equal(got, want) {
			t.Errorf("%s: document lists %v, Go has %v", tt.where, got, want)
		}
	}
}

// TestAnswersAreTheDeclaredTypes drives every route once against a real
// guest and decodes each success answer strictly (no unknown member) into
// the type its route declares, and checks the headers it declares are sent:
// what the document is checked against is what the server writes.
func TestAnswersAreTheDeclaredTypes(t *testing.T) {
	e := newEnv(t, map[string]string{"vm1": startGuest(t)})
	e.waitConnected("vm1")
	calls := []struct {
		method, path string
		body         any
	}{
		{"GET", "/healthz", nil},
		{"GET", "/readyz", nil},
		{"POST", "/personas", hardened},
		{"GET", "/personas", nil},
		{"GET", "/personas/hardened", nil},
		{"PUT", "/personas/hardened", hardened},
		{"GET", "/instances", nil},
		{"GET", "/instances/vm1", nil},
		{"POST", "/instances/vm1/personas/hardened/activate", nil},
		{"GET", "/instances/vm1/active_persona", nil},
		{"POST", "/instances/vm1/exec", execBody("echo", "hi")},
		{"POST", "/instances/vm1/deactivate", nil},
		{"GET", "/audit", nil},
		{"DELETE", "/personas/hardened", nil},
	}
	byRoute := map[string]route{}
	for _, rt := range e.api.routes {
		byRoute[rt.method+" "+docPath(rt.path)] = rt
	}
	for _, c := range calls {
		var rt route
		for key, r := range byRoute {
			method, p, _ := strings.Cut(key, " ")
			if method == c.method && pathMatches(p, c.path) {
				rt = r
			}
		}
		if rt.handler == nil {
			t.Fatalf("%s %s matches no route", c.method, c.path)
		}
		status := rt.status
		if status == 0 {
			status = 200
		}
		r := e.must(e.do(c.method, c.path, tokAdmin, c.body), status)
		for _, h := range rt.headers {
			if r.header.Get(h) == "" {
				t.Errorf("%s %s: no %s header", c.method, c.path, h)
			}
		}
		if rt.out == nil {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(string(r.body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(reflect.New(reflect.TypeOf(rt.out)).Interface()); err != nil {
			t.Errorf("%s %s: the answer is not a %T: %v\n%s", c.method, c.path, rt.out, err, r.body)
		}
	}
}

// pathMatches reports whether a concrete path fits a document path with
// {parameters}.
func pathMatches(pattern, p string) bool {
	a, b := strings.Split(pattern, "/"), strings.Split(p, "/")
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] && !strings.HasPrefix(a[i], "{") {
			return false
		}
	}
	return true
}

// TestOpenAPIForGenerators: what code generators and linters need from the
// document: an operationId on every operation, unique and stable; servers;
// a licence; no security scheme that is not one (the unix socket's peer
// credentials are described in words); the paging parameters on every list.
func TestOpenAPIForGenerators(t *testing.T) {
	doc := loadOpenAPI(t)
	if len(doc["servers"].([]any)) == 0 {
		t.Error("no servers")
	}
	if lic := obj(obj(doc["info"])["license"]); lic["name"] != "Apache-2.0" || lic["url"] == nil {
		t.Errorf("licence %v", lic)
	}
	for name, s := range obj(obj(doc["components"])["securitySchemes"]) {
		if obj(s)["type"] == "apiKey" {
			t.Errorf("security scheme %s is an API key header the server does not read", name)
		}
	}
	seen := map[string]string{}
	for p, ops := range obj(doc["paths"]) {
		for m, o := range obj(ops) {
			id, _ := obj(o)["operationId"].(string)
			where := strings.ToUpper(m) + " " + p
			if id == "" {
				t.Errorf("%s: no operationId", where)
				continue
			}
			if prev, dup := seen[id]; dup {
				t.Errorf("%s: operationId %s already names %s", where, id, prev)
			}
			seen[id] = where
		}
	}
	for _, p := range []string{"/personas", "/instances", "/audit"} {
		names := map[string]bool{}
		for _, prm := range obj(obj(obj(doc["paths"])[p])["get"])["parameters"].([]any) {
			names[obj(prm)["name"].(string)] = true
		}
		if !names["limit"] || !names["after"] {
			t.Errorf("GET %s: paging parameters limit and after not described (%v)", p, names)
		}
	}
}
