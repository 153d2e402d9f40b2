package auth

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// A token file is refused when its group or other users may read or write
// it, as ssh refuses such a private key.
func TestTokenFileMode(t *testing.T) {
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, false}, {0o604, false}, {0o620, false}, {0o644, false}, {0o660, false}} {
		f := filepath.Join(t.TempDir(), "tokens.csv")
		if err := os.WriteFile(f, []byte("secret,alice,1,admin\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f, tc.mode); err != nil {
			t.Fatal(err)
		}
		tok, err := LoadTokenFile(f)
		switch {
		case tc.ok && (err != nil || tok.Len() != 1):
			t.Errorf("mode %04o: %v, want the file read", tc.mode, err)
		case !tc.ok && !errors.Is(err, ErrWorldReadable):
			t.Errorf("mode %04o: %v, want ErrWorldReadable", tc.mode, err)
		}
	}
}
