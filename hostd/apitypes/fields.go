package apitypes

import (
	"reflect"
	"strings"
)

// JSONField is one member of a type's JSON form.
type JSONField struct {
	Name string
	// Optional: the member is left out when empty (omitempty, omitzero).
	Optional bool
	Type     reflect.Type
}

// JSONFields lists the members of the JSON form of the struct v (or of the
// struct a pointer v points to), with embedded structs flattened as
// encoding/json does. The OpenAPI description is checked against it.
func JSONFields(v any) []JSONField {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return structFields(t, false)
}

func structFields(t reflect.Type, viaPointer bool) []JSONField {
	var out []JSONField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, hasTag := f.Tag.Lookup("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" && opts == "" {
			continue
		}
		if f.Anonymous && !hasTag {
			et := f.Type
			ptr := false
			if et.Kind() == reflect.Pointer {
				et, ptr = et.Elem(), true
			}
			if et.Kind() == reflect.Struct {
				out = append(out, structFields(et, viaPointer || ptr)...)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		optional := viaPointer || strings.Contains(","+opts+",", ",omitempty,") || strings.Contains(","+opts+",", ",omitzero,")
		out = append(out, JSONField{Name: name, Optional: optional, Type: f.Type})
	}
	return out
}
