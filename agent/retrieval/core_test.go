package retrieval

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/agent/retrieval/job"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// fakeJob stands in for a mode: it writes a marker into the pool's main
// dataset, reports progress and waits for the test to let it finish.
type fakeJob struct {
	release chan struct{} // closed by the test to let Run return
	running chan struct{} // closed by Run once its progress is set
	err     error
}

func (f *fakeJob) Mode() string { return "fake" }

func (f *fakeJob) Run(ctx context.Context, t job.Target) (job.Outcome, error) {
	out := job.Outcome{DataStateAt: time.Now().UTC().Truncate(time.Second), Databases: []string{"app"}, Bytes: 42}
	for !out.DataStateAt.After(t.NotBefore) {
		time.Sleep(50 * time.Millisecond)
		out.DataStateAt = time.Now().UTC().Truncate(time.Second)
	}
	if err := os.WriteFile(filepath.Join(t.Pool.MainDir(), "marker"), []byte(out.DataStateAt.String()), 0o644); err != nil {
		return out, err
	}
	t.Progress.Phase("copy", job.UnitBytes, 100)
	t.Progress.Add(40)
	close(f.running)
	select {
	case <-f.release:
	case <-ctx.Done():
		return out, ctx.Err()
	}
	return out, f.err
}

func newFake() *fakeJob {
	return &fakeJob{release: make(chan struct{}), running: make(chan struct{})}
}

// recorder collects the kinds of events emitted on a bus.
type recorder struct {
	mu     sync.Mutex
	events []events.Event
}

func (r *recorder) kinds() []events.Kind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []events.Kind
	for _, e := range r.events {
		out = append(out, e.Kind)
	}
	return out
}

func fakeRetriever(t *testing.T, p storage.Pool, j job.Job, bus *events.Bus) *Retriever {
	t.Helper()
	cfg := config.Default()
	cfg.Pools = []config.Pool{{Name: p.Name(), Mode: p.Mode(), Path: p.MainDir()}}
	cfg.Retrieval = config.Retrieval{Mode: "logical", Source: config.Source{Host: "127.0.0.1", Username: "x"}, Jobs: 1, Pool: p.Name(), RefreshSchedule: "0 3 * * *"}
	cfg.StateDir = t.TempDir()
	r, err := New(Options{Config: cfg, Pool: p, Logger: (&logtest.Buffer{}).Logger(), Events: bus, Job: j})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close the retriever: %v", err)
		}
	})
	return r
}

