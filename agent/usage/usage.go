// Package usage samples what an agent's clones and pools use, for the
// platform's usage reports and billing: clone-seconds and bytes per clone
// and per pool, over consecutive periods that leave no gap and never
// overlap, across agent restarts. Each sample is an events.Usage event
// whose ID is fixed by its period, so a sample sent twice (a crash between
// sending and recording the period's end) is stored once by the platform.
package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/thinlab/thinlab/agent/events"
)

// CursorFile (in the state directory) holds the end of the last sample.
const CursorFile = "usage-cursor.json"

// DefaultInterval is the sampling period.
const DefaultInterval = time.Minute

// Clone is what the sampler needs to know of a clone.
type Clone struct {
	ID        string
	Pool      string
	Running   bool // its postgres serves (status OK or being reset)
	CreatedAt time.Time
	DiffBytes uint64 // space the clone has written
	// LogicalBytes is the size of the clone's data as a full copy, and
	// CloningTime how long the clone took to be made: the platform's
	// savings estimate compares them with full copies.
	LogicalBytes uint64
	CloningTime  time.Duration
}

// Pool is what the sampler needs to know of a pool.
type Pool struct {
	Name      string
	SizeBytes uint64
	UsedBytes uint64
	FreeBytes uint64
	Snapshots int
	Clones    int
}

// Sample is the payload of an events.Usage event: the period [From, To).
type Sample struct {
	From   time.Time     `json:"from"`
	To     time.Time     `json:"to"`
	Clones []CloneSample `json:"clones"`
	Pools  []Pool        `json:"pools"`
}

// CloneSample is one clone's use in a period.
type CloneSample struct {
	ID   string `json:"id"`
	Pool string `json:"pool"`
	// Seconds the clone existed (running or being reset) in the period.
	Seconds   float64 `json:"seconds"`
	DiffBytes uint64  `json:"diffBytes"`
	// LogicalBytes and CloningSeconds: see Clone.
	LogicalBytes   uint64  `json:"logicalBytes,omitempty"`
	CloningSeconds float64 `json:"cloningSeconds,omitempty"`
	// Destroyed is set when the clone was destroyed in the period.
	Destroyed bool `json:"destroyed,omitempty"`
}

// Options configure a Sampler. Clones, Pools, Events and StateDir are
// required.
type Options struct {
	StateDir string
	// InstanceID makes sample IDs unique per agent instance.
	InstanceID string
	Interval   time.Duration
	Clones     func() []Clone
	Pools      func(ctx context.Context) []Pool
	Events     *events.Bus
	Logger     *slog.Logger
	Now        func() time.Time
}

// Sampler emits a usage sample every interval.
type Sampler struct {
	opt Options

	mu        sync.Mutex
	destroyed map[string]time.Time // clones destroyed since the last sample, and when
	known     map[string]Clone     // clones seen (looks and creating events)
	cancelSub func()
}

