package physical

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

// Labels of "pre" snapshots that point-in-time recovery starts from.
const (
	// LabelLSN is the standby's replay position when the snapshot was
	// taken (replay paused): the earliest LSN a recovery from it reaches.
	LabelLSN = "thinlab.lsn"
	// LabelReplayedAt is the exact commit time of the last transaction
	// the snapshot holds (dataStateAt has second precision).
	LabelReplayedAt = "thinlab.replayedAt"
)

// recoverPort names the Unix socket of a point-in-time recovery's
// postgres (in the clone's data directory; no TCP).
const recoverPort = 5434

// ErrNoArchive means the pool has no WAL archive to recover from.
var ErrNoArchive = errors.New("no WAL archive")

// Base is a snapshot a point-in-time recovery can start from: an
// unpromoted ("pre") standby state, whose timeline continues in the
// archive. A promoted snapshot cannot: its promotion began a timeline the
// archive does not hold.
type Base struct {
	SnapshotID string
	// At is the commit time of the last transaction the snapshot holds;
	// LSN the replay position (empty for snapshots made before it was
	// recorded).
	At  time.Time
	LSN string
}

// ArchiveWindow is the span point-in-time clones can reach:
//
//	From: the last commit time held by the oldest "pre" snapshot (a
//	recovery only moves forward from a snapshot, and it must pass the
//	snapshot's own state before it may stop);
//	To: the commit time of the newest transaction in the archive,
//	excluded: replay stops at the first commit after the target, so that
//	commit must be in the archive (otherwise recovery ends before the
//	target is reached, which PostgreSQL refuses). With archiveDir it is read from the
//	newest archived segments; for a backup tool's archive it is the last
//	transaction the standby replayed from that archive (the standby reads
//	only what the archive served, so the archive holds at least that).
//
// FromLSN/ToLSN are the same bounds as WAL positions.
type ArchiveWindow struct {
	Available bool
	// Reason says why the window is not available.
	Reason         string
	From, To       time.Time
	FromLSN, ToLSN string
	// Source is "archiveDir" or "standby": where To comes from.
	Source string
	Bases  []Base
}

// Target is a point-in-time recovery target: a time or an LSN.
type Target struct {
	Time time.Time
	LSN  string
}

func (t Target) String() string {
	if t.LSN != "" {
		return "LSN " + t.LSN
	}
	return t.Time.UTC().Format(time.RFC3339Nano)
}

// Bases lists the pool's "pre" snapshots, oldest first.
func (r *Retriever) Bases(ctx context.Context) ([]Base, error) {
	snaps, err := r.pool.Snapshots(ctx)
	if err != nil {
		return nil, err
	}
	var out []Base
	for _, s := range snaps {
		if s.Labels[LabelKind] != kindPre {
			continue
		}
		b := Base{SnapshotID: s.ID, LSN: s.Labels[LabelLSN], At: s.DataStateAt.Add(time.Second - time.Nanosecond)}
		if at, err := time.Parse(time.RFC3339Nano, s.Labels[LabelReplayedAt]); err == nil {
			b.At = at
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b Base) int { return a.At.Compare(b.At) })
	return out, nil
}

// restoreCommand is the restore_command a point-in-time recovery in
// dataDir uses: the standby's (archiveDir, restoreCommand or the backup
// tool's), aimed at dataDir.
func (r *Retriever) restoreCommand(dataDir string) string {
	plan, err := r.tool()
	if err != nil || plan.restoreCommand == "" {
		return ""
	}
	return plan.restoreIn(dataDir)
}

// CachedArchiveWindow is ArchiveWindow at most maxAge old (the status
// page asks often; a clone's request always asks afresh).
func (r *Retriever) CachedArchiveWindow(ctx context.Context, maxAge time.Duration) ArchiveWindow {
	r.mu.Lock()
	w, at := r.window, r.windowAt
	r.mu.Unlock()
	if !at.IsZero() && time.Since(at) < maxAge {
		return w
	}
	w = r.ArchiveWindow(ctx)
	r.mu.Lock()
	r.window, r.windowAt = w, time.Now()
	r.mu.Unlock()
	return w
}

