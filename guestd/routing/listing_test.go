package routing

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// PATH directories are listed once and the listing reused while the
// directory is unchanged; a command added since is seen by the next table.
func TestPathListingCacheSeesChanges(t *testing.T) {
	old := racyWindow
	racyWindow = 0
	t.Cleanup(func() { racyWindow = old })
	dir := t.TempDir()
	tool := filepath.Join(dir, "tool")
	// Each listing is taken with the directory's times in the past, so a
	// change made in the same timestamp tick still changes them.
	age := func(n int) {
		past := time.Now().Add(-time.Duration(n) * time.Hour)
		if err := os.Chtimes(dir, past, past); err != nil {
			t.Fatal(err)
		}
	}
	restricted := func() []string {
		t.Helper()
		tb, err := Build(Spec{Restricted: []string{"tool"}, PathEnv: dir})
		if err != nil {
			t.Fatal(err)
		}
		return tb.RestrictedFiles()
	}
	age(3)
	if got := restricted(); len(got) != 0 {
		t.Fatalf("empty directory: %v", got)
	}
	if _, ok := listings.get(dir, statOf(t, dir)); !ok {
		t.Fatal("the listing was not cached")
	}
	if err := os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := restricted(); !slices.Equal(got, []string{tool}) {
		t.Fatalf("after adding the command: %v", got)
	}
}

func statOf(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// An absolute entry in a PATH directory is resolved through that
// directory's listing: one that is not there costs no stat, and one added
// since the listing was cached is still found.
func TestAbsoluteEntryThroughListing(t *testing.T) {
	old := racyWindow
	racyWindow = 0
	t.Cleanup(func() { racyWindow = old })
	dir := t.TempDir()
	tool := filepath.Join(dir, "tool")
	past := time.Now().Add(-time.Hour)
	os.Chtimes(dir, past, past)
	build := func() *Table {
		t.Helper()
		tb, err := Build(Spec{Restricted: []string{tool, filepath.Join(dir, "absent")}, PathEnv: dir})
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	if got := build().RestrictedFiles(); len(got) != 0 {
		t.Fatalf("nothing there yet: %v", got)
	}
	if err := os.WriteFile(tool, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tb := build()
	if got := tb.RestrictedFiles(); !slices.Equal(got, []string{tool}) {
		t.Fatalf("after adding it: %v", got)
	}
	// Restricted by inode too: a hard link elsewhere is denied.
	link := filepath.Join(t.TempDir(), "other-name")
	if err := os.Link(tool, link); err != nil {
		t.Fatal(err)
	}
	d := tb.Route(link, "/")
	defer d.Close()
	if d.Kind != Denied {
		t.Fatalf("hard link of a restricted path: %v", d.Kind)
	}
}
