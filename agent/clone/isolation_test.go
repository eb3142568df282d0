package clone_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
)

// The clone's database user is hostile: by default a superuser, it runs
// shell commands as the OS user of its postgres with COPY ... TO PROGRAM.
// These tests run that attack for real against a real Manager on a btrfs
// pool.

// shell runs script in the clone's data directory (postgres' working
// directory) as the clone's OS user and returns its output (stdout and
// stderr) followed by "rc=<exit status>".
func (e *env) shell(t *testing.T, c clone.Clone, script string) string {
	t.Helper()
	conn, err := e.connect(c, c.Username, goodPassword, c.DBName)
	if err != nil {
		t.Fatalf("connect to clone %s: %v", c.ID, err)
	}
	defer func() { _ = conn.Close(e.ctx) }() // a failed goodbye loses nothing
	// COPY's text format splits on tabs and unescapes backslashes: neither
	// may reach it.
	enc := base64.StdEncoding.EncodeToString([]byte("out=$( (\n" + script + "\n) 2>&1 ); rc=$?\nprintf '%s\\n' \"$out\" | tr '\\t\\\\' '  '\necho rc=$rc\n"))
	if _, err := conn.Exec(e.ctx, "CREATE TEMP TABLE IF NOT EXISTS shell_out (line text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(e.ctx, "TRUNCATE shell_out"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(e.ctx, fmt.Sprintf("COPY shell_out FROM PROGRAM 'echo %s | base64 -d | sh'", enc)); err != nil {
		t.Fatalf("clone %s: COPY FROM PROGRAM: %v", c.ID, err)
	}
	var out string
	if err := conn.QueryRow(e.ctx, "SELECT coalesce(string_agg(line, E'\\n'), '') FROM shell_out").Scan(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// fileState is what must not change in a root-owned file.
type fileState struct {
	exists  bool
	content string
	mtime   time.Time
	uid     uint32
	mode    os.FileMode
}

func stateOf(path string) fileState {
	st, err := os.Lstat(path)
	if err != nil {
		return fileState{}
	}
	raw, _ := os.ReadFile(path)
	return fileState{exists: true, content: string(raw), mtime: st.ModTime(), uid: st.Sys().(*syscall.Stat_t).Uid, mode: st.Mode()}
}

// rootTargets makes root-owned files (and names of files that do not exist
// yet) outside every clone, in a 0755 directory like /etc.
func rootTargets(t *testing.T) (dir string, existing, missing []string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "thinlab-targets-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"conf", "hba", "pgconf"} {
		p := filepath.Join(dir, n)
		// Valid postgresql.conf syntax: a clone whose postgresql.conf
		// points here must still start.
		if err := os.WriteFile(p, []byte("# root-owned "+n+": must stay unchanged\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		past := time.Now().Add(-time.Hour)
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
		existing = append(existing, p)
	}
	for _, n := range []string{"new-log", "new-conf"} {
		missing = append(missing, filepath.Join(dir, n))
	}
	return dir, existing, missing
}

// rootSleep starts a root-owned process that must never be signalled.
func rootSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // fails only when it has exited, which Wait reports
		_ = cmd.Wait()         // killed: it exits with an error by design
	})
	return cmd
}