// ArchiveWindow reports what point-in-time clones can reach now.
func (r *Retriever) ArchiveWindow(ctx context.Context) ArchiveWindow {
	var w ArchiveWindow
	if r.restoreCommand(r.dataDir()) == "" {
		w.Reason = "the pool has no WAL archive: set retrieval.physical.archiveDir (or use pgbackrest, barman or walg)"
		return w
	}
	bases, err := r.Bases(ctx)
	if err != nil {
		w.Reason = "listing snapshots failed: " + err.Error()
		return w
	}
	w.Bases = bases
	if len(bases) == 0 {
		w.Reason = "no \"pre\" snapshot to start from yet: point-in-time clones start from unpromoted standby snapshots (retrieval.physical.preSnapshot: true)"
		return w
	}
	w.From, w.FromLSN = bases[0].At, bases[0].LSN
	if r.cfg.ArchiveDir != "" {
		w.Source = "archiveDir"
		w.To, w.ToLSN, err = r.newestArchived(ctx)
	} else {
		w.Source = "standby"
		if r.cfg.StandbyKind(r.src) != config.StandbyRestoreCommand {
			w.Reason = "the standby does not replay from the archive (retrieval.physical.standby is not restoreCommand), so the archive's end is unknown: set retrieval.physical.archiveDir"
			return w
		}
		w.To, w.ToLSN, err = r.standbyReplayPosition(ctx)
	}
	if err != nil {
		w.Reason = "reading the archive's end failed: " + err.Error()
		return w
	}
	if !w.To.After(w.From) {
		w.Reason = fmt.Sprintf("the archive holds no transaction after the oldest \"pre\" snapshot (%s) yet", w.From.UTC().Format(time.RFC3339Nano))
		return w
	}
	w.Available = true
	return w
}

