package runtime

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/testenv"
)

// TestChownTreeChangesEveryFileAndNoSymlinkTarget checks the fallback for
// filesystems without idmapped mounts: every entry of a tree deeper and
// wider than its workers is handed over, and symlinks (planted by a
// clone's user, pointing at a root file) change themselves only.
func TestChownTreeChangesEveryFileAndNoSymlinkTarget(t *testing.T) {
	testenv.NeedsRoot(t, "chown")
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "root-file")
	if err := os.WriteFile(outside, []byte("root's"), 0o600); err != nil {
		t.Fatal(err)
	}
	var all []string
	for i := range 20 {
		dir := filepath.Join(root, "base", fmt.Sprint(i), "deep")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for j := range 5 {
			f := filepath.Join(dir, fmt.Sprint(j))
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			all = append(all, f, filepath.Dir(dir), dir)
		}
	}
	link := filepath.Join(root, "base", "3", "evil")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	all = append(all, root, filepath.Join(root, "base"), link)

	u := pgcluster.OSUser{UID: 200999, GID: 200999}
	if err := chownTree(root, u); err != nil {
		t.Fatal(err)
	}
	for _, p := range all {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != u.UID || sys.Gid != u.GID {
			t.Errorf("%s owned by %d:%d, want %d:%d", p, sys.Uid, sys.Gid, u.UID, u.GID)
		}
	}
	st, err := os.Stat(outside)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 {
		t.Errorf("the symlink's target %s now belongs to uid %d: chownTree followed a symlink", outside, sys.Uid)
	}
}
