package tunnel

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

// JournalDir is the directory in the state directory that holds the
// events not yet acknowledged by the platform.
const JournalDir = "platform-events"

// Journal limits by default: 16 segments of 1 MiB.
const (
	DefaultSegmentBytes = 1 << 20
	DefaultMaxSegments  = 16
)

const (
	segmentPrefix = "seg-"
	segmentSuffix = ".jsonl"
	ackedFile     = "acked"
)

// Journal is the bounded on-disk queue of events for the platform:
// append-only segment files of JSON lines, each event numbered by a
// sequence number that grows forever. The platform's acks move the acked
// mark; fully acked segments are deleted. When the segments exceed the
// bound, the oldest segment is dropped (its unacked events are lost and
// counted): a disconnected agent keeps working, with the newest events.
type Journal struct {
	dir          string
	segmentBytes int64
	maxSegments  int

	mu      sync.Mutex
	segs    []segment // oldest first
	cur     *os.File  // the last segment, open for appending
	nextSeq uint64
	acked   uint64
	dropped uint64
	changed chan struct{} // signalled (non-blocking) on append
}

type segment struct {
	path        string
	first, last uint64 // last < first: empty
	size        int64
}

type record struct {
	Seq   uint64       `json:"seq"`
	Event tunnel.Event `json:"event"`
}

// OpenJournal opens (or makes) the journal in dir. Zero limits take the
// defaults.
func OpenJournal(dir string, segmentBytes int64, maxSegments int) (*Journal, error) {
	if segmentBytes <= 0 {
		segmentBytes = DefaultSegmentBytes
	}
	if maxSegments <= 0 {
		maxSegments = DefaultMaxSegments
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("event journal: %w", err)
	}
	j := &Journal{dir: dir, segmentBytes: segmentBytes, maxSegments: maxSegments, changed: make(chan struct{}, 1)}
	if raw, err := os.ReadFile(filepath.Join(dir, ackedFile)); err == nil { //nolint:gosec // G304: a fixed name in the agent's root-owned state directory
		if j.acked, err = strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64); err != nil {
			return nil, fmt.Errorf("event journal: %s is damaged: %w", filepath.Join(dir, ackedFile), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("event journal: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("event journal: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(name, segmentPrefix) || !strings.HasSuffix(name, segmentSuffix) {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, segmentPrefix), segmentSuffix), 10, 64)
		if err != nil {
			continue
		}
		j.segs = append(j.segs, segment{path: filepath.Join(dir, name), first: first, last: first - 1})
	}
	slices.SortFunc(j.segs, func(a, b segment) int { return cmpUint(a.first, b.first) })
	j.nextSeq = j.acked + 1
	for i := range j.segs {
		if err := j.scan(&j.segs[i], i == len(j.segs)-1); err != nil {
			return nil, err
		}
		j.nextSeq = max(j.nextSeq, j.segs[i].last+1, j.segs[i].first)
	}
	j.removeAcked()
	return j, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// scan finds a segment's last sequence number and size. A torn last line
// (a crash while appending) is cut off the newest segment.
func (j *Journal) scan(s *segment, newest bool) error {
	raw, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("event journal: %w", err)
	}
	if cut := bytes.LastIndexByte(raw, '\n') + 1; cut < len(raw) && newest {
		if err := os.Truncate(s.path, int64(cut)); err != nil {
			return fmt.Errorf("event journal: cutting a torn record: %w", err)
		}
		raw = raw[:cut]
	}
	s.size = int64(len(raw))
	for line := range bytes.SplitSeq(raw, []byte{'\n'}) {
		var r record
		if len(line) == 0 || json.Unmarshal(line, &r) != nil {
			continue
		}
		s.last = max(s.last, r.Seq)
	}
	return nil
}

