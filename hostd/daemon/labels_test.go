package daemon

import (
	"maps"
	"testing"
)

func TestSplitLabels(t *testing.T) {
	for _, tc := range []struct {
		in, rest string
		labels   map[string]string
		err      bool
	}{
		{"vm1=unix:/run/vm1.sock", "vm1=unix:/run/vm1.sock", nil, false},
		{"vm1=unix:/run/vm1.sock,role=web,tier=db", "vm1=unix:/run/vm1.sock", map[string]string{"role": "web", "tier": "db"}, false},
		{"vm1=/run/vm1.qmp,rack=4", "vm1=/run/vm1.qmp", map[string]string{"rack": "4"}, false},
		// A comma that is part of the path: no labels.
		{"vm1=unix:/run/a,b/vm1.sock", "vm1=unix:/run/a,b/vm1.sock", nil, false},
		{"vm1=unix:/run/vm1.sock,bad key=x", "", nil, true},
	} {
		rest, labels, err := SplitLabels("--instance", tc.in)
		if (err != nil) != tc.err || rest != tc.rest || !maps.Equal(labels, tc.labels) {
			t.Errorf("SplitLabels(%q) = %q, %v, %v", tc.in, rest, labels, err)
		}
	}
}
