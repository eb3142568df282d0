package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thinlab/thinlab/internal/testenv"
)

// imageCache holds the Debian root filesystems mmdebstrap makes, outside
// the checkout, one per day: a fresh one picks up security updates, and a
// test run does not pay the minute of mmdebstrap again.
var imageCache = cacheDir()

func cacheDir() string {
	if d := os.Getenv("THINLAB_IMAGE_CACHE"); d != "" {
		return d
	}
	return "/var/cache/thinlab/images"
}

// repoRoot is the checkout (the tests run in internal/deploytest).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "thinlab")); err != nil {
		t.Fatalf("%s is not the checkout: %v", root, err)
	}
	return root
}

// debianRootfs returns a tarball of a Debian 12 minbase root filesystem
// (with the packages in include), made by mmdebstrap once per day into
// the cache. Concurrent test processes wait for each other (flock).
func debianRootfs(t testing.TB, include ...string) string {
	t.Helper()
	testenv.NeedsRoot(t, "mmdebstrap (a Debian root filesystem)")
	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		t.Fatal("mmdebstrap is missing: run make deps (apt-get install mmdebstrap)")
	}
	if err := os.MkdirAll(imageCache, 0o755); err != nil {
		t.Fatal(err)
	}
	flavor := "minbase"
	if len(include) > 0 {
		flavor += "-" + strings.Join(include, "-")
	}
	prefix := "debian-bookworm-" + flavor + "-"
	tarball := filepath.Join(imageCache, prefix+time.Now().UTC().Format("20060102")+".tar")
	unlock := lockFile(t, filepath.Join(imageCache, prefix+"lock"))
	defer unlock()
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	args := []string{"--variant=minbase", "--quiet"}
	if len(include) > 0 {
		args = append(args, "--include="+strings.Join(include, ","))
	}
	args = append(args, "bookworm", tarball+".tmp")
	start := time.Now()
	if out, err := exec.Command("mmdebstrap", args...).CombinedOutput(); err != nil {
		_ = os.Remove(tarball + ".tmp")
		t.Fatalf("mmdebstrap %s: %v\n%s", strings.Join(args, " "), err, tail(out, 3000))
	}
	if err := os.Rename(tarball+".tmp", tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("mmdebstrap made %s in %s", tarball, time.Since(start).Round(time.Second))
	// Older days' root filesystems of this flavor are not needed any more.
	old, _ := filepath.Glob(filepath.Join(imageCache, prefix+"2*.tar"))
	for _, o := range old {
		if o != tarball {
			_ = os.Remove(o)
		}
	}
	return tarball
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(t testing.TB, path string) func() {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() { _ = f.Close() }
}

// chroot unpacks the tarball into a fresh directory (removed at cleanup)
// and returns it.
func chroot(t testing.TB, tarball string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "deploytest-chroot-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	run(t, "", "tar", "-xf", tarball, "-C", dir)
	return dir
}

// run runs a command in dir and returns its stdout; it fails t with the
// output when the command fails.
func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t.Context(), dir, nil, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runErr(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err,
			tail(stdout.Bytes(), 3000), tail(stderr.Bytes(), 3000))
	}
	return stdout.String(), nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		return "..." + string(b[len(b)-n:])
	}
	return string(b)
}
