package pgcluster

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestChownRStaysInside hands a tree with a symlink to a file outside it
// to another user: every file inside changes owner, the file behind the
// symlink does not. Needs root (chown).
func TestChownRStaysInside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestChownRStaysInside needs root (it changes file owners): run go test as root")
	}
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "f"), []byte("y"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(tree, "sub", "link")); err != nil {
		t.Fatal(err)
	}
	u := OSUser{Name: "test", UID: 54321, GID: 54321}
	if err := u.ChownR(tree); err != nil {
		t.Fatalf("ChownR: %v", err)
	}
	owner := func(p string) uint32 {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Uid
	}
	for _, p := range []string{tree, filepath.Join(tree, "sub"), filepath.Join(tree, "sub", "f"), filepath.Join(tree, "sub", "link")} {
		if got := owner(p); got != u.UID {
			t.Errorf("%s is owned by uid %d, want %d", p, got, u.UID)
		}
	}
	if got := owner(outside); got != 0 {
		t.Errorf("the file behind the symlink is owned by uid %d, want 0 (ChownR must not follow symlinks)", got)
	}
}
