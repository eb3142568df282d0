package storage

import (
	"errors"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "clone-1", "main_pool", "v1.2", "dle:compat", "A9"} {
		if err := ValidateName("clone name", ok); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", ok, err)
		}
	}
	long := "a"
	for len(long) < 64 {
		long += "b"
	}
	for _, bad := range []string{"", "a/b", "..", "a..b", "with space", "x;rm", "$(id)", "-flag", ".hidden", "a\nb", long} {
		err := ValidateName("clone name", bad)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestSnapshotIDRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 25, 9, 30, 15, 987654321, time.FixedZone("CET", 3600))
	id, name, got, err := NewSnapshotID("main", at)
	if err != nil {
		t.Fatal(err)
	}
	if id != "main@snapshot_20261125083015" || name != "snapshot_20261125083015" {
		t.Fatalf("NewSnapshotID = %q, %q", id, name)
	}
	if !got.Equal(at.Truncate(time.Second)) || got.Location() != time.UTC {
		t.Fatalf("dataStateAt = %v, want %v in UTC", got, at.Truncate(time.Second))
	}
	pool, name2, err := ParseSnapshotID(id)
	if err != nil || pool != "main" || name2 != name {
		t.Fatalf("ParseSnapshotID(%q) = %q, %q, %v", id, pool, name2, err)
	}
	for _, bad := range []string{"", "main", "main@", "@snapshot_20261125083015", "main@snapshot_2026", "main@other_20261125083015", "a/b@snapshot_20261125083015", "main@snapshot_20261125083015;x"} {
		if _, _, err := ParseSnapshotID(bad); err == nil {
			t.Errorf("ParseSnapshotID(%q) succeeded", bad)
		}
	}
	if _, _, _, err := NewSnapshotID("main", time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC)); err == nil {
		t.Error("a dataStateAt in year 12000 was accepted")
	}
}

func TestSortSnapshots(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := []Snapshot{{ID: "p@a", DataStateAt: t0}, {ID: "p@c", DataStateAt: t0.Add(time.Hour)}, {ID: "p@b", DataStateAt: t0}}
	SortSnapshots(s)
	if s[0].ID != "p@c" || s[1].ID != "p@b" || s[2].ID != "p@a" {
		t.Fatalf("order = %s, %s, %s; want newest first, then ID descending", s[0].ID, s[1].ID, s[2].ID)
	}
}
