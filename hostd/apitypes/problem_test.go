package apitypes

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/vmpersona/vmpersona/errdefs"
)

func TestProblemJSONKeepsUnknownMembers(t *testing.T) {
	in := `{"type":"urn:vmpersona:problem:default-conflict","title":"t","status":409,"detail":"d","current_default":"base","added_later":[1,2]}`
	var p Problem
	if err := json.Unmarshal([]byte(in), &p); err != nil {
		t.Fatal(err)
	}
	if p.CurrentDefault != "base" || len(p.Extra) != 1 || p.Extra["added_later"] == nil {
		t.Fatalf("decoded %+v", p)
	}
	out, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	json.Unmarshal([]byte(in), &a)
	json.Unmarshal(out, &b)
	if len(a) != len(b) {
		t.Fatalf("round trip %s → %s", in, out)
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			t.Errorf("member %s lost: %s", k, out)
		}
	}
}

func TestProblemUnwrapsItsClass(t *testing.T) {
	for _, cs := range ClassStatus {
		p := &Problem{Status: cs.Status}
		if !errors.Is(p, ClassOf(cs.Status)) {
			t.Errorf("status %d does not wrap %v", cs.Status, ClassOf(cs.Status))
		}
		if cs.Class != errdefs.ErrAlreadyExists && StatusOf(cs.Class) != cs.Status {
			t.Errorf("StatusOf(%v) = %d, want %d", cs.Class, StatusOf(cs.Class), cs.Status)
		}
	}
	exists := &Problem{Status: http.StatusConflict, Type: ProblemExists}
	if !errors.Is(exists, errdefs.ErrAlreadyExists) || !errors.Is(exists, errdefs.ErrConflict) {
		t.Errorf("an exists problem is not both already-exists and conflict")
	}
	for _, c := range errdefs.Classes {
		if StatusOf(c) == http.StatusInternalServerError {
			t.Errorf("class %v has no status", c)
		}
	}
}
