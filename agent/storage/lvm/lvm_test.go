package lvm

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/command"
)

// The testdata/lvs-*.json files are real `lvs --reportformat json --units b
// --nosuffix -o <lvsFields>` output, captured by TestInVMPostgresOnThinPool
// inside the QEMU VM (LVM 2.03.16, Debian 12) and saved with
// `THINLAB_LVM_CAPTURE=1 go test -run TestLVMInQEMU`.

func loadReport(t *testing.T, name string) []lvRow {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := parseLVs(b)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func TestStateFromCapturedReport(t *testing.T) {
	st := buildState(loadReport(t, "lvs-snapshot-two-clones.json"), "pg1", "tpool")
	if len(st.broken) > 0 {
		t.Fatalf("broken: %v", st.broken)
	}
	if st.thinPool == nil || st.main == nil || st.main.Name != "pg1_main" {
		t.Fatalf("thin pool %v, main %v", st.thinPool, st.main)
	}
	snaps := st.snapshots("pg1")
	if len(snaps) != 1 {
		t.Fatalf("snapshots = %+v", snaps)
	}
	s := snaps[0]
	wantAt := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	if s.ID != "pg1@snapshot_20261125100000" || !s.DataStateAt.Equal(wantAt) || s.Pool != "pg1" ||
		s.Message != "first, with \"quotes\"\nand a newline" || s.Labels["env"] != "test" || s.Labels["ünï"] != "çødé" ||
		strings.Join(s.Clones, ",") != "c1,c2:blue" || s.CreatedAt.IsZero() {
		t.Fatalf("snapshot = %+v", s)
	}
	// 6.77% of 1.5 GiB.
	if want := mapped(6.77); s.LogicalSize != want {
		t.Errorf("LogicalSize = %d, want %d", s.LogicalSize, want)
	}

	clones := st.clonesList(func(n string) string { return "/m/clones/" + n })
	if len(clones) != 2 || clones[0].Name != "c1" || clones[1].Name != "c2:blue" || clones[1].Mountpoint != "/m/clones/c2:blue" || clones[0].SnapshotID != s.ID {
		t.Fatalf("clones = %+v", clones)
	}
	if !clones[0].CreatedAt.Before(clones[1].CreatedAt) {
		t.Errorf("clones not oldest first: %+v", clones)
	}
	// c1 maps 8.50%, its snapshot 6.77%: c1 wrote the difference.
	if want := mapped(8.50) - mapped(6.77); clones[0].UsedBytes != want {
		t.Errorf("c1 UsedBytes = %d, want %d", clones[0].UsedBytes, want)
	}

	u := st.usage()
	if u.Size != 1610612736 || u.Used != mapped(9.88) || u.Free != u.Size-u.Used ||
		u.DataSize != mapped(6.77) || u.UsedByClones != clones[0].UsedBytes+clones[1].UsedBytes ||
		u.UsedBySnapshots != u.Used-u.DataSize-u.UsedByClones || u.CompressRatio != 1 {
		t.Errorf("usage = %+v", u)
	}
	if err := st.checkSpace(); err != nil {
		t.Errorf("checkSpace: %v", err)
	}
}

// mapped is pct percent of the captured LVs' 1.5 GiB, computed as lvRow
// does.
func mapped(pct float64) uint64 { return uint64(float64(1610612736) * pct / 100) }

func TestStateIgnoresOtherPools(t *testing.T) {
	rows := loadReport(t, "lvs-snapshot-two-clones.json")
	st := buildState(rows, "pg2", "tpool")
	if st.main != nil || len(st.snaps) != 0 || len(st.clones) != 0 || st.thinPool == nil {
		t.Fatalf("pool pg2 sees pg1's LVs: %+v", st)
	}
	if !st.names["pg1_main"] {
		t.Fatal("LV names must include other pools' LVs (collision checks)")
	}
	// The same pool name in another thin pool is another pool.
	if st := buildState(rows, "pg1", "otherpool"); st.main != nil || len(st.snaps) != 0 || st.thinPool != nil {
		t.Fatalf("thin pool filter ignored: %+v", st)
	}
}

func TestStateFreshPool(t *testing.T) {
	st := buildState(loadReport(t, "lvs-empty-pool.json"), "pg1", "tpool")
	if st.main == nil || len(st.snaps) != 0 || len(st.clones) != 0 {
		t.Fatalf("state = %+v", st)
	}
	// devPath must name the node LVM made.
	p := &Pool{cfg: Config{VG: "tlvg610974"}}
	if !st.main.active() || p.devPath(st.main.Name) != st.main.DMPath {
		t.Fatalf("main row = %+v, devPath %s", st.main, p.devPath(st.main.Name))
	}
}

func TestCheckSpaceRefusesFullPool(t *testing.T) {
	full := lvRow{Name: "tpool", Attr: "twi-aotzD-", DataPercent: "100.00", MetaPercent: "20.00", Size: "1073741824"}
	err := state{thinPool: &full}.checkSpace()
	if !errors.Is(err, storage.ErrNoSpace) || !strings.Contains(err.Error(), "lvextend") {
		t.Fatalf("err = %v", err)
	}
}

// lvmTagRE is the tag charset LVM 2.03 accepts.
var lvmTagRE = regexp.MustCompile(`^[A-Za-z0-9_+.-]+$`)

func TestMetaTagsRoundTrip(t *testing.T) {
	long := strings.Repeat("ä€ long message with, commas\n", 200) // several chunks
	in := snapshotMeta{ID: "p@snapshot_20260101000000", DataStateAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), CreatedAt: time.Now().UTC(), Message: long, Labels: map[string]string{"a,b": "c=d", "": "empty key"}}
	tags, err := encodeMetaTags(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) < 2 {
		t.Fatalf("want several chunks, got %d", len(tags))
	}
	all := append([]string{poolTag("p:1"), kindTag(kindSnap)}, tags...)
	for _, tag := range all {
		if !lvmTagRE.MatchString(tag) || len(tag) > 1024 {
			t.Fatalf("tag %q is not valid for LVM", tag)
		}
	}
	// lvs prints tags sorted and comma-separated.
	ts, err := parseTags(strings.Join(all, ","))
	if err != nil {
		t.Fatal(err)
	}
	var out snapshotMeta
	if err := ts.decodeMeta(&out); err != nil {
		t.Fatal(err)
	}
	if ts.pool != "p:1" || ts.kind != kindSnap || out.Message != in.Message || out.Labels["a,b"] != "c=d" || out.Labels[""] != "empty key" || !out.CreatedAt.Equal(in.CreatedAt) {
		t.Fatalf("round trip: pool %q kind %q meta %+v", ts.pool, ts.kind, out)
	}

	// A missing chunk is detected, not silently truncated.
	ts2, _ := parseTags(strings.Join(append(all[:2], tags[1:]...), ","))
	if err := ts2.decodeMeta(&out); err == nil || !strings.Contains(err.Error(), "000 is missing") {
		t.Fatalf("missing chunk: %v", err)
	}
	if _, err := encodeMetaTags(snapshotMeta{Message: strings.Repeat("x", 100_000)}); err == nil {
		t.Fatal("oversized metadata accepted")
	}
	if _, err := parseTags("thinlab.meta.x.AAAA"); err == nil {
		t.Fatal("malformed chunk index accepted")
	}
	if ts, err := parseTags("someone.elses,tag"); err != nil || ts.pool != "" {
		t.Fatalf("foreign tags: %+v %v", ts, err)
	}
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"pg1", "a.b-c_d", "Z9"} {
		if err := validatePoolName(ok); err != nil {
			t.Errorf("pool %q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a:b", "a/b", "-x", "snapshotpool", "x_tmeta", "has space", strings.Repeat("a", 64)} {
		if err := validatePoolName(bad); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("pool %q: %v", bad, err)
		}
	}
	lv, err := validateCloneName("pg1", "c2:blue")
	if err != nil || lv != "pg1_c_c2+blue" {
		t.Fatalf("clone c2:blue: %q %v", lv, err)
	}
	for _, bad := range []string{"", "../x", "a/b", "x_rimage", "sp ace", ".hidden"} {
		if _, err := validateCloneName("pg1", bad); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("clone %q: %v", bad, err)
		}
	}
	// The longest names both rules allow still fit LVM's limit.
	pool, clone := strings.Repeat("p", 63), strings.Repeat("c", 63)
	if _, err := validateCloneName(pool, clone); !errors.Is(err, storage.ErrInvalidName) {
		t.Errorf("129-character LV name accepted: %v", err)
	}
	if _, err := validateCloneName(strings.Repeat("p", 60), strings.Repeat("c", 63)); err != nil {
		t.Errorf("126-character LV name refused: %v", err)
	}
	if got := snapshotLV("pg1", "snapshot_20261125100000"); got != "pg1_snapshot_20261125100000" || validateLVName("lv", got) != nil {
		t.Errorf("snapshot LV %q", got)
	}
	if err := validateVGName("snapshot_vg-1"); err != nil {
		t.Errorf("vg: %v", err)
	}
	for _, bad := range []string{"", "-vg", "v/g", ".."} {
		if err := validateVGName(bad); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("vg %q: %v", bad, err)
		}
	}
	p := &Pool{cfg: Config{VG: "my-vg"}}
	if got := p.devPath("pg-1_main"); got != "/dev/mapper/my--vg-pg--1_main" {
		t.Errorf("devPath = %s", got)
	}
}

