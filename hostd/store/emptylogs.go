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

// removeEmptyLogs removes the memtable logs (*.mem) and value logs (*.vlog)
// of zero length in dir before Badger opens it. Badger creates such a log
// empty and sizes it right after; a crash (kill -9, power loss) in between
// leaves an empty one, and Badger (v4.9) then refuses to open the
// directory: "while opening memtables err: while opening fid: N err: Create
// a new file", or "Open existing file: …vlog err: Create a new file" (its
// issue #2207; the first seen once in the host crash suite). An empty log
// holds no write, acknowledged or not: removing it loses nothing.
func removeEmptyLogs(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || !(strings.HasSuffix(e.Name(), ".mem") || strings.HasSuffix(e.Name(), ".vlog")) {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Size() != 0 {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("store: remove the empty log a crash left: %w", err)
		}
		log.Warn("removed an empty log a crash left", "file", path)
	}
	return nil
}
