package physical

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestCheckTarget: the base is the newest pre snapshot at or before the
// target; the window's start is included and its end excluded, for times
// and LSNs; refusals name the window.
func TestCheckTarget(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 16, 0, 0, 500_000_000, time.UTC)
	w := ArchiveWindow{Available: true, From: t0, To: t0.Add(time.Hour), FromLSN: "0/3000100", ToLSN: "0/9000000", Bases: []Base{
		{SnapshotID: "p@snapshot_20261203160000", At: t0, LSN: "0/3000100"},
		{SnapshotID: "p@snapshot_20261203163000", At: t0.Add(30 * time.Minute), LSN: "0/6000000"},
	}}
	for _, c := range []struct {
		name string
		t    Target
		base string
		bad  string
	}{
		{"window start", Target{Time: t0}, "p@snapshot_20261203160000", ""},
		{"between", Target{Time: t0.Add(29 * time.Minute)}, "p@snapshot_20261203160000", ""},
		{"second base", Target{Time: t0.Add(30 * time.Minute)}, "p@snapshot_20261203163000", ""},
		{"just before the end", Target{Time: t0.Add(time.Hour - time.Microsecond)}, "p@snapshot_20261203163000", ""},
		{"the end", Target{Time: t0.Add(time.Hour)}, "", "outside the archive window 2026-12-03T16:00:00.5Z .. 2026-12-03T17:00:00.5Z"},
		{"before", Target{Time: t0.Add(-time.Millisecond)}, "", "outside the archive window"},
		{"lsn start", Target{LSN: "0/3000100"}, "p@snapshot_20261203160000", ""},
		{"lsn second base", Target{LSN: "0/7000000"}, "p@snapshot_20261203163000", ""},
		{"lsn end", Target{LSN: "0/9000000"}, "", "LSN 0/9000000 is outside the archive window 0/3000100 .. 0/9000000"},
		{"lsn before", Target{LSN: "0/3000000"}, "", "outside the archive window"},
		{"lsn malformed", Target{LSN: "3000000"}, "", "X/Y"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := w.CheckTarget(c.t)
			if c.bad != "" {
				if err == nil || !strings.Contains(err.Error(), c.bad) {
					t.Errorf("CheckTarget(%s) = %v, %v; want an error containing %q", c.t, b, err, c.bad)
				}
				return
			}
			if err != nil || b.SnapshotID != c.base {
				t.Errorf("CheckTarget(%s) = %s, %v; want base %s", c.t, b.SnapshotID, err, c.base)
			}
		})
	}
	if _, err := (ArchiveWindow{Reason: "no archive here"}).CheckTarget(Target{Time: t0}); !errors.Is(err, ErrNoArchive) || !strings.Contains(err.Error(), "no archive here") {
		t.Errorf("an unavailable window: %v, want ErrNoArchive with the reason", err)
	}
}

func TestParseLSN(t *testing.T) {
	for s, want := range map[string]uint64{"0/0": 0, "0/3000060": 0x3000060, "1/0": 1 << 32, "FF/FFFFFFFF": 0xFF_FFFF_FFFF} {
		if got, err := ParseLSN(s); err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %x, %v; want %x", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "/1", "1/", "g/1", "123456789/0", "0/-1"} {
		if _, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) accepted, want an error", s)
		}
	}
}