// alive reports whether pid runs and has not exited (a killed child of
// the test stays a zombie until reaped, so /proc's state decides).
func alive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 500 && !cond(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !cond() {
		t.Fatal("the clone's background attack did not happen within 5s")
	}
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 500 && alive(pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(pid) {
		t.Fatalf("postmaster %d did not die", pid)
	}
}

// TestCloneSuperuserCannotReachRoot is the attack of issue 8: a clone
// superuser plants symlinks to root-owned files (existing and not yet
// existing) under every name the agent used to write as root, writes the
// pid of a root-owned process into postmaster.pid and kills its own
// postmaster. The agent's restart (the background loop's check) and its
// destroy must bring the clone back or remove it without touching any of
// those files or signalling that process.
func TestCloneSuperuserCannotReachRoot(t *testing.T) {
	e := newEnv(t, 3)
	m := e.manager()
	defer closeManager(t, m)
	c := e.create(m, e.req("atk"))
	dataDir := filepath.Join(mountOf(t, e, "atk"), storage.DataSubdir)
	_, existing, missing := rootTargets(t)
	before := map[string]fileState{}
	for _, p := range append(append([]string{}, existing...), missing...) {
		before[p] = stateOf(p)
	}
	sleeper := rootSleep(t)
	checkUntouched := func(t *testing.T, step string) {
		t.Helper()
		for p, want := range before {
			if got := stateOf(p); got != want {
				t.Errorf("%s: root-owned %s changed: %+v, want %+v", step, p, got, want)
			}
		}
		if !alive(sleeper.Process.Pid) {
			t.Fatalf("%s: the root-owned process %d whose pid the clone planted was signalled", step, sleeper.Process.Pid)
		}
	}
	restart := func(t *testing.T, step string) {
		t.Helper()
		m.CheckIdle(e.ctx)
		got, err := m.Get("atk")
		if err != nil || got.Status != clone.StatusOK {
			t.Fatalf("%s: after the agent's restart the clone is %s (%s), want OK", step, got.Status, got.StatusMessage)
		}
		conn, err := e.connect(c, c.Username, goodPassword, c.DBName)
		if err != nil {
			t.Fatalf("%s: the clone does not accept connections after the agent's restart: %v", step, err)
		}
		_ = conn.Close(e.ctx) // a failed goodbye loses nothing
	}

	// killLater kills the postmaster (then runs more) in the background,
	// so that the COPY that started it returns first.
	killLater := func(pm int, then string) string {
		return fmt.Sprintf("(sleep 0.3; kill -9 %d; sleep 0.2; %s) </dev/null >/dev/null 2>&1 &", pm, then)
	}

	t.Run("symlinks", func(t *testing.T) {
		pm := postmasterOf(t, mountOf(t, e, "atk"))
		out := e.shell(t, c, strings.Join([]string{
			"set -e",
			"ln -sfn " + missing[1] + " postgresql.thinlab.conf",
			"rm -f pg_hba.conf && ln -s " + existing[1] + " pg_hba.conf",
			"ln -sfn " + missing[0] + " thinlab-postgres.log",
			"mv postgresql.conf postgresql.conf.orig && ln -s " + existing[2] + " postgresql.conf",
			fmt.Sprintf("ln -sfn %s .s.PGSQL.%d.lock.planted", existing[0], c.Port),
			killLater(pm, fmt.Sprintf("rm -f .s.PGSQL.%d.lock; ln -sfn %s .s.PGSQL.%d.lock", c.Port, existing[0], c.Port)),
		}, "\n"))
		if !strings.Contains(out, "rc=0") {
			t.Fatalf("attack script failed: %s", out)
		}
		waitDead(t, pm)
		waitFor(t, func() bool {
			l, err := os.Readlink(fmt.Sprintf("%s/.s.PGSQL.%d.lock", dataDir, c.Port))
			return err == nil && l == existing[0]
		})
		restart(t, "after planting symlinks")
		checkUntouched(t, "after planting symlinks")
	})

	t.Run("foreign pid on restart", func(t *testing.T) {
		pm := postmasterOf(t, mountOf(t, e, "atk"))
		pidLine := strconv.Itoa(sleeper.Process.Pid)
		out := e.shell(t, c, killLater(pm, fmt.Sprintf("printf '%%s\\n' %s %s > postmaster.pid", pidLine, dataDir)))
		if !strings.Contains(out, "rc=0") {
			t.Fatalf("attack script failed: %s", out)
		}
		waitDead(t, pm)
		waitFor(t, func() bool {
			raw, _ := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
			return strings.HasPrefix(string(raw), pidLine+"\n")
		})
		restart(t, "after planting a foreign pid")
		checkUntouched(t, "after planting a foreign pid")
	})

	t.Run("foreign pid on destroy", func(t *testing.T) {
		out := e.shell(t, c, fmt.Sprintf("printf '%%s\\n' %d %s > postmaster.pid.new && mv postmaster.pid.new postmaster.pid && head -1 postmaster.pid", sleeper.Process.Pid, dataDir))
		if !strings.Contains(out, strconv.Itoa(sleeper.Process.Pid)) {
			t.Fatalf("the clone could not plant the pid: %s", out)
		}
		e.destroy(m, "atk")
		checkUntouched(t, "after destroy")
		e.assertNoLeaks(m)
	})
}

// TestCloneUsersAreIsolated: a shell of clone A (its postgres' OS user)
// can read neither clone B's data directory nor its socket, nor the pool's
// main data or snapshots; files the clones write are stored as the pool's
// postgres user on disk and shown as the clone's own uid through its
// mount.
func TestCloneUsersAreIsolated(t *testing.T) {
	e := newEnv(t, 3)
	m := e.manager()
	defer closeManager(t, m)
	a := e.create(m, e.req("isoa"))
	b := e.create(m, e.req("isob"))
	mountA, mountB := mountOf(t, e, "isoa"), mountOf(t, e, "isob")
	dataA, dataB := filepath.Join(mountA, storage.DataSubdir), filepath.Join(mountB, storage.DataSubdir)
	uidOf := func(mount string) uint32 {
		pid := postmasterOf(t, mount)
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatalf("no postmaster in %s: %v", mount, err)
		}
		for l := range strings.SplitSeq(string(raw), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
				u, _ := strconv.ParseUint(f[1], 10, 32)
				return uint32(u)
			}
		}
		return 0
	}
	uidA, uidB := uidOf(mountA), uidOf(mountB)
	owner := mustUser(t)
	ids := e.cfg.Provision.CloneUIDs
	for _, u := range []uint32{uidA, uidB} {
		if u == owner.UID || u < ids.From || u > ids.To {
			t.Fatalf("clone postgres runs as uid %d, want its own uid from %d-%d (not postgres, %d)", u, ids.From, ids.To, owner.UID)
		}
	}
	if uidA == uidB {
		t.Fatalf("clones A and B share uid %d", uidA)
	}

	// The probes' mechanism works: A reads its own data.
	if out := e.shell(t, a, "cat PG_VERSION"); !strings.Contains(out, "rc=0") {
		t.Fatalf("clone A cannot read its own PG_VERSION: %s", out)
	}
	snaps, err := os.ReadDir(filepath.Join(filepath.Dir(e.pool.MainDir()), "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	snapData := ""
	for _, s := range snaps {
		if s.IsDir() {
			snapData = filepath.Join(filepath.Dir(e.pool.MainDir()), "snapshots", s.Name(), storage.DataSubdir)
		}
	}
	if snapData == "" {
		t.Fatal("no snapshot directory found")
	}
	psql := "/usr/lib/postgresql/15/bin/psql"
	for _, tc := range []struct{ name, script string }{
		{"B's data directory", "ls " + dataB},
		{"B's files", "cat " + dataB + "/PG_VERSION"},
		{"B's socket", fmt.Sprintf("%s -h %s -p %d -U postgres -d postgres -Atc 'SELECT 1'", psql, dataB, b.Port)},
		{"the main dataset", "cat " + filepath.Join(e.pool.MainDir(), storage.DataSubdir, "PG_VERSION")},
		{"the main dataset's listing", "ls " + filepath.Join(e.pool.MainDir(), storage.DataSubdir)},
		{"a snapshot", "cat " + snapData + "/PG_VERSION"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := e.shell(t, a, tc.script)
			if strings.Contains(out, "rc=0") || !strings.Contains(out, "ermission denied") {
				t.Errorf("clone A's OS user reached %s: %q (want Permission denied and a non-zero rc)", tc.name, out)
			}
		})
	}

	t.Run("files stored as postgres on disk", func(t *testing.T) {
		e.exec(a, "CREATE TABLE written_by_a AS SELECT generate_series(1, 1000) AS n")
		if out := e.shell(t, a, "echo hi > made_by_a"); !strings.Contains(out, "rc=0") {
			t.Fatalf("clone A cannot write into its data directory: %s", out)
		}
		var rel string
		conn, err := e.connect(a, a.Username, goodPassword, a.DBName)
		if err != nil {
			t.Fatal(err)
		}
		err = conn.QueryRow(e.ctx, "SELECT pg_relation_filepath('written_by_a')").Scan(&rel)
		_ = conn.Close(e.ctx) // a failed goodbye loses nothing
		if err != nil {
			t.Fatal(err)
		}
		// The raw filesystem, without the idmapped mount stacked on the
		// clone: a non-recursive clone of the mount holding the clones.
		clonesDir := filepath.Dir(mountA)
		tree, err := unix.OpenTree(unix.AT_FDCWD, clonesDir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = unix.Close(tree) }() // a detached mount tree fd: nothing to flush
		for _, f := range []string{"made_by_a", rel} {
			var raw unix.Stat_t
			rp := filepath.Join(filepath.Base(mountA), storage.DataSubdir, f)
			if err := unix.Fstatat(tree, rp, &raw, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
			if raw.Uid != owner.UID || raw.Gid != owner.GID {
				t.Errorf("%s is stored as %d:%d on disk, want postgres %d:%d", f, raw.Uid, raw.Gid, owner.UID, owner.GID)
			}
			seen, err := os.Lstat(filepath.Join(dataA, f))
			if err != nil {
				t.Fatal(err)
			}
			if st := seen.Sys().(*syscall.Stat_t); st.Uid != uidA || st.Gid != uidA {
				t.Errorf("%s is seen as %d:%d through the clone's mount, want the clone's %d:%d", f, st.Uid, st.Gid, uidA, uidA)
			}
		}
	})

	t.Run("uid kept across reset, freed on destroy", func(t *testing.T) {
		if _, err := m.Reset(e.ctx, "isoa", clone.ResetRequest{Latest: true}); err != nil {
			t.Fatal(err)
		}
		e.wait(m, "isoa", clone.StatusOK)
		if got := uidOf(mountA); got != uidA {
			t.Fatalf("after reset clone A runs as uid %d, want %d", got, uidA)
		}
		e.destroy(m, "isob")
		if runtime.UIDInUse(uidB) {
			out, _ := exec.Command("ps", "-o", "pid,stat,user,args", "-u", strconv.Itoa(int(uidB))).CombinedOutput()
			t.Fatalf("a process of destroyed clone B's uid %d still runs:\n%s", uidB, out)
		}
		c := e.create(m, e.req("isoc"))
		if got := uidOf(mountOf(t, e, c.ID)); got != uidB {
			t.Fatalf("new clone got uid %d, want the freed %d", got, uidB)
		}
	})
}
