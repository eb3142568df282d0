package api

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// lagJob is a continuously updated mode whose report is fixed.
type lagJob struct{ checked time.Time }

func (lagJob) Mode() string { return "logical" }
func (lagJob) Run(context.Context, job.Target) (job.Outcome, error) {
	return job.Outcome{}, errors.New("not run in this test")
}
func (j lagJob) Report(storage.Pool) (job.Report, bool) {
	return job.Report{
		Lag:    &job.Lag{Kind: job.LagSubscription, Seconds: 42.5, Bytes: 4096, CheckedAt: j.checked, SourceReachable: true},
		Alerts: map[string]job.Alert{"lag_high": {Level: "warning", Message: "behind", Count: 1, LastSeen: j.checked}},
	}, true
}

// TestRetrievalLagInStatus: a continuously updated mode's lag is the
// retrieval part's "lag" object (kept fields unchanged), its lag_high
// alert is among the alerts, and DLE's synchronization section carries
// the lag in seconds.
func TestRetrievalLagInStatus(t *testing.T) {
	p := clonetest.NewPool(t)
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.Retrieval = config.Retrieval{Mode: "logical", Source: config.Source{Host: "127.0.0.1", Username: "x"}, Jobs: 1, Pool: p.Name()}
	cfg.StateDir = t.TempDir()
	checked := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	r, err := retrieval.New(retrieval.Options{Config: cfg, Pool: p, Logger: (&logtest.Buffer{}).Logger(), Job: lagJob{checked: checked}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() }) // nothing runs
	s := &Server{retrieval: r}
	b, err := json.Marshal(s.retrievingView())
	if err != nil {
		t.Fatal(err)
	}
	var ret map[string]any
	if err := json.Unmarshal(b, &ret); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"mode", "status", "lastRefresh", "nextRefresh", "alerts", "activity", "lag"} {
		if _, ok := ret[k]; !ok {
			t.Errorf("retrieving has no %q: %s", k, b)
		}
	}
	lag, _ := ret["lag"].(map[string]any)
	if lag["kind"] != "subscription" || lag["seconds"] != 42.5 || lag["bytes"] != float64(4096) || lag["sourceReachable"] != true {
		t.Errorf("lag %v", lag)
	}
	if at, _ := lag["checkedAt"].(string); !strings.HasPrefix(at, "2026-12-03") {
		t.Errorf("lag.checkedAt %v", lag["checkedAt"])
	}
	if _, ok := ret["alerts"].(map[string]any)["lag_high"]; !ok {
		t.Errorf("no lag_high alert in %v", ret["alerts"])
	}
	sync := synchronizationView(s.retrievingView().Lag)
	if sync.Status.Code != "OK" || sync.ReplicationLag != 42 {
		t.Errorf("synchronization %+v, want OK with 42 s", sync)
	}
	if sync := synchronizationView(nil); sync.Status.Code != "Not available" {
		t.Errorf("synchronization without lag %+v", sync)
	}
}
