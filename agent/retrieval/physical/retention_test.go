package physical

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/storage"
)

// TestRetentionAndPreSnapshot: retention after each cycle keeps the
// newest N snapshots and never one a clone uses; a "pre" snapshot holds
// the unpromoted standby state, whose clones run as read-only hot
// standbys.
func TestRetentionAndPreSnapshot(t *testing.T) {
	h := newHarness(t, config.ToolBasebackup, func(h *harness) { h.keep = 2 })
	if err := h.r.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 1; i <= 3; i++ {
		note := fmt.Sprintf("r%d", i)
		h.insert(note)
		h.waitReplayed(note)
		ids = append(ids, h.cycle().ID)
		if i == 1 {
			// A clone keeps the first snapshot whatever retention says.
			if _, err := h.pool.Clone(t.Context(), ids[0], "keeper"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = h.pool.DestroyClone(context.Background(), "keeper") })
		}
	}
	snaps, err := h.pool.Snapshots(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var have []string
	for _, s := range snaps {
		have = append(have, s.ID)
	}
	want := []string{ids[2], ids[0]}
	if !slices.Equal(have, want) {
		t.Errorf("snapshots after 3 cycles with keep 2 and a clone on the first: %v, want %v (the newest, and the one with a clone)", have, want)
	}

	// A cycle's temporary snapshot is neither counted nor deleted by
	// retention (the agent's sweep runs every minute, also mid-cycle).
	tmp, err := h.pool.Snapshot(t.Context(), storage.SnapshotOptions{DataStateAt: tempStateAt, Message: messageTemp, Labels: map[string]string{LabelKind: kindTemp, storage.LabelTransient: "true"}})
	if err != nil {
		t.Fatal(err)
	}
	if deleted, err := keepN(2).Retain(t.Context(), h.pool); err != nil || len(deleted) != 0 {
		t.Errorf("retention with a temporary snapshot deleted %v (%v), want nothing", deleted, err)
	}
	if err := h.pool.DestroySnapshot(t.Context(), tmp.ID, false); err != nil {
		t.Fatal(err)
	}

	h.insert("pre")
	h.waitReplayed("pre")
	pre, err := h.r.PreSnapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if pre.Labels[LabelKind] != kindPre || pre.Message != MessagePre {
		t.Errorf("pre snapshot %+v: want labelled pre", pre)
	}
	notes, inRecovery := h.cloneNotes(pre.ID)
	if !slices.Contains(notes, "pre") {
		t.Errorf("a clone of the pre snapshot has %v, want %q", notes, "pre")
	}
	if !inRecovery {
		t.Error("a clone of the pre snapshot is not in recovery: want a read-only hot standby")
	}
	h.checkNoLeftovers()
}
