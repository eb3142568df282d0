package agentapi

import (
	"bytes"
	"fmt"
	"time"
)

// legacyTimeLayout is the old DLE format, still accepted on input.
const legacyTimeLayout = "2006-01-02 15:04:05 UTC"

// LocalTime is DLE's time on the wire: RFC 3339 at second precision in the
// server's local zone; the zero time is "". Input also accepts fractions
// and the legacy "2006-01-02 15:04:05 UTC" form. (DLE's web UI fails on
// fractional seconds, so they are never sent.)
type LocalTime struct {
	time.Time
}

// NewLocalTime returns nil for the zero time (sent as null or left out),
// else a LocalTime.
func NewLocalTime(t time.Time) *LocalTime {
	if t.IsZero() {
		return nil
	}
	return &LocalTime{Time: t}
}

// MarshalJSON writes "" for the zero time, else RFC 3339 seconds.
func (t LocalTime) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte(`""`), nil
	}
	if !inRange(t.Time) {
		return nil, fmt.Errorf("time %s: the year is outside 0-9999 in the local zone, which RFC 3339 cannot write", t.UTC())
	}
	return []byte(`"` + t.Local().Truncate(time.Second).Format(time.RFC3339) + `"`), nil
}

// UnmarshalJSON reads "", null, RFC 3339 (with or without fractions) or
// the legacy layout.
func (t *LocalTime) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) || bytes.Equal(b, []byte(`""`)) {
		t.Time = time.Time{}
		return nil
	}
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return fmt.Errorf("time %s: want a string in RFC 3339 format", b)
	}
	s := string(b[1 : len(b)-1])
	for _, layout := range []string{time.RFC3339Nano, legacyTimeLayout} {
		if v, err := time.Parse(layout, s); err == nil {
			// A year at the edge plus an offset can leave RFC 3339's
			// range once shifted to the local zone (found by FuzzJSONTypes:
			// "0000-01-01T00:00:00+23:59" encoded as "-0001-...").
			if !inRange(v) {
				return fmt.Errorf("time %q: out of range: use a year between 0001 and 9998", s)
			}
			t.Time = v
			return nil
		}
	}
	return fmt.Errorf("time %q: want RFC 3339, e.g. 2024-01-02T03:04:05Z", s)
}

// TimeOf returns the time of a possibly nil LocalTime.
func TimeOf(t *LocalTime) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
}

// inRange reports whether t's year stays within 0-9999 in both the local
// zone (what MarshalJSON writes) and UTC.
func inRange(t time.Time) bool {
	for _, y := range []int{t.Local().Year(), t.UTC().Year()} {
		if y < 0 || y > 9999 {
			return false
		}
	}
	return true
}
