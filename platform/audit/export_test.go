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
