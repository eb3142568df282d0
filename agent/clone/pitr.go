package clone

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/thinlab/thinlab/agent/runtime"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/pgcluster"
)

var lsnRE = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

// validatePointInTime checks a target's shape; field is the API's
// field prefix ("snapshot" or "" for reset).
func validatePointInTime(p *PointInTime, prefix string) error {
	if p == nil {
		return nil
	}
	switch {
	case p.Time.IsZero() && p.LSN == "":
		return &ValidationError{Field: prefix + "pointInTime", Message: "is empty: give pointInTime (RFC 3339) or lsn (X/Y)"}
	case !p.Time.IsZero() && p.LSN != "":
		return &ValidationError{Field: prefix + "lsn", Message: "and pointInTime are both set: give one target"}
	case p.LSN != "" && !lsnRE.MatchString(p.LSN):
		return &ValidationError{Field: prefix + "lsn", Message: fmt.Sprintf("%q is not an LSN: use PostgreSQL's form X/Y in hexadecimal, e.g. 0/3000060", p.LSN)}
	}
	return nil
}

func pitField(p PointInTime, prefix string) string {
	if p.LSN != "" {
		return prefix + "lsn"
	}
	return prefix + "pointInTime"
}

// resolvePointInTime finds the pool with a WAL archive and the snapshot a
// recovery to p starts from.
func (m *Manager) resolvePointInTime(ctx context.Context, p PointInTime, prefix string) (storage.Snapshot, error) {
	field := pitField(p, prefix)
	if m.archive != nil {
		for _, pool := range m.pools {
			a := m.archive(pool.Name())
			if a == nil {
				continue
			}
			id, err := a.Base(ctx, p)
			if err != nil {
				return storage.Snapshot{}, &ValidationError{Field: field, Message: err.Error()}
			}
			return m.resolveSnapshot(ctx, id)
		}
	}
	return storage.Snapshot{}, &ValidationError{Field: field, Message: "no pool has a WAL archive for point-in-time clones: use physical retrieval with retrieval.physical.archiveDir or a backup tool (pgbackrest, barman, walg)"}
}

// recoverToTarget replays the pool's archive in the clone's fresh data
// directory up to its target (before the clone's postgres first starts).
func (m *Manager) recoverToTarget(ctx context.Context, spec record, dataDir string) error {
	var a Archive
	if m.archive != nil {
		a = m.archive(spec.Pool)
	}
	if a == nil {
		return fmt.Errorf("pool %s has no WAL archive for a point-in-time clone", spec.Pool)
	}
	return a.Recover(ctx, dataDir, *spec.PointInTime)
}

// inRecovery asks the clone's postgres whether it is in recovery.
func (m *Manager) inRecovery(ctx context.Context, dataDir string, port int) (bool, error) {
	conn, err := m.socketConnect(dataDir, port)(ctx, "postgres")
	if err != nil {
		if conn, err = m.socketConnect(dataDir, port)(ctx, "template1"); err != nil {
			return false, err
		}
	}
	defer func() { _ = conn.Close(context.Background()) }() // a read-only probe
	var in bool
	err = conn.QueryRow(ctx, "SELECT pg_catalog.pg_is_in_recovery()").Scan(&in)
	return in, err
}

// leaveRecovery promotes a clone of an unpromoted ("pre") snapshot: it
// started as a standby of nothing (no primary_conninfo, no
// restore_command), replayed what the snapshot's pg_wal holds and becomes
// a primary of its own timeline, so that its user can be made.
func (m *Manager) leaveRecovery(ctx context.Context, spec record, dataDir string) error {
	in, err := m.inRecovery(ctx, dataDir, spec.Port)
	if err != nil {
		return fmt.Errorf("ask the clone whether it is in recovery: %w", err)
	}
	if !in {
		return nil
	}
	conn, err := m.socketConnect(dataDir, spec.Port)(ctx, "postgres")
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.Background()) }() // a failed goodbye loses nothing
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_catalog.pg_promote(true, 300)").Scan(&ok); err != nil || !ok {
		return fmt.Errorf("promote the clone of an unpromoted snapshot (ok=%v): %v", ok, err)
	}
	return nil
}

