// Package clonetest gives clone and retrieval tests a real copy-on-write
// pool: a btrfs filesystem on a loop file, unmounted and detached at
// cleanup.
//
// INTERIM: until agent/storage/storagetest.NewLoopPool lands (the storage
// helper is writing it), this file carries a minimal btrfs Pool of its
// own, used only by tests. It is replaced by storagetest as soon as that
// exists.
package clonetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// NewPool makes a 4 GiB btrfs pool on a fresh loop file named with a
// random suffix and removes everything at cleanup.
func NewPool(t testing.TB) storage.Pool {
	t.Helper()
	return NewPoolSize(t, "4G")
}

// NewPoolSize is NewPool with a loop file of size (truncate -s syntax;
// sparse).
func NewPoolSize(t testing.TB, size string) storage.Pool {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	suffix := hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", "thinlab-ct-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	img := filepath.Join(dir, "pool.img")
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v: %s", name, args, err, out)
		}
	}
	run("truncate", "-s", size, img)
	run("mkfs.btrfs", "-q", "-f", img)
	run("mount", "-o", "loop", img, mnt)
	t.Cleanup(func() {
		exec.Command("umount", mnt).Run()
		os.RemoveAll(dir)
	})
	p := &btrfsPool{name: "ct" + suffix, root: mnt}
	run("btrfs", "subvolume", "create", filepath.Join(mnt, "main"))
	os.MkdirAll(filepath.Join(mnt, "snapshots"), 0o755)
	os.MkdirAll(filepath.Join(mnt, "clones"), 0o755)
	return p
}

type btrfsPool struct {
	name, root string
	mu         sync.Mutex
}

type meta struct {
	ID          string            `json:"id"`
	CreatedAt   time.Time         `json:"createdAt"`
	DataStateAt time.Time         `json:"dataStateAt"`
	Message     string            `json:"message"`
	Labels      map[string]string `json:"labels"`
	SnapshotID  string            `json:"snapshotId"`
}

func (p *btrfsPool) Name() string    { return p.name }
func (p *btrfsPool) Mode() string    { return storage.ModeBtrfs }
func (p *btrfsPool) MainDir() string { return filepath.Join(p.root, "main") }