// New returns a sampler; Run starts it.
func New(opt Options) (*Sampler, error) {
	if opt.StateDir == "" || opt.Clones == nil || opt.Pools == nil || opt.Events == nil {
		return nil, errors.New("usage: StateDir, Clones, Pools and Events are required")
	}
	if opt.Interval <= 0 {
		opt.Interval = DefaultInterval
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	s := &Sampler{opt: opt, destroyed: map[string]time.Time{}, known: map[string]Clone{}}
	// A clone made and destroyed between two looks, and a destroyed
	// clone's last partial period, count too: follow the clone events.
	s.cancelSub = opt.Events.Subscribe(func(e events.Event) {
		if e.Clone == "" {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		switch e.Kind {
		case events.CloneCreating:
			if _, ok := s.known[e.Clone]; !ok {
				s.known[e.Clone] = Clone{ID: e.Clone, Pool: e.Pool, Running: true, CreatedAt: e.Time}
			}
		case events.CloneDestroyed:
			if _, ok := s.known[e.Clone]; ok {
				s.destroyed[e.Clone] = e.Time
			}
		}
	})
	return s, nil
}

// Run samples every interval until ctx ends.
func (s *Sampler) Run(ctx context.Context) error {
	defer s.cancelSub()
	cursor, err := s.loadCursor()
	if err != nil {
		return err
	}
	if cursor.IsZero() {
		// The first start: nothing to account for before now.
		cursor = s.opt.Now().UTC()
		if err := s.saveCursor(cursorFile{To: cursor}); err != nil {
			return err
		}
	}
	s.look()
	t := time.NewTicker(s.opt.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			next, err := s.Take(ctx, cursor)
			if err != nil {
				s.opt.Logger.Error("usage sample failed; the next one covers this period too", "err", err)
				continue
			}
			cursor = next
		}
	}
}

// look remembers the clones, so that a destroyed one can be accounted.
func (s *Sampler) look() []Clone {
	clones := s.opt.Clones()
	s.mu.Lock()
	defer s.mu.Unlock()
	known := make(map[string]Clone, len(clones))
	for _, c := range clones {
		known[c.ID] = c
	}
	for id := range s.destroyed {
		if c, ok := s.known[id]; ok {
			known[id] = c
		}
	}
	s.known = known
	return clones
}

// Take emits the sample of [from, now) and records now as the cursor; it
// returns now. Clones outlive the agent process, so after a restart the
// first sample spans the time the agent was down, for the clones that
// are still there.
func (s *Sampler) Take(ctx context.Context, from time.Time) (time.Time, error) {
	to := s.opt.Now().UTC()
	if !to.After(from) {
		return from, nil
	}
	clones := s.look()
	smp := Sample{From: from, To: to, Pools: s.opt.Pools(ctx)}
	overlap := func(start, end time.Time) float64 {
		if start.Before(from) {
			start = from
		}
		if end.After(to) {
			end = to
		}
		if !end.After(start) {
			return 0
		}
		return end.Sub(start).Seconds()
	}
	s.mu.Lock()
	for _, c := range clones {
		if _, gone := s.destroyed[c.ID]; gone || !c.Running {
			continue
		}
		smp.Clones = append(smp.Clones, CloneSample{ID: c.ID, Pool: c.Pool, DiffBytes: c.DiffBytes, Seconds: overlap(c.CreatedAt, to),
			LogicalBytes: c.LogicalBytes, CloningSeconds: c.CloningTime.Seconds()})
	}
	for id, at := range s.destroyed {
		c := s.known[id]
		smp.Clones = append(smp.Clones, CloneSample{ID: id, Pool: c.Pool, DiffBytes: c.DiffBytes, Seconds: overlap(c.CreatedAt, at), Destroyed: true,
			LogicalBytes: c.LogicalBytes, CloningSeconds: c.CloningTime.Seconds()})
		delete(s.known, id)
	}
	clear(s.destroyed)
	s.mu.Unlock()
	slices.SortFunc(smp.Clones, func(a, b CloneSample) int { return strings.Compare(a.ID, b.ID) })

	ev := events.Event{
		ID:   SampleID(s.opt.InstanceID, from),
		Time: to,
		Kind: events.Usage,
	}.WithData(smp)
	// The sample is written down before it is sent, and sent again after
	// a crash (the same ID: the platform keeps it once), so that no
	// period is lost and none is counted twice.
	if err := s.saveCursor(cursorFile{To: to, Pending: &ev}); err != nil {
		return from, err
	}
	s.opt.Events.Emit(ev)
	if err := s.saveCursor(cursorFile{To: to}); err != nil {
		s.opt.Logger.Warn("usage cursor not updated; the sample is sent again at the next start", "err", err)
	}
	return to, nil
}

// SampleID is the stable ID of the sample that starts at from.
func SampleID(instanceID string, from time.Time) string {
	return fmt.Sprintf("usage-%s-%d", instanceID, from.UnixNano())
}

// cursorFile is the end of the last sample, and that sample while it may
// not have been sent yet.
type cursorFile struct {
	To      time.Time     `json:"to"`
	Pending *events.Event `json:"pending,omitempty"`
}

// loadCursor returns the end of the last sample; a sample left pending by
// a crash is sent (again) first.
func (s *Sampler) loadCursor() (time.Time, error) {
	raw, err := os.ReadFile(filepath.Join(s.opt.StateDir, CursorFile))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("usage cursor: %w", err)
	}
	var c cursorFile
	if err := json.Unmarshal(raw, &c); err != nil {
		return time.Time{}, fmt.Errorf("usage cursor %s: %w (remove the file to start counting from now)", CursorFile, err)
	}
	if c.Pending != nil {
		s.opt.Events.Emit(*c.Pending)
		if err := s.saveCursor(cursorFile{To: c.To}); err != nil {
			return time.Time{}, err
		}
	}
	return c.To, nil
}

// saveCursor writes the cursor atomically (temp file, fsync, rename).
func (s *Sampler) saveCursor(c cursorFile) error {
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.opt.StateDir, CursorFile+".*")
	if err != nil {
		return fmt.Errorf("usage cursor: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.opt.StateDir, CursorFile))
	}
	if err != nil {
		_ = os.Remove(tmp) // the old cursor stays valid
		return fmt.Errorf("usage cursor: %w", err)
	}
	return nil
}
