package store

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// removeEmptyMemtables removes the memtable logs (*.mem) of zero length in
// dir before Badger opens it. Badger creates a memtable log empty and sizes
// it right after; a crash (kill -9, power loss) in between leaves an empty
// one, and Badger (v4.9) then refuses to open the directory: "while opening
// memtables err: while opening fid: N err: Create a new file" (its issue
// #2207; seen here once in the host crash suite). An empty log holds no
// write, acknowledged or not: removing it loses nothing.
func removeEmptyMemtables(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".mem") {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Size() != 0 {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("store: remove the empty memtable log a crash left: %w", err)
		}
		log.Warn("removed an empty memtable log a crash left", "file", path)
	}
	return nil
}