// Append writes events to the journal and syncs it. It returns how many
// unacked events were dropped to keep the journal bounded.
func (j *Journal) Append(evs []tunnel.Event) (dropped uint64, err error) {
	if len(evs) == 0 {
		return 0, nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, e := range evs {
		line, err := json.Marshal(record{Seq: j.nextSeq, Event: e})
		if err != nil {
			return dropped, err
		}
		line = append(line, '\n')
		if len(line) > tunnel.MaxLineBytes/2 {
			// One event must fit a batch line: a huge payload is a bug of
			// its producer; dropping it keeps the stream going.
			dropped++
			continue
		}
		if j.cur == nil || j.segs[len(j.segs)-1].size+int64(len(line)) > j.segmentBytes {
			if err := j.rotate(); err != nil {
				return dropped, err
			}
		}
		s := &j.segs[len(j.segs)-1]
		if _, err := j.cur.Write(line); err != nil {
			return dropped, fmt.Errorf("event journal: %w", err)
		}
		s.size += int64(len(line))
		s.last = j.nextSeq
		j.nextSeq++
	}
	if err := j.cur.Sync(); err != nil {
		return dropped, fmt.Errorf("event journal: %w", err)
	}
	for len(j.segs) > j.maxSegments {
		old := j.segs[0]
		if old.last > j.acked {
			dropped += old.last - max(j.acked, old.first-1)
		}
		if err := os.Remove(old.path); err != nil {
			return dropped, fmt.Errorf("event journal: %w", err)
		}
		j.segs = j.segs[1:]
	}
	j.dropped += dropped
	select {
	case j.changed <- struct{}{}:
	default:
	}
	return dropped, nil
}

// rotate starts a new segment whose first record is nextSeq. Called with
// j.mu held.
func (j *Journal) rotate() error {
	if j.cur != nil {
		if err := j.cur.Close(); err != nil {
			return fmt.Errorf("event journal: %w", err)
		}
		j.cur = nil
	}
	// The newest segment may still have room (reopened after a restart).
	if n := len(j.segs); n > 0 && j.segs[n-1].size == 0 {
		_ = os.Remove(j.segs[n-1].path)
		j.segs = j.segs[:n-1]
	}
	path := filepath.Join(j.dir, fmt.Sprintf("%s%020d%s", segmentPrefix, j.nextSeq, segmentSuffix))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_EXCL, 0o600) //nolint:gosec // G304: a segment name of our own in the journal directory; O_EXCL never follows a planted link
	if err != nil {
		return fmt.Errorf("event journal: %w", err)
	}
	j.cur = f
	j.segs = append(j.segs, segment{path: path, first: j.nextSeq, last: j.nextSeq - 1})
	return syncDir(j.dir)
}

// Pending returns up to limit unacked events, oldest first, and the
// sequence number of the last one.
func (j *Journal) Pending(limit int) ([]tunnel.Event, uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []tunnel.Event
	var last uint64
	for _, s := range j.segs {
		if s.last <= j.acked || len(out) >= limit {
			continue
		}
		f, err := os.Open(s.path)
		if err != nil {
			return nil, 0, fmt.Errorf("event journal: %w", err)
		}
		br := bufio.NewReader(io.LimitReader(f, s.size))
		for len(out) < limit {
			line, err := br.ReadBytes('\n')
			if len(line) > 0 {
				var r record
				if json.Unmarshal(line, &r) == nil && r.Seq > j.acked {
					out = append(out, r.Event)
					last = r.Seq
				}
			}
			if err != nil {
				break
			}
		}
		_ = f.Close() // read only
	}
	return out, last, nil
}

// Ack marks every event up to seq as stored by the platform and deletes
// fully acked segments.
func (j *Journal) Ack(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if seq <= j.acked {
		return nil
	}
	j.acked = seq
	if err := writeFileAtomic(filepath.Join(j.dir, ackedFile), []byte(strconv.FormatUint(seq, 10)+"\n")); err != nil {
		return fmt.Errorf("event journal: %w", err)
	}
	j.removeAcked()
	return nil
}

// removeAcked deletes fully acked segments (not the open one). Called with
// j.mu held or before the journal is shared.
func (j *Journal) removeAcked() {
	for len(j.segs) > 0 && j.segs[0].last <= j.acked {
		if j.cur != nil && len(j.segs) == 1 {
			return
		}
		_ = os.Remove(j.segs[0].path) // a leftover is removed again next time
		j.segs = j.segs[1:]
	}
}

// Dropped is how many events the journal dropped since it was opened.
func (j *Journal) Dropped() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.dropped
}

// Changed is signalled after an append.
func (j *Journal) Changed() <-chan struct{} { return j.changed }

// Close closes the open segment.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cur == nil {
		return nil
	}
	err := j.cur.Close()
	j.cur = nil
	return err
}

// writeFileAtomic writes data to path through a synced temporary file and
// a rename, so that a crash leaves the old or the new content, mode 0600.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // gone after a successful rename
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir) //nolint:gosec // G304: the directory the agent just wrote into
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }() // read-only handle
	return d.Sync()
}
