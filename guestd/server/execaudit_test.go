package server

import (
	"strings"
	"testing"
)

func TestArgPreviewBoundedAndMasked(t *testing.T) {
	many := make([]string, 100)
	for i := range many {
		many[i] = strings.Repeat("é", 100)
	}
	for _, tc := range []struct {
		args       []string
		secrets    []string
		want, hide []string
	}{
		{[]string{"psql", "pg://app:Zq9-hidden@db", "CONN=pg://app:Zq9-hidden@db"}, []string{"pg://app:Zq9-hidden@db"},
			[]string{`"psql" "***" "CONN=***"`}, []string{"Zq9-hidden"}},
		{[]string{"-p", "pw1", "--token", "tk1", "--key=k1", "DB_PASSWORD=x1", "plain"},
			nil, []string{`"-p" "***" "--token" "***" "--key=***" "DB_PASSWORD=***" "plain"`}, []string{"pw1", "tk1", "k1", "x1"}},
		{many, nil, []string{"…(+"}, nil},
		{many[:3], nil, []string{`" "`}, nil},
	} {
		got := argPreview(tc.args, tc.secrets...)
		if len(got) > previewMaxSize+16 {
			t.Errorf("preview of %d bytes", len(got))
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("preview %q lacks %q", got, w)
			}
		}
		for _, h := range tc.hide {
			if strings.Contains(got, h) {
				t.Errorf("preview %q shows %q", got, h)
			}
		}
	}
}
