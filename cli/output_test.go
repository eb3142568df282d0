package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

func TestFormatBytes(t *testing.T) {
	cases := map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"}
	for n, want := range cases {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestFormatAge(t *testing.T) {
	now := time.Date(2024, 1, 2, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		ago  time.Duration
		want string
	}{{5 * time.Second, "5s"}, {3 * time.Minute, "3m"}, {5 * time.Hour, "5h"}, {72 * time.Hour, "3d"}, {-time.Second, "0s"}}
	for _, c := range cases {
		if got := formatAge(now.Add(-c.ago), now); got != c.want {
			t.Errorf("formatAge(-%v) = %q, want %q", c.ago, got, c.want)
		}
	}
	if formatAge(time.Time{}, now) != "-" {
		t.Error("zero time should render as -")
	}
}

var (
	testNow  = time.Date(2024, 1, 2, 12, 0, 0, 0, time.UTC)
	testSnap = agentapi.Snapshot{
		ID: "pool1@snapshot_20240102100000", Pool: "pool1",
		CreatedAt:    &agentapi.LocalTime{Time: testNow.Add(-2 * time.Hour)},
		DataStateAt:  &agentapi.LocalTime{Time: time.Date(2024, 1, 2, 10, 0, 0, 0, time.UTC)},
		PhysicalSize: 2 << 20, LogicalSize: 3 << 30, NumClones: 1,
	}
	testClone = agentapi.Clone{
		ID: "mytest", Snapshot: &testSnap, Protected: true,
		CreatedAt: &agentapi.LocalTime{Time: testNow.Add(-90 * time.Second)},
		Status:    agentapi.Status{Code: "OK", Message: "Clone is ready to accept Postgres connections."},
		DB:        agentapi.Database{Host: "db.local", Port: "6000", Username: "alice", DBName: "postgres", ConnStr: "host=db.local port=6000 user=alice dbname=postgres"},
		Metadata:  agentapi.CloneMetadata{CloneDiffSize: 4096, LogicalSize: 3 << 30, CloningTime: 1.5},
	}
)

func TestRenderClones(t *testing.T) {
	var b bytes.Buffer
	creating := agentapi.Clone{ID: "c2", Status: agentapi.Status{Code: "CREATING"}}
	asleep := agentapi.Clone{ID: "c3", Status: agentapi.Status{Code: "OK"}, Hibernated: true, DB: agentapi.Database{Port: "6001"}}
	if err := renderClones(&b, []agentapi.Clone{testClone, creating, asleep}, testNow); err != nil {
		t.Fatal(err)
	}
	want := `ID      STATUS      SNAPSHOT                       PORT  USER   PROTECTED  AGE  DIFF SIZE
mytest  OK          pool1@snapshot_20240102100000  6000  alice  yes        1m   4.0 KiB
c2      CREATING    -                              -     -      no         -    0 B
c3      HIBERNATED  -                              6001  -      no         -    0 B
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestRenderClone(t *testing.T) {
	var b bytes.Buffer
	if err := renderClone(&b, &testClone, testNow); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ID:            mytest\n",
		"Status:        OK  Clone is ready to accept Postgres connections.\n",
		"Snapshot:      pool1@snapshot_20240102100000 (data state at 2024-01-02T10:00:00Z)\n",
		"Port:          6000\n",
		"Connection:    host=db.local port=6000 user=alice dbname=postgres\n",
		"Protected:     yes\n",
		"Logical size:  3.0 GiB\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
}

func TestRenderSnapshots(t *testing.T) {
	var b bytes.Buffer
	if err := renderSnapshots(&b, []agentapi.Snapshot{testSnap}, testNow); err != nil {
		t.Fatal(err)
	}
	want := `ID                             POOL   DATA STATE AT         CREATED  CLONES  SIZE     LOGICAL SIZE  PROTECTED
pool1@snapshot_20240102100000  pool1  2024-01-02T10:00:00Z  2h       1       2.0 MiB  3.0 GiB       no
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestFormatProgress(t *testing.T) {
	for _, tc := range []struct {
		job  agentapi.RetrievalJob
		want string
	}{
		{agentapi.RetrievalJob{Pool: "p1", Phase: "dump and restore", Unit: "bytes", Done: 512 << 20, Total: 2 << 30, RatePerSecond: 32 << 20, ETASeconds: 48},
			"[#####---------------]  25% 512.0 MiB of 2.0 GiB, 32.0 MiB/s, ETA 48s (dump and restore, pool p1)"},
		{agentapi.RetrievalJob{Pool: "p1", Phase: "dump and restore", Unit: "relations", Done: 3, Total: 3},
			"[####################] 100% 3 relations of 3 relations (dump and restore, pool p1)"},
		{agentapi.RetrievalJob{Pool: "p1", Phase: "dump and restore", Unit: "bytes", Done: 1536, RatePerSecond: 100},
			"1.5 KiB done, 100 B/s (dump and restore, pool p1)"},
	} {
		if got := formatProgress(&tc.job); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestRenderStatus(t *testing.T) {
	st := &agentapi.InstanceStatus{
		Status: &agentapi.Status{Code: "WARNING", Message: "Subsystems that need attention: retrieving"},
		Engine: agentapi.Engine{Version: "v1.2.3", Edition: "community", StartedAt: &agentapi.LocalTime{Time: testNow.Add(-3 * time.Hour)}},
		Pools: []agentapi.PoolEntry{{Name: "pool1", Mode: "zfs", Status: "active", CloneList: []string{"mytest"},
			DataStateAt: testSnap.DataStateAt,
			FileSystem:  agentapi.FileSystem{Size: 10 << 30, Free: 8 << 30, UsedByClones: 1 << 20}}},
		Cloning: agentapi.Cloning{NumClones: 1, ExpectedCloningTime: 1.25},
		Retrieving: agentapi.Retrieving{Mode: "logical", Status: "failed",
			Alerts: map[string]agentapi.Alert{"refresh_failed": {Level: "error", Message: "source unreachable", Count: 2}},
			Lag:    &agentapi.RetrievalLag{Kind: "subscription", Seconds: 7, Bytes: 2048, SourceReachable: true}},
	}
	var b bytes.Buffer
	if err := renderStatus(&b, st, testNow); err != nil {
		t.Fatal(err)
	}
	want := `Instance:   WARNING  Subsystems that need attention: retrieving
Engine:     v1.2.3 (community), up 3h
Retrieval:  logical, failed
Lag:        subscription 7 s, 2.0 KiB behind
Alert:      error refresh_failed: source unreachable (2 times)
Clones:     1 (expected cloning time 1.2s)

POOL   MODE  STATUS  DATA STATE AT         SIZE      FREE     USED BY CLONES  CLONES
pool1  zfs   active  2024-01-02T10:00:00Z  10.0 GiB  8.0 GiB  1.0 MiB         1
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// JSON output is the SDK type unchanged, so scripts can decode it with
// sdk/agentapi (or jq) and get what the API sent.
func TestWriteJSONIsTheSDKType(t *testing.T) {
	var b bytes.Buffer
	if err := writeJSON(&b, &testClone); err != nil {
		t.Fatal(err)
	}
	var back agentapi.Clone
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.ID != "mytest" || back.DB.Port != "6000" || back.Snapshot.ID != testSnap.ID {
		t.Errorf("round trip: %+v", back)
	}
	if !strings.Contains(b.String(), `"connStr": "host=db.local port=6000 user=alice dbname=postgres"`) {
		t.Errorf("not indented DLE JSON:\n%s", b.String())
	}
}

// Without a terminal the progress is plain lines, one per state change.
func TestProgressWithoutTerminal(t *testing.T) {
	var b bytes.Buffer
	p := startProgress(&b, "Creating clone x")
	tick := p.start
	p.now = func() time.Time { tick = tick.Add(time.Second); return tick }
	p.Update("CREATING")
	p.Update("CREATING")
	p.Update("OK")
	p.Stop("ready")
	p.Stop("ready") // idempotent
	want := "Creating clone x...\nCreating clone x: CREATING (1s)\nCreating clone x: OK (2s)\nCreating clone x: ready in 3s\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
	if strings.Contains(b.String(), "\r") || strings.Contains(b.String(), "\033") {
		t.Error("terminal control codes in non-terminal output")
	}
}

func TestParseExtraConf(t *testing.T) {
	conf, err := parseExtraConf([]string{"work_mem=64MB", "search_path=a,b", "x.y= spaced value"})
	if err != nil {
		t.Fatal(err)
	}
	if conf["work_mem"] != "64MB" || conf["search_path"] != "a,b" || conf["x.y"] != " spaced value" {
		t.Errorf("%v", conf)
	}
	if c, err := parseExtraConf(nil); len(c) != 0 || err != nil {
		t.Errorf("parseExtraConf(nil) = %v, %v; want no settings and no error", c, err)
	}
}

func TestConnectHost(t *testing.T) {
	if h := connectHost("db.local", "http://agent:2345"); h != "db.local" {
		t.Error(h)
	}
	for _, wild := range []string{"", "0.0.0.0", "::"} {
		if h := connectHost(wild, "http://agent.example:2345/api"); h != "agent.example" {
			t.Errorf("%q -> %q", wild, h)
		}
	}
}

func TestFormatLag(t *testing.T) {
	at := &agentapi.LocalTime{Time: testNow.Add(-5 * time.Second)}
	for _, tc := range []struct {
		lag  agentapi.RetrievalLag
		want string
	}{
		{agentapi.RetrievalLag{Kind: "subscription", SourceReachable: true, CheckedAt: at}, "subscription caught up, checked 5s ago"},
		{agentapi.RetrievalLag{Kind: "standby", Seconds: 12.4, Bytes: 3 << 20, SourceReachable: true, CheckedAt: at}, "standby 12 s, 3.0 MiB behind, checked 5s ago"},
		{agentapi.RetrievalLag{Kind: "subscription", Seconds: 90, CheckedAt: at}, "subscription 90 s, 0 B behind (source unreachable), checked 5s ago"},
	} {
		if got := formatLag(&tc.lag, testNow); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}
