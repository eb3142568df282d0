package ship_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/agent/storage/ship"
	"github.com/thinlab/thinlab/agent/storage/storagetest"
)

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// snapshotWith writes content into main's marker file and snapshots it
// at dataStateAt.
func snapshotWith(t *testing.T, p storage.Pool, content string, at time.Time, labels map[string]string) storage.Snapshot {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(p.MainDir(), storage.DataSubdir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.MainDir(), storage.DataSubdir, "marker"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	// Some bulk, so that a cut in the middle lands inside file data.
	if err := os.WriteFile(filepath.Join(p.MainDir(), storage.DataSubdir, "bulk-"+content), bytes.Repeat([]byte(content), 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	sn, err := p.Snapshot(ctxOf(t), storage.SnapshotOptions{DataStateAt: at, Message: "state " + content, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

// readClone clones snapshot id in p and returns its marker.
func readClone(t *testing.T, p storage.Pool, id, name string) string {
	t.Helper()
	c, err := p.Clone(ctxOf(t), id, name)
	if err != nil {
		t.Fatalf("clone received snapshot %s: %v", id, err)
	}
	t.Cleanup(func() { _ = p.DestroyClone(context.Background(), name) })
	raw, err := os.ReadFile(filepath.Join(c.Mountpoint, storage.DataSubdir, "marker"))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func send(t *testing.T, p storage.Pool, id, base string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := ship.Send(ctxOf(t), p, id, base, nil, &buf); err != nil {
		t.Fatalf("send %s (base %q): %v", id, base, err)
	}
	return buf.Bytes()
}

// leftovers lists what a receive may leave in a pool's snapshots
// directory besides published snapshots and their sidecars.
func leftovers(t *testing.T, p storage.Pool) []string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(p.MainDir()), "snapshots")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		// .received-<name> keeps a published btrfs snapshot's received
		// subvolume (the base of later incremental streams): not a leftover.
		if strings.HasPrefix(e.Name(), ".") && !strings.HasPrefix(e.Name(), ".received-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func snapshotIDs(t *testing.T, p storage.Pool) []string {
	t.Helper()
	snaps, err := p.Snapshots(ctxOf(t))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range snaps {
		ids = append(ids, s.ID)
	}
	return ids
}

func TestShipBtrfs(t *testing.T) {
	testShip(t, storage.ModeBtrfs, true)
}

func TestShipReflink(t *testing.T) {
	testShip(t, storage.ModeReflink, false)
}

func testShip(t *testing.T, mode string, incremental bool) {
	src := storagetest.NewLoopPool(t, mode)
	dst := storagetest.NewLoopPool(t, mode)
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	labels := map[string]string{"team": "data", "env": "staging"}
	s1 := snapshotWith(t, src, "one", t0, labels)

	full1 := send(t, src, s1.ID, "")
	got, err := ship.Receive(ctxOf(t), dst, bytes.NewReader(full1))
	if err != nil {
		t.Fatalf("receive full stream: %v", err)
	}
	if want := dst.Name() + "@snapshot_20261101100000"; got.ID != want {
		t.Errorf("received snapshot ID %s, want %s (the sender's name in the receiver's pool)", got.ID, want)
	}
	if !got.DataStateAt.Equal(t0) || got.Message != "state one" || !maps.Equal(got.Labels, labels) {
		t.Errorf("received metadata dataStateAt=%s message=%q labels=%v, want %s %q %v", got.DataStateAt, got.Message, got.Labels, t0, "state one", labels)
	}
	if m := readClone(t, dst, got.ID, "c1"); m != "one" {
		t.Errorf("clone of the received snapshot reads %q, want %q", m, "one")
	}

	t.Run("Incremental", func(t *testing.T) {
		s2 := snapshotWith(t, src, "two", t0.Add(time.Hour), nil)
		inc := send(t, src, s2.ID, s1.ID)
		h, err := ship.ReadHeader(bytes.NewReader(inc))
		if err != nil {
			t.Fatal(err)
		}
		if incremental {
			if h.Base != "snapshot_20261101100000" {
				t.Errorf("incremental stream's base %q, want snapshot_20261101100000", h.Base)
			}
			full2 := send(t, src, s2.ID, "")
			// The full stream holds bulk-one and bulk-two, the
			// incremental one bulk-two only.
			if len(inc) >= len(full2)*3/4 {
				t.Errorf("incremental stream is %d bytes, full %d: want about half", len(inc), len(full2))
			}
		} else if h.Base != "" {
			t.Errorf("%s pool sent an incremental stream (base %q); it can only send full ones", mode, h.Base)
		}
		got2, err := ship.Receive(ctxOf(t), dst, bytes.NewReader(inc))
		if err != nil {
			t.Fatalf("receive second stream: %v", err)
		}
		if m := readClone(t, dst, got2.ID, "c2"); m != "two" {
			t.Errorf("clone of the second snapshot reads %q, want %q", m, "two")
		}
		if _, err := ship.Receive(ctxOf(t), dst, bytes.NewReader(inc)); !errors.Is(err, storage.ErrExists) {
			t.Errorf("receiving the same snapshot again: %v, want ErrExists", err)
		}
	})

	t.Run("InterruptedLeavesNothing", func(t *testing.T) {
		s3 := snapshotWith(t, src, "three", t0.Add(2*time.Hour), nil)
		full := send(t, src, s3.ID, "")
		before := snapshotIDs(t, dst)
		damaged := bytes.Clone(full)
		damaged[len(damaged)/2] ^= 0xff
		cases := map[string][]byte{
			"cut in the middle":      full[:len(full)/2],
			"cut before the trailer": full[:len(full)-10],
			"cut after the header":   full[:len(ship.Magic)+4+100],
			"altered byte":           damaged,
		}
		for name, stream := range cases {
			_, err := ship.Receive(ctxOf(t), dst, bytes.NewReader(stream))
			if err == nil {
				t.Errorf("%s: receive succeeded, want an error", name)
			}
			if after := snapshotIDs(t, dst); !slicesEqual(after, before) {
				t.Errorf("%s: snapshots after a failed receive %v, want %v", name, after, before)
			}
			if l := leftovers(t, dst); len(l) > 0 {
				t.Errorf("%s: left in the snapshots directory: %v", name, l)
			}
		}
		got3, err := ship.Receive(ctxOf(t), dst, bytes.NewReader(full))
		if err != nil {
			t.Fatalf("receive after failed attempts: %v", err)
		}
		if m := readClone(t, dst, got3.ID, "c3"); m != "three" {
			t.Errorf("clone reads %q, want %q", m, "three")
		}
	})

	t.Run("DestroyRemovesEverything", func(t *testing.T) {
		s4 := snapshotWith(t, src, "four", t0.Add(3*time.Hour), nil)
		got4, err := ship.Receive(ctxOf(t), dst, bytes.NewReader(send(t, src, s4.ID, "")))
		if err != nil {
			t.Fatal(err)
		}
		if err := dst.DestroySnapshot(ctxOf(t), got4.ID, false); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(filepath.Dir(dst.MainDir()), "snapshots")
		for _, leftover := range []string{".received-snapshot_20261101130000", "snapshot_20261101130000", "snapshot_20261101130000.json"} {
			if _, err := os.Lstat(filepath.Join(dir, leftover)); err == nil {
				t.Errorf("%s left after destroying the received snapshot", leftover)
			}
		}
	})
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestShipRefusals: a stream of another pool kind, and an incremental
// stream whose base the receiver lacks, are refused and leave nothing.
func TestShipRefusals(t *testing.T) {
	bt := storagetest.NewLoopPool(t, storage.ModeBtrfs)
	bt2 := storagetest.NewLoopPool(t, storage.ModeBtrfs)
	rf := storagetest.NewLoopPool(t, storage.ModeReflink)
	t0 := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	s1 := snapshotWith(t, bt, "one", t0, nil)
	s2 := snapshotWith(t, bt, "two", t0.Add(time.Minute), nil)

	_, err := ship.Receive(ctxOf(t), rf, bytes.NewReader(send(t, bt, s1.ID, "")))
	if !errors.Is(err, ship.ErrNotShippable) || !strings.Contains(err.Error(), "same kind") {
		t.Errorf("btrfs stream into a reflink pool: %v, want ErrNotShippable naming the kinds", err)
	}
	if ids := snapshotIDs(t, rf); len(ids) != 0 || len(leftovers(t, rf)) != 0 {
		t.Errorf("reflink pool after a refused stream: snapshots %v, leftovers %v", ids, leftovers(t, rf))
	}

	_, err = ship.Receive(ctxOf(t), bt2, bytes.NewReader(send(t, bt, s2.ID, s1.ID)))
	if !errors.Is(err, storage.ErrNotFound) || !strings.Contains(err.Error(), "ship that one first") {
		t.Errorf("incremental stream without its base: %v, want ErrNotFound saying to ship the base first", err)
	}
	if ids := snapshotIDs(t, bt2); len(ids) != 0 || len(leftovers(t, bt2)) != 0 {
		t.Errorf("btrfs pool after a refused stream: snapshots %v, leftovers %v", ids, leftovers(t, bt2))
	}

	// A data directory of another uid than the receiving pool's owner
	// (btrfs keeps numeric owners): a clone could not start, so refused.
	other := storagetest.NewLoopPool(t, storage.ModeBtrfs)
	data := filepath.Join(other.MainDir(), storage.DataSubdir)
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Snapshot(ctxOf(t), storage.SnapshotOptions{DataStateAt: t0})
	if err != nil {
		t.Fatal(err)
	}
	_, err = ship.Receive(ctxOf(t), bt2, bytes.NewReader(send(t, other, foreign.ID, "")))
	if !errors.Is(err, ship.ErrNotShippable) || !strings.Contains(err.Error(), "uid 12345") {
		t.Errorf("data directory of uid 12345: %v, want ErrNotShippable naming the uid", err)
	}
	if ids := snapshotIDs(t, bt2); len(ids) != 0 || len(leftovers(t, bt2)) != 0 {
		t.Errorf("btrfs pool after a refused owner: snapshots %v, leftovers %v", ids, leftovers(t, bt2))
	}

	if _, err := ship.Receive(ctxOf(t), bt2, strings.NewReader("GET / HTTP/1.1\r\n")); !errors.Is(err, ship.ErrBadStream) {
		t.Errorf("garbage: %v, want ErrBadStream", err)
	}
}
