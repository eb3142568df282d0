package retrieval

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"time"
)

// runningFile, in stateDir, marks a refresh in progress: written when one
// starts, removed when it ends either way. Found at start-up, it means the
// agent stopped mid-refresh.
const runningFile = "retrieval-running.json"

type runningMarker struct {
	Pool      string    `json:"pool"`
	Mode      string    `json:"mode"`
	StartedAt time.Time `json:"startedAt"`
}

// writeMarker records the refresh in progress; a failure only costs the
// report after a crash, so it is logged.
func (r *Retriever) writeMarker(m runningMarker) {
	if r.stateDir == "" {
		return
	}
	b, err := json.Marshal(m)
	if err == nil {
		var root *os.Root
		if root, err = os.OpenRoot(r.stateDir); err == nil {
			err = root.WriteFile(runningFile, b, 0o600)
			_ = root.Close() // nothing to flush on a directory handle
		}
	}
	if err != nil {
		r.log.Warn("recording the running refresh failed: a crash during it will not show in the status", "stateDir", r.stateDir, "err", err)
	}
}

func (r *Retriever) removeMarker() {
	if r.stateDir == "" {
		return
	}
	root, err := os.OpenRoot(r.stateDir)
	if err == nil {
		err = root.Remove(runningFile)
		_ = root.Close() // nothing to flush on a directory handle
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.log.Warn("removing the running-refresh marker failed: the next start reports an interrupted refresh", "stateDir", r.stateDir, "err", err)
	}
}

func (r *Retriever) readMarker() (runningMarker, bool) {
	var m runningMarker
	if r.stateDir == "" {
		return m, false
	}
	root, err := os.OpenRoot(r.stateDir)
	if err != nil {
		return m, false
	}
	defer func() { _ = root.Close() }() // read only
	b, err := root.ReadFile(runningFile)
	if err != nil || json.Unmarshal(b, &m) != nil {
		return m, false
	}
	return m, true
}