func (r *Retriever) standbyReplayPosition(ctx context.Context) (time.Time, string, error) {
	conn, err := pgcluster.Connect(ctx, r.standby().SocketConnString(standbyPort, "postgres", "postgres"))
	if err != nil {
		return time.Time{}, "", fmt.Errorf("connect to the standby: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }() // read-only session
	at, err := replayTime(ctx, conn)
	if err != nil {
		return time.Time{}, "", err
	}
	var lsn string
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_last_wal_replay_lsn()::text").Scan(&lsn); err != nil {
		return time.Time{}, "", err
	}
	return at, lsn, nil
}

var (
	segmentRE = regexp.MustCompile(`^[0-9A-F]{24}$`)
	// pg_waldump's commit records: "... lsn: 0/0300A2B8, prev ..., desc: COMMIT 2026-12-03 16:50:00.123456 UTC".
	commitRE = regexp.MustCompile(`lsn: ([0-9A-F]+/[0-9A-F]+),.*desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC`)
	lsnRE    = regexp.MustCompile(`lsn: ([0-9A-F]+/[0-9A-F]+),`)
)

// newestArchived reads the archive directory's newest segments with
// pg_waldump (as provision.osUser) for the newest commit and the last
// record's position.
func (r *Retriever) newestArchived(ctx context.Context) (time.Time, string, error) {
	var segs []string
	err := pgcluster.AsUser(r.user.UID, r.user.GID, func() error {
		entries, err := os.ReadDir(r.cfg.ArchiveDir)
		for _, e := range entries {
			if segmentRE.MatchString(e.Name()) && e.Type().IsRegular() {
				segs = append(segs, e.Name())
			}
		}
		return err
	})
	if err != nil {
		return time.Time{}, "", fmt.Errorf("read retrieval.physical.archiveDir: %w", err)
	}
	if len(segs) == 0 {
		return time.Time{}, "", fmt.Errorf("retrieval.physical.archiveDir %s holds no WAL segment", r.cfg.ArchiveDir)
	}
	slices.Sort(segs)
	newest := r.readSegment(ctx, segs[len(segs)-1])
	// Segments without a commit (a switch right after one, archive_timeout
	// on an idle source) are passed over; older segments never change, so
	// what they hold is remembered.
	for i := len(segs) - 1; i >= 0 && i >= len(segs)-maxSegmentsBack; i-- {
		seg := newest
		if i < len(segs)-1 {
			r.mu.Lock()
			cached, ok := r.segments[segs[i]]
			r.mu.Unlock()
			if ok {
				seg = cached
			} else {
				seg = r.readSegment(ctx, segs[i])
				if ctx.Err() == nil {
					r.mu.Lock()
					if r.segments == nil || len(r.segments) > 4*maxSegmentsBack {
						r.segments = map[string]segmentInfo{}
					}
					r.segments[segs[i]] = seg
					r.mu.Unlock()
				}
			}
		}
		if !seg.commit.IsZero() {
			last := newest.lastLSN
			if last == "" {
				last = seg.commitLSN
			}
			return seg.commit, last, nil
		}
	}
	return time.Time{}, "", fmt.Errorf("no committed transaction in the newest %d archived segments", maxSegmentsBack)
}

// maxSegmentsBack bounds how far back (16 GiB of 16 MiB segments) the
// archive's newest commit is looked for.
const maxSegmentsBack = 1024

// segmentInfo is what one archived segment holds: its newest commit and
// the position of its last record.
type segmentInfo struct {
	commit    time.Time
	commitLSN string
	lastLSN   string
}

// readSegment runs pg_waldump on one archived segment as provision.osUser.
func (r *Retriever) readSegment(ctx context.Context, name string) segmentInfo {
	cmd := exec.CommandContext(ctx, r.pgBin(r.dataDir(), "pg_waldump"), filepath.Join(r.cfg.ArchiveDir, name)) //nolint:gosec // G204: the server's own pg_waldump on a configured directory, as the unprivileged OS user
	cmd.Env = []string{"TZ=UTC", "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.user.Credential()}
	out, _ := cmd.Output() // it ends with an error at the segment's end; what it printed counts
	var seg segmentInfo
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := lsnRE.FindStringSubmatch(line); m != nil {
			seg.lastLSN = m[1]
		}
		if m := commitRE.FindStringSubmatch(line); m != nil {
			if t, err := time.Parse("2006-01-02 15:04:05.999999999", m[2]); err == nil {
				seg.commit, seg.commitLSN = t.UTC(), m[1]
			}
		}
	}
	return seg
}

// CheckTarget refuses a target outside the window, naming the window, and
// returns the base to start from: the newest "pre" snapshot at or before
// the target.
func (w ArchiveWindow) CheckTarget(t Target) (Base, error) {
	if !w.Available {
		return Base{}, fmt.Errorf("%w: %s", ErrNoArchive, w.Reason)
	}
	if t.LSN != "" {
		want, err := ParseLSN(t.LSN)
		if err != nil {
			return Base{}, err
		}
		from, _ := ParseLSN(w.FromLSN)
		to, _ := ParseLSN(w.ToLSN)
		if w.FromLSN == "" || w.ToLSN == "" || want < from || want >= to {
			return Base{}, fmt.Errorf("LSN %s is outside the archive window %s .. %s (the end excluded: replay must find a record at or after the target)", t.LSN, w.FromLSN, w.ToLSN)
		}
		var base Base
		for _, b := range w.Bases {
			if l, err := ParseLSN(b.LSN); err == nil && l <= want {
				base = b
			}
		}
		if base.SnapshotID == "" {
			return Base{}, fmt.Errorf("LSN %s: no snapshot at or before it records its position", t.LSN)
		}
		return base, nil
	}
	if t.Time.Before(w.From) || !t.Time.Before(w.To) {
		return Base{}, fmt.Errorf("%s is outside the archive window %s .. %s (the end, the newest archived commit, excluded: replay stops at the first commit after the target, which must be in the archive)", t.Time.UTC().Format(time.RFC3339Nano), w.From.UTC().Format(time.RFC3339Nano), w.To.UTC().Format(time.RFC3339Nano))
	}
	var base Base
	for _, b := range w.Bases {
		if !b.At.After(t.Time) {
			base = b
		}
	}
	return base, nil
}

// ParseLSN reads "X/Y" (hexadecimal) as a WAL position.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("LSN %q: use PostgreSQL's form X/Y in hexadecimal, e.g. 0/3000060", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("LSN %q: use PostgreSQL's form X/Y in hexadecimal, e.g. 0/3000060", s)
	}
	return h<<32 | l, nil
}

