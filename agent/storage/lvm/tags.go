package lvm

import (
	"encoding/base32"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/thinlab/thinlab/agent/storage"
)

// LV tags carry all of Thinlab's metadata, so a fresh process rebuilds the
// pool from `lvs` alone. LVM limits tags to 1024 characters from
// [A-Za-z0-9_+.-] (plus a few more in newer versions), so values are JSON
// encoded in unpadded base32 and split into numbered chunks:
//
//	thinlab.pool.<BASE32(pool name)>   which Thinlab pool the LV belongs to
//	thinlab.kind.main|snap|clone       what the LV is
//	thinlab.meta.<NNN>.<BASE32 chunk>  JSON metadata (snapshotMeta, cloneMeta)
//
// A sidecar file inside each snapshot's filesystem was the alternative; it
// was rejected because reading it needs the snapshot activated and mounted,
// while tags come back with one `lvs` for the whole pool. The tag names are
// part of the on-disk format: renaming one loses existing pools' metadata.
const (
	tagPoolPrefix = "thinlab.pool."
	tagKindPrefix = "thinlab.kind."
	tagMetaPrefix = "thinlab.meta."

	kindMain  = "main"
	kindSnap  = "snap"
	kindClone = "clone"

	// metaChunk keeps each tag well below LVM's 1024-character limit.
	metaChunk = 960
	// maxMetaChunks bounds the metadata of one LV (about 56 KiB of
	// JSON); the VG metadata area holds every LV's tags.
	maxMetaChunks = 96
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// snapshotMeta is stored on each snapshot LV.
type snapshotMeta struct {
	ID          string            `json:"id"`
	DataStateAt time.Time         `json:"dataStateAt"`
	CreatedAt   time.Time         `json:"createdAt"`
	Message     string            `json:"message,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// cloneMeta is stored on each clone LV. SnapshotID is kept here rather
// than derived from the LV's origin, which LVM forgets when the origin is
// removed.
type cloneMeta struct {
	Name       string    `json:"name"`
	SnapshotID string    `json:"snapshotId"`
	CreatedAt  time.Time `json:"createdAt"`
}

// mainMeta is stored on the main LV.
type mainMeta struct {
	Pool      string    `json:"pool"`
	FSType    string    `json:"fsType"`
	CreatedAt time.Time `json:"createdAt"`
}

func poolTag(pool string) string { return tagPoolPrefix + b32.EncodeToString([]byte(pool)) }

func kindTag(kind string) string { return tagKindPrefix + kind }

// encodeMetaTags turns v into the numbered meta tags.
func encodeMetaTags(v any) ([]string, error) {
	js, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	enc := b32.EncodeToString(js)
	var tags []string
	for i := 0; len(enc) > 0; i++ {
		n := min(metaChunk, len(enc))
		tags = append(tags, fmt.Sprintf("%s%03d.%s", tagMetaPrefix, i, enc[:n]))
		enc = enc[n:]
	}
	if len(tags) > maxMetaChunks {
		return nil, fmt.Errorf("%w: metadata is %d bytes of JSON; the limit is about %d KiB (shorten the message or labels)", storage.ErrInvalidName, len(js), maxMetaChunks*metaChunk*5/8/1024)
	}
	return tags, nil
}

// tagSet is an LV's tags, parsed.
type tagSet struct {
	pool  string // decoded pool name; "" when the LV is not Thinlab's
	kind  string
	chunk map[int]string
}

// parseTags reads lvs' comma-separated lv_tags field.
func parseTags(field string) (tagSet, error) {
	ts := tagSet{chunk: map[int]string{}}
	if field == "" {
		return ts, nil
	}
	for tag := range strings.SplitSeq(field, ",") {
		switch {
		case strings.HasPrefix(tag, tagPoolPrefix):
			b, err := b32.DecodeString(strings.TrimPrefix(tag, tagPoolPrefix))
			if err != nil {
				return ts, fmt.Errorf("tag %q: %w", tag, err)
			}
			ts.pool = string(b)
		case strings.HasPrefix(tag, tagKindPrefix):
			ts.kind = strings.TrimPrefix(tag, tagKindPrefix)
		case strings.HasPrefix(tag, tagMetaPrefix):
			num, data, ok := strings.Cut(strings.TrimPrefix(tag, tagMetaPrefix), ".")
			i, err := strconv.Atoi(num)
			if !ok || err != nil || i < 0 || i >= maxMetaChunks {
				return ts, fmt.Errorf("malformed metadata tag %q", tag)
			}
			ts.chunk[i] = data
		}
	}
	return ts, nil
}

// decodeMeta joins the meta chunks and unmarshals them into v.
func (ts tagSet) decodeMeta(v any) error {
	if len(ts.chunk) == 0 {
		return fmt.Errorf("no %s* tags", tagMetaPrefix)
	}
	idx := make([]int, 0, len(ts.chunk))
	for i := range ts.chunk {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	var sb strings.Builder
	for n, i := range idx {
		if i != n {
			return fmt.Errorf("metadata tag %03d is missing", n)
		}
		sb.WriteString(ts.chunk[i])
	}
	js, err := b32.DecodeString(sb.String())
	if err != nil {
		return fmt.Errorf("metadata tags: %w", err)
	}
	return json.Unmarshal(js, v)
}