func btrfs(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "btrfs", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("btrfs %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (p *btrfsPool) snapName(id string) (string, error) {
	pool, name, err := storage.ParseSnapshotID(id)
	if err != nil {
		return "", err
	}
	if pool != p.name {
		return "", fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
	}
	return name, nil
}

func (p *btrfsPool) Snapshot(ctx context.Context, opt storage.SnapshotOptions) (storage.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if opt.DataStateAt.IsZero() {
		opt.DataStateAt = time.Now()
	}
	opt.DataStateAt = opt.DataStateAt.UTC().Truncate(time.Second)
	id := storage.SnapshotID(p.name, opt.DataStateAt)
	name, _ := p.snapName(id)
	dst := filepath.Join(p.root, "snapshots", name)
	if _, err := os.Stat(dst); err == nil {
		return storage.Snapshot{}, fmt.Errorf("%w: %s", storage.ErrExists, id)
	}
	if err := btrfs(ctx, "subvolume", "snapshot", "-r", p.MainDir(), dst); err != nil {
		return storage.Snapshot{}, err
	}
	m := meta{ID: id, CreatedAt: time.Now().UTC(), DataStateAt: opt.DataStateAt, Message: opt.Message, Labels: opt.Labels}
	raw, _ := json.Marshal(m)
	os.WriteFile(dst+".json", raw, 0o644)
	return p.getLocked(ctx, id)
}

func (p *btrfsPool) Snapshots(ctx context.Context) ([]storage.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	files, _ := filepath.Glob(filepath.Join(p.root, "snapshots", "*.json"))
	var out []storage.Snapshot
	for _, f := range files {
		var m meta
		raw, err := os.ReadFile(f)
		if err != nil || json.Unmarshal(raw, &m) != nil {
			continue
		}
		s, err := p.getLocked(ctx, m.ID)
		if err == nil {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DataStateAt.After(out[j].DataStateAt) })
	return out, nil
}

func (p *btrfsPool) GetSnapshot(ctx context.Context, id string) (storage.Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.getLocked(ctx, id)
}

func (p *btrfsPool) getLocked(ctx context.Context, id string) (storage.Snapshot, error) {
	name, err := p.snapName(id)
	if err != nil {
		return storage.Snapshot{}, err
	}
	raw, err := os.ReadFile(filepath.Join(p.root, "snapshots", name+".json"))
	if err != nil {
		return storage.Snapshot{}, fmt.Errorf("%w: snapshot %s", storage.ErrNotFound, id)
	}
	var m meta
	json.Unmarshal(raw, &m)
	s := storage.Snapshot{ID: id, Pool: p.name, CreatedAt: m.CreatedAt, DataStateAt: m.DataStateAt, Message: m.Message, Labels: m.Labels}
	for _, c := range p.clonesLocked() {
		if c.SnapshotID == id {
			s.Clones = append(s.Clones, c.Name)
		}
	}
	return s, nil
}

func (p *btrfsPool) DestroySnapshot(ctx context.Context, id string, force bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, err := p.getLocked(ctx, id)
	if err != nil {
		return err
	}
	if len(s.Clones) > 0 && !force {
		return fmt.Errorf("%w: %s", storage.ErrHasDependents, id)
	}
	for _, c := range s.Clones {
		p.destroyCloneLocked(ctx, c)
	}
	name, _ := p.snapName(id)
	if err := btrfs(ctx, "subvolume", "delete", filepath.Join(p.root, "snapshots", name)); err != nil {
		return err
	}
	return os.Remove(filepath.Join(p.root, "snapshots", name+".json"))
}

func (p *btrfsPool) Clone(ctx context.Context, snapshotID, name string) (storage.Clone, error) {
	if err := storage.ValidateName("clone name", name); err != nil {
		return storage.Clone{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.getLocked(ctx, snapshotID); err != nil {
		return storage.Clone{}, err
	}
	dst := filepath.Join(p.root, "clones", name)
	if _, err := os.Stat(dst); err == nil {
		return storage.Clone{}, fmt.Errorf("%w: clone %s", storage.ErrExists, name)
	}
	sn, _ := p.snapName(snapshotID)
	if err := btrfs(ctx, "subvolume", "snapshot", filepath.Join(p.root, "snapshots", sn), dst); err != nil {
		return storage.Clone{}, err
	}
	m := meta{ID: name, CreatedAt: time.Now().UTC(), SnapshotID: snapshotID}
	raw, _ := json.Marshal(m)
	os.WriteFile(dst+".json", raw, 0o644)
	return storage.Clone{Name: name, SnapshotID: snapshotID, Mountpoint: dst, CreatedAt: m.CreatedAt}, nil
}

func (p *btrfsPool) Clones(ctx context.Context) ([]storage.Clone, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.clonesLocked(), nil
}

func (p *btrfsPool) clonesLocked() []storage.Clone {
	files, _ := filepath.Glob(filepath.Join(p.root, "clones", "*.json"))
	var out []storage.Clone
	for _, f := range files {
		var m meta
		raw, err := os.ReadFile(f)
		if err != nil || json.Unmarshal(raw, &m) != nil {
			continue
		}
		out = append(out, storage.Clone{Name: m.ID, SnapshotID: m.SnapshotID, Mountpoint: strings.TrimSuffix(f, ".json"), CreatedAt: m.CreatedAt})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

func (p *btrfsPool) DestroyClone(ctx context.Context, name string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.destroyCloneLocked(ctx, name)
}

func (p *btrfsPool) destroyCloneLocked(ctx context.Context, name string) error {
	dst := filepath.Join(p.root, "clones", name)
	if _, err := os.Stat(dst + ".json"); err != nil {
		return fmt.Errorf("%w: clone %s", storage.ErrNotFound, name)
	}
	if err := btrfs(ctx, "subvolume", "delete", dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Remove(dst + ".json")
}

func (p *btrfsPool) Usage(ctx context.Context) (storage.Usage, error) {
	return storage.Usage{CompressRatio: 1}, nil
}
