package runtime

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// fsMount mounts a fresh filesystem of type fstype (tmpfs: idmapped
// mounts work; ramfs: the kernel refuses them) with a copy of an initdb'd
// data directory in <mount>/clone/data owned by postgres, as a storage
// backend leaves a clone. It returns the clone's mountpoint.
func fsMount(t *testing.T, fstype string) string {
	t.Helper()
	src := pgtest.InitDataDir(t)
	dir, err := os.MkdirTemp("", "thinlab-fs-*")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", fstype, "-o", "mode=0755", fstype, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s on %s: %v: %s (the tests need root)", fstype, dir, err, out)
	}
	t.Cleanup(func() {
		if err := Unmount(filepath.Join(dir, "clone")); err != nil {
			t.Errorf("unmount the clone: %v", err)
		}
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	mount := filepath.Join(dir, "clone")
	if out, err := exec.Command("cp", "-a", src, filepath.Join(dir, "clone")).CombinedOutput(); err != nil {
		t.Fatalf("copy data directory: %v: %s", err, out)
	}
	// cp -a made <dir>/clone a copy of the data directory itself; put it
	// one level down as <clone>/data.
	tmp := filepath.Join(dir, "tmpdata")
	if err := os.Rename(mount, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mount, 0o700); err != nil {
		t.Fatal(err)
	}
	u := pgtest.OSUser(t)
	if err := os.Chown(mount, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(mount, "data")); err != nil {
		t.Fatal(err)
	}
	return mount
}

func cloneUID() uint32 { return 5_000_000 + rand.Uint32N(1_000_000) }

func ownerOf(t *testing.T, path string) uint32 {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Uid
}

// TestOwnUserOnIdmappedMount: an instance with its own uid runs on an
// idmapped mount of its dataset: postgres runs as that uid, sees its files
// as its own, stores new files as postgres on disk, and Release removes
// the mount.
func TestOwnUserOnIdmappedMount(t *testing.T) {
	ctx := ctxT(t)
	owner := pgtest.OSUser(t)
	mount := fsMount(t, "tmpfs")
	uid := cloneUID()
	rt := newRuntime(t, Options{User: owner, RunDir: runDir(t), CloneUIDFrom: uid, CloneUIDTo: uid, ListenAddresses: "127.0.0.1"})
	inst := Instance{Name: randName("rt-own-"), DataDir: filepath.Join(mount, "data"), Mount: mount, Port: pgtest.FreePort(t),
		User: pgcluster.OSUser{UID: uid, GID: uid}, Settings: DefaultSettings}
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rt.Kill(inst)
		if err := rt.Release(inst); err != nil {
			t.Errorf("release %s: %v", inst.Name, err)
		}
	})
	pid, running := rt.Running(inst.DataDir)
	if !running {
		t.Fatal("not running after Start")
	}
	p, err := pgcluster.ReadProc(pid)
	if err != nil || !p.OwnedBy(uid) {
		t.Fatalf("postmaster %d runs as %v (%v), want uid %d", pid, p.UIDs, err, uid)
	}
	if on, _ := idmapped(mount); !on {
		t.Fatal("no idmapped mount on the clone's mountpoint")
	}
	if got := ownerOf(t, filepath.Join(inst.DataDir, "PG_VERSION")); got != uid {
		t.Fatalf("through the mount PG_VERSION is owned by %d, want the clone's %d", got, uid)
	}
	conn, err := pgx.Connect(ctx, rt.SocketConnString(inst.DataDir, inst.Port, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "COPY (SELECT 1) TO '"+filepath.Join(inst.DataDir, "made_by_clone")+"'"); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close(ctx) // a failed goodbye loses nothing
	if err := rt.Stop(ctx, inst, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Release(inst); err != nil {
		t.Fatal(err)
	}
	if on, _ := idmapped(mount); on {
		t.Fatal("idmapped mount left after Release")
	}
	// Without the mount, the file is the pool owner's.
	if got := ownerOf(t, filepath.Join(inst.DataDir, "made_by_clone")); got != owner.UID {
		t.Fatalf("a file written by the clone is owned by %d on disk, want postgres (%d)", got, owner.UID)
	}

	// What one more idmapped mount costs a clone (the report quotes it).
	const n = 20
	t0 := time.Now()
	for range n {
		if err := mountIdmapped(mount, owner, inst.User); err != nil {
			t.Fatal(err)
		}
		if err := Unmount(mount); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("idmapped mount + unmount: %.2f ms per clone (mean of %d)", float64(time.Since(t0).Microseconds())/1000/n, n)
}

// TestChownFallbackWhereIdmapRefused: on a filesystem without idmapped
// mounts (ramfs here, zfs-fuse in the field), the clone still runs as its
// own uid, its files chowned to it, with a warning that names the cost.
func TestChownFallbackWhereIdmapRefused(t *testing.T) {
	ctx := ctxT(t)
	owner := pgtest.OSUser(t)
	mount := fsMount(t, "ramfs")
	uid := cloneUID()
	log := &logtest.Buffer{}
	rt := newRuntime(t, Options{User: owner, RunDir: runDir(t), CloneUIDFrom: uid, CloneUIDTo: uid, ListenAddresses: "127.0.0.1", Logger: log.Logger()})
	inst := Instance{Name: randName("rt-fb-"), DataDir: filepath.Join(mount, "data"), Mount: mount, Port: pgtest.FreePort(t),
		User: pgcluster.OSUser{UID: uid, GID: uid}, Settings: DefaultSettings}
	files := 0
	if err := filepath.WalkDir(mount, func(string, os.DirEntry, error) error { files++; return nil }); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := rt.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	t.Cleanup(func() {
		rt.Kill(inst)
		if err := rt.Release(inst); err != nil {
			t.Errorf("release %s: %v", inst.Name, err)
		}
	})
	if !strings.Contains(log.String(), "does not support idmapped mounts") {
		t.Fatalf("no warning about the chown fallback in the log:\n%s", log.String())
	}
	if got := ownerOf(t, filepath.Join(inst.DataDir, "PG_VERSION")); got != uid {
		t.Fatalf("PG_VERSION is owned by %d, want the clone's %d", got, uid)
	}
	pid, running := rt.Running(inst.DataDir)
	if p, err := pgcluster.ReadProc(pid); !running || err != nil || !p.OwnedBy(uid) {
		t.Fatalf("postmaster %d (running %v) runs as %v, want uid %d", pid, running, p.UIDs, uid)
	}
	t.Logf("start with the chown fallback on %d files: %s (see the log line for the chown alone)", files, took)
	for l := range strings.SplitSeq(log.String(), "\n") {
		if strings.Contains(l, "idmapped") {
			t.Log(l)
		}
	}
}

// TestKillUserSparesOthers: ending a clone user's processes reaches only
// that uid, never the pool owner's or root's.
func TestKillUserSparesOthers(t *testing.T) {
	owner := pgtest.OSUser(t)
	uid := cloneUID()
	start := func(cred *syscall.Credential) *exec.Cmd {
		cmd := exec.Command("sleep", "300")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = cmd.Wait() }()               // reaps it; killed at cleanup, it exits with an error by design
		t.Cleanup(func() { _ = cmd.Process.Kill() }) // fails only when it has exited
		return cmd
	}
	victim := start(&syscall.Credential{Uid: uid, Gid: uid})
	rootProc := start(nil)
	ownerProc := start(&syscall.Credential{Uid: owner.UID, Gid: owner.GID})
	rt := newRuntime(t, Options{User: owner, RunDir: runDir(t), CloneUIDFrom: uid, CloneUIDTo: uid})
	rt.killUser(pgcluster.OSUser{UID: uid, GID: uid})
	if processAlive(victim.Process.Pid) {
		t.Fatal("the clone user's process survived")
	}
	for _, p := range []*exec.Cmd{rootProc, ownerProc} {
		if !processAlive(p.Process.Pid) {
			t.Fatalf("process %d of another user was killed", p.Process.Pid)
		}
	}
	// The pool owner is never a clone user, whatever the range says.
	rt = newRuntime(t, Options{User: owner, RunDir: runDir(t), CloneUIDFrom: 0, CloneUIDTo: 1 << 31})
	rt.killUser(owner)
	if !processAlive(ownerProc.Process.Pid) {
		t.Fatal("killUser ended the pool owner's processes")
	}
}
