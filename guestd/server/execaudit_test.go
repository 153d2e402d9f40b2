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
		want, hide []string
	}{
		{[]string{"-p", "pw1", "--token", "tk1", "--key=k1", "DB_PASSWORD=x1", "plain"},
			[]string{`"-p" "***" "--token" "***" "--key=***" "DB_PASSWORD=***" "plain"`}, []string{"pw1", "tk1", "k1", "x1"}},
		{many, []string{"…(+"}, nil},
		{many[:3], []string{`" "`}, nil},
	} {
		got := argPreview(tc.args)
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