// demote turns the clone into a hot standby of nothing: a clean stop, a
// standby.signal written as the clone's own user (root writes nothing into
// a data directory), and a start in recovery. It replays nothing (no
// primary_conninfo, no restore_command) and refuses every write;
// standby.signal stays, so every later start (agent restart) is a standby
// again.
func (m *Manager) demote(ctx context.Context, spec record, dataDir string) error {
	conn, err := m.socketConnect(dataDir, spec.Port)(ctx, "postgres")
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "CHECKPOINT")
	_ = conn.Close(context.Background()) // stopped next
	if err != nil {
		return fmt.Errorf("checkpoint before the read-only start: %w", err)
	}
	inst := m.instance(spec, dataDir)
	if err := m.rt.Stop(ctx, inst, "fast"); err != nil {
		return fmt.Errorf("stop the clone before the read-only start: %w", err)
	}
	if err := writeStandbySignal(spec.UID, dataDir); err != nil {
		return err
	}
	if err := m.rt.Start(ctx, inst); err != nil {
		return fmt.Errorf("start the clone as a hot standby: %w", err)
	}
	return nil
}

// writeStandbySignal creates standby.signal in dataDir as the clone's
// own user, resolved beneath dataDir (a symlink planted there cannot
// redirect it).
func writeStandbySignal(uid uint32, dataDir string) error {
	err := pgcluster.AsUser(uid, uid, func() error {
		d, err := os.OpenRoot(dataDir)
		if err != nil {
			return err
		}
		defer func() { _ = d.Close() }() // a directory handle
		f, err := d.OpenFile("standby.signal", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		return f.Close()
	})
	if err != nil {
		return fmt.Errorf("write standby.signal as the clone's user: %w", err)
	}
	return nil
}

// standbySettings are forced on every clone: a clone never follows the
// source, never fetches WAL from its archive; a replica follows its
// parent clone only, with its password in a passfile outside the data
// directory.
func (m *Manager) standbySettings(spec record) map[string]string {
	s := map[string]string{
		"primary_conninfo":  "",
		"primary_slot_name": "",
		"restore_command":   "",
	}
	if spec.ReadOnly || spec.ReplicaOf != "" {
		s["hot_standby"] = "on"
	}
	maps.Copy(s, spec.HotStandby)
	if spec.ReplicaOf != "" {
		s["primary_conninfo"] = fmt.Sprintf("host=%s port=%d user=%s passfile=%s application_name=%s sslmode=disable connect_timeout=5",
			m.connectHost, spec.ReplicaParentPort, replicationRole(spec.ID), m.replicaPassfile(spec.ID), spec.ID)
	}
	return s
}

// replicaPassfile is the replica's passfile in its root-owned runtime
// directory.
func (m *Manager) replicaPassfile(id string) string {
	return filepath.Join(runtime.RunDirFor(m.cfg.StateDir), filepath.Base(filepath.Clean("/"+id)), "replication.pgpass")
}

// controlSettings maps pg_controldata's lines to the settings a hot
// standby needs at least as high as its primary's.
var controlSettings = map[string]string{
	"max_connections setting":      "max_connections",
	"max_worker_processes setting": "max_worker_processes",
	"max_wal_senders setting":      "max_wal_senders",
	"max_prepared_xacts setting":   "max_prepared_transactions",
	"max_locks_per_xact setting":   "max_locks_per_transaction",
}

// hotStandbyMinimums reads, for data that will start in recovery
// (standby.signal present), the primary's values of the settings a hot
// standby may not undercut, and returns those above the clone's own. It
// runs pg_controldata as provision.osUser, before the clone's first start.
func (m *Manager) hotStandbyMinimums(ctx context.Context, spec record, dataDir string) (map[string]string, error) {
	if _, err := pgcluster.ReadDataFile(dataDir, "standby.signal", 1); err != nil {
		return map[string]string{}, nil //nolint:nilerr // no standby.signal: the clone starts as a primary
	}
	bin, err := m.rt.BinDir(dataDir)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_controldata"), dataDir) //nolint:gosec // G204: the server's own pg_controldata on the clone's fresh data, as the unprivileged pool owner
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: m.osUser.Credential()}
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("pg_controldata of the clone's data: %w", err)
	}
	own := m.instance(spec, dataDir).Settings
	res := map[string]string{}
	for line := range strings.SplitSeq(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		name, ok := controlSettings[strings.TrimSpace(k)]
		if !ok {
			continue
		}
		want, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			continue
		}
		have, err := strconv.Atoi(own[name])
		if err != nil || have < want {
			res[name] = strconv.Itoa(want)
		}
	}
	return res, nil
}