// RecoverTo replays the archive in dataDir (a fresh clone of a base, not
// yet started by anyone) up to target, promotes and stops it cleanly. It
// runs as provision.osUser, like the standby, with the standby's
// restore_command and tools' environment as -c arguments and its log
// outside the data directory: nothing of the archive's access reaches the
// data, and the clone's own postgres (its own uid) later starts a plain
// primary without any restore_command.
func (r *Retriever) RecoverTo(ctx context.Context, dataDir string, target Target) error {
	restore := r.restoreCommand(dataDir)
	if restore == "" {
		return fmt.Errorf("%w for pool %s", ErrNoArchive, r.pool.Name())
	}
	if err := r.writePrivate(); err != nil {
		return err
	}
	// Archive recovery (recovery.signal), not standby mode: a target the
	// archive does not reach ends recovery with an error instead of
	// waiting for WAL forever.
	if err := pgcluster.AsUser(r.user.UID, r.user.GID, func() error {
		d, err := os.OpenRoot(dataDir)
		if err != nil {
			return err
		}
		defer func() { _ = d.Close() }() // a directory handle
		if err := d.Remove("standby.signal"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		f, err := d.OpenFile("recovery.signal", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		return f.Close()
	}); err != nil {
		return fmt.Errorf("prepare point-in-time recovery in %s: %w", dataDir, err)
	}
	sum := sha256.Sum256([]byte(dataDir))
	logPath := filepath.Join(r.priv, "pitr-"+hex.EncodeToString(sum[:6])+".log")
	bin, err := pgcluster.BinDirFor(r.binRoot, dataDir)
	if err != nil {
		return err
	}
	c := &pgcluster.Cluster{DataDir: dataDir, BinDir: bin, User: r.user, Logger: r.log, LogPath: logPath, DieWithParent: r.dieWithParent}
	defer func() { _ = os.Remove(logPath) }() // the error carries its tail
	settings := map[string]string{}
	maps.Copy(settings, r.cfg.Settings)
	maps.Copy(settings, map[string]string{
		"hot_standby":              "on",
		"archive_mode":             "off",
		"primary_conninfo":         "",
		"primary_slot_name":        "",
		"restore_command":          restore,
		"recovery_target_action":   "promote",
		"recovery_target_timeline": "latest",
	})
	// Only the target's own setting: PostgreSQL refuses two target
	// settings even when one of them is empty.
	delete(settings, "recovery_target_time")
	delete(settings, "recovery_target_lsn")
	if target.LSN != "" {
		settings["recovery_target_lsn"] = target.LSN
	} else {
		settings["recovery_target_time"] = target.Time.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
	}
	startCtx, cancel := context.WithTimeout(ctx, r.startTO)
	defer cancel()
	if err := c.Start(startCtx, recoverPort, "", settings); err != nil {
		return fmt.Errorf("point-in-time recovery to %s: %w", target, err)
	}
	done := false
	defer func() {
		if !done {
			c.Kill()
		}
	}()
	// Promotion at the target ends recovery; a failure ends the server.
	for {
		if !c.Running() {
			return fmt.Errorf("point-in-time recovery to %s failed: %s", target, fatalLines(pgcluster.TailFile(logPath, 40)))
		}
		conn, err := pgcluster.Connect(startCtx, c.SocketConnString(recoverPort, "postgres", "postgres"))
		if err == nil {
			var inRecovery bool
			err = conn.QueryRow(startCtx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&inRecovery)
			if err == nil && !inRecovery {
				_, err = conn.Exec(startCtx, "CHECKPOINT")
				_ = conn.Close(context.Background()) // stopped next
				if err != nil {
					return fmt.Errorf("checkpoint after point-in-time recovery: %w", err)
				}
				break
			}
			_ = conn.Close(context.Background()) // a read-only probe
		}
		select {
		case <-startCtx.Done():
			return fmt.Errorf("point-in-time recovery to %s did not finish within %s: %s", target, r.startTO, pgcluster.TailFile(logPath, 5))
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		return fmt.Errorf("stop postgres after point-in-time recovery: %w", err)
	}
	done = true
	return nil
}

// pauseReplay asks the standby to pause replay and waits (briefly) until
// it has: an idle standby stays "pause requested", which holds replay as
// well.
func pauseReplay(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.pg_wal_replay_pause()"); err != nil {
		return fmt.Errorf("pause the standby's replay: %w", err)
	}
	for range 50 {
		var state string
		if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_get_wal_replay_pause_state()").Scan(&state); err != nil {
			return fmt.Errorf("pause the standby's replay: %w", err)
		}
		if state == "paused" {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// fatalLines keeps a postgres log's FATAL lines (with their DETAIL), or
// its last lines when none.
func fatalLines(log string) string {
	var out []string
	keep := false
	for line := range strings.SplitSeq(log, "\n") {
		switch {
		case strings.Contains(line, "FATAL:"):
			keep = true
			out = append(out, line)
		case keep && (strings.Contains(line, "DETAIL:") || strings.Contains(line, "HINT:")):
			out = append(out, line)
		default:
			keep = false
		}
	}
	if len(out) == 0 {
		lines := strings.Split(log, "\n")
		return strings.Join(lines[max(0, len(lines)-5):], "\n")
	}
	return strings.Join(out, "\n")
}