// TestEventsStatusAndProgress: a refresh emits refresh.started,
// retrieval.started, retrieval.finished, snapshot.created and
// refresh.finished in that order; while it runs the status shows the job
// with its progress; a scheduled refresh that finds one running is
// skipped with an alert and a refresh.skipped event; a failing job emits
// retrieval.failed and counts the alert.
func TestEventsStatusAndProgress(t *testing.T) {
	p := clonetest.NewPool(t)
	bus := events.NewBus()
	rec := &recorder{}
	bus.Subscribe(func(e events.Event) {
		rec.mu.Lock()
		rec.events = append(rec.events, e)
		rec.mu.Unlock()
	})
	fj := newFake()
	r := fakeRetriever(t, p, fj, bus)
	if err := r.FullRefresh(); err != nil {
		t.Fatal(err)
	}
	<-fj.running
	st := r.Status()
	if st.Status != StatusRefreshing || st.Job == nil || st.Job.Mode != "fake" || st.Job.Pool != p.Name() ||
		st.Job.Progress.Unit != job.UnitBytes || st.Job.Progress.Done != 40 || st.Job.Progress.Total != 100 || st.Job.Progress.Phase != "copy" {
		t.Fatalf("status while running %+v (job %+v)", st, st.Job)
	}
	r.scheduledRefresh()
	if a := r.Status().Alerts[AlertRefreshSkipped]; a.Count != 1 || a.Level != "warning" || a.LastSeen.IsZero() {
		t.Fatalf("skipped alert %+v", a)
	}
	close(fj.release)
	r.wg.Wait()
	st = r.Status()
	if st.Status != StatusFinished || st.Job != nil || st.SnapshotID == "" {
		t.Fatalf("status after the refresh %+v", st)
	}
	want := []events.Kind{events.RefreshStarted, events.RetrievalStarted, events.RefreshSkipped, events.RetrievalFinished, events.SnapshotCreated, events.RefreshFinished}
	if got := rec.kinds(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	rec.mu.Lock()
	last := rec.events[len(rec.events)-1]
	rec.mu.Unlock()
	if last.Snapshot != st.SnapshotID || last.Pool != p.Name() || len(last.Data) == 0 {
		t.Fatalf("refresh.finished event %+v", last)
	}

	failing := newFake()
	failing.err = errors.New("source went away")
	close(failing.release)
	r2 := fakeRetriever(t, p, failing, bus)
	if _, err := r2.Refresh(t.Context()); err == nil {
		t.Fatal("a failing job's refresh succeeded")
	}
	got := rec.kinds()
	if tail := got[len(want):]; !slices.Equal(tail, []events.Kind{events.RefreshStarted, events.RetrievalStarted, events.RetrievalFailed}) {
		t.Fatalf("events of the failed refresh %v", tail)
	}
	if a := r2.Status().Alerts[AlertRefreshFailed]; a.Count != 1 || a.Message != "source went away" {
		t.Fatalf("failed alert %+v", a)
	}
	if snaps, _ := p.Snapshots(t.Context()); len(snaps) != 1 {
		t.Fatalf("snapshots after a failed refresh %v, want the first one only", snaps)
	}
}

// TestNilBusIsFine: without a bus nothing is emitted and nothing breaks.
func TestNilBusIsFine(t *testing.T) {
	p := clonetest.NewPool(t)
	fj := newFake()
	close(fj.release)
	r := fakeRetriever(t, p, fj, nil)
	if _, err := r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// reportingJob is a continuously updated mode with nothing new to
// snapshot: its lag and alerts are the status's.
type reportingJob struct{}

func (reportingJob) Mode() string { return "fake" }
func (reportingJob) Run(context.Context, job.Target) (job.Outcome, error) {
	return job.Outcome{}, fmt.Errorf("the subscription applied nothing new: %w", job.ErrNoNewData)
}
func (reportingJob) Report(storage.Pool) (job.Report, bool) {
	return job.Report{Lag: &job.Lag{Kind: job.LagSubscription, Seconds: 3, Bytes: 10, SourceReachable: true},
		Alerts: map[string]job.Alert{"lag_high": {Level: "warning", Message: "behind", Count: 1}}}, true
}

// TestReporterAndNoNewData: a job.Reporter's lag and alerts join the
// status; a refresh with nothing new is a refresh.skipped, not a failure.
func TestReporterAndNoNewData(t *testing.T) {
	p := clonetest.NewPool(t)
	bus := events.NewBus()
	rec := &recorder{}
	bus.Subscribe(func(e events.Event) {
		rec.mu.Lock()
		rec.events = append(rec.events, e)
		rec.mu.Unlock()
	})
	r := fakeRetriever(t, p, reportingJob{}, bus)
	if _, err := r.Refresh(t.Context()); !errors.Is(err, job.ErrNoNewData) {
		t.Fatalf("refresh with nothing new: %v, want ErrNoNewData", err)
	}
	st := r.Status()
	if st.Status == StatusFailed || st.Alerts[AlertRefreshFailed].Count != 0 {
		t.Errorf("nothing new counted as a failure: %+v", st)
	}
	if st.Lag == nil || st.Lag.Kind != job.LagSubscription || st.Lag.Bytes != 10 {
		t.Errorf("lag %+v, want the job's", st.Lag)
	}
	if _, ok := st.Alerts["lag_high"]; !ok {
		t.Errorf("alerts %v, want the job's lag_high", st.Alerts)
	}
	if got := rec.kinds(); !slices.Contains(got, events.RefreshSkipped) || slices.Contains(got, events.RetrievalFailed) {
		t.Errorf("events %v, want refresh.skipped and no retrieval.failed", got)
	}
}
