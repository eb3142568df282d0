package audit

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"testing"
	"time"

	"github.com/thinlab/thinlab/sdk/platformapi"
)

func TestExportCSVAndJSON(t *testing.T) {
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	evs := []platformapi.AuditEvent{
		{ID: 2, Time: at, ActorID: "usr_1", Actor: "ann@example.com", Action: "token.create", Target: "tok_1", IP: "127.0.0.1", UserAgent: "=HYPERLINK(\"x\")", Result: "success"},
		{ID: 1, Time: at, Actor: "", Action: "member.update", Target: "usr_2", Result: "error", Error: "the organization's last owner, \"quoted\"\nnewline"},
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, evs); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&buf).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 || rows[1][1] != "2026-11-25T12:00:00Z" || rows[2][9] != evs[1].Error {
		t.Fatalf("rows: %q", rows)
	}
	if rows[1][7] != "'=HYPERLINK(\"x\")" {
		t.Fatalf("a formula in a cell was not defused: %q", rows[1][7])
	}
	buf.Reset()
	if err := WriteJSON(&buf, evs); err != nil {
		t.Fatal(err)
	}
	var back platformapi.List[platformapi.AuditEvent]
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil || len(back.Items) != 2 || back.Items[0].UserAgent != evs[0].UserAgent {
		t.Fatalf("JSON round trip: %s %v", buf.Bytes(), err)
	}
}

// TestExportCSVNeutralisesFormulas puts attacker-controlled text that a
// spreadsheet would run as a formula in every column an actor can
// influence; each such cell must come out prefixed with a single quote.
func TestExportCSVNeutralisesFormulas(t *testing.T) {
	payloads := map[string]string{
		"equals": "=cmd|' /C calc'!A0",
		"plus":   "+1+cmd|' /C calc'!A0",
		"minus":  "-2+3+cmd|' /C calc'!A0",
		"at":     "@SUM(1+1)*cmd|' /C calc'!A0",
		"tab":    "\t=1+1",
		"cr":     "\r=1+1",
	}
	for name, p := range payloads {
		t.Run(name, func(t *testing.T) {
			ev := platformapi.AuditEvent{ID: 1, ActorID: p, Actor: p, Action: p, Target: p, IP: p, UserAgent: p, Result: p, Error: p}
			var buf bytes.Buffer
			if err := WriteCSV(&buf, []platformapi.AuditEvent{ev}); err != nil {
				t.Fatal(err)
			}
			rows, err := csv.NewReader(&buf).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			for i, cell := range rows[1][2:] {
				if cell != "'"+p {
					t.Errorf("column %s = %q, want %q (a leading single quote)", CSVHeader[i+2], cell, "'"+p)
				}
			}
		})
	}
	t.Run("harmless text unchanged", func(t *testing.T) {
		var buf bytes.Buffer
		if err := WriteCSV(&buf, []platformapi.AuditEvent{{ID: 1, Actor: "ann@example.com", Action: "a-b"}}); err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(&buf).ReadAll()
		if err != nil || len(rows) != 2 {
			t.Fatalf("CSV read back: %d rows, %v; want the header and one row", len(rows), err)
		}
		if rows[1][3] != "ann@example.com" || rows[1][4] != "a-b" {
			t.Fatalf("harmless cells changed: %q", rows[1])
		}
	})
}
