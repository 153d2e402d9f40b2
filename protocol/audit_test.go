package protocol

import "testing"

func TestAuditTypesAreDistinctNames(t *testing.T) {
	seen := map[string]bool{}
	for _, ty := range AuditTypes {
		if ty == "" || seen[ty] {
			t.Errorf("audit type %q empty or listed twice", ty)
		}
		seen[ty] = true
	}
}