func TestClassify(t *testing.T) {
	cases := map[string]error{
		`Logical Volume "p_c_x" already exists in volume group "vg"`:                         storage.ErrExists,
		`Failed to find logical volume "vg/nosuch"`:                                          storage.ErrNotFound,
		`Volume group "nosuch" not found`:                                                    storage.ErrNotFound,
		`Insufficient free space: 256 extents needed, but only 10 available`:                 storage.ErrNoSpace,
		`Cannot create new thin volume, free space in thin pool vg/tpool reached threshold.`: storage.ErrNoSpace,
	}
	for stderr, want := range cases {
		err := classify(&command.Error{Cmdline: "lvm x", ExitCode: 5, Stderr: stderr, Err: errors.New("exit status 5")})
		if !errors.Is(err, want) || !strings.Contains(err.Error(), stderr) {
			t.Errorf("%q: %v, want %v", stderr, err, want)
		}
	}
	other := &command.Error{Stderr: "something else", Err: errors.New("exit status 5")}
	if err := classify(other); err != other {
		t.Errorf("unknown failure rewrapped: %v", err)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/a\040b\011c\134d`); got != "/a b\tc\\d" {
		t.Errorf("got %q", got)
	}
	if got := unescapeMount(`/plain`); got != "/plain" {
		t.Errorf("got %q", got)
	}
}

func TestOpenValidatesConfig(t *testing.T) {
	ctx := t.Context()
	for _, c := range []Config{
		{Name: "a:b", VG: "vg", ThinPool: "tp"},
		{Name: "p", VG: "v g", ThinPool: "tp"},
		{Name: "p", VG: "vg", ThinPool: ""},
	} {
		if _, err := Open(ctx, c); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	if _, err := Open(ctx, Config{Name: "p", VG: "vg", ThinPool: "tp", FSType: "btrfs"}); err == nil || !strings.Contains(err.Error(), "xfs or ext4") {
		t.Errorf("fsType: %v", err)
	}
	if _, err := Open(ctx, Config{Name: "p", VG: "vg", ThinPool: "tp", MountRoot: "rel/dir"}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("mountRoot: %v", err)
	}
}

func TestSnapshotOptionsLimits(t *testing.T) {
	ok := storage.SnapshotOptions{Message: "m", Labels: map[string]string{"k": "v"}}
	if err := validateSnapshotOptions(ok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []storage.SnapshotOptions{
		{Labels: map[string]string{"": "x"}},
		{Message: strings.Repeat("m", 5000)},
		{Labels: map[string]string{"k": strings.Repeat("v", 5000)}},
	} {
		if err := validateSnapshotOptions(bad); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("%.40v: %v", bad, err)
		}
	}
	// The largest accepted metadata still fits the tags.
	if _, err := encodeMetaTags(snapshotMeta{Message: strings.Repeat("\n", 4096/2-2), Labels: map[string]string{"k": strings.Repeat("v", 4096-10)}}); err != nil {
		t.Fatal(err)
	}
}
