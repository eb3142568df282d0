package audit

import (
	"encoding/csv"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// ToAPI converts stored events to their API form.
func ToAPI(events []store.AuditEvent) []platformapi.AuditEvent {
	out := make([]platformapi.AuditEvent, 0, len(events))
	for _, e := range events {
		a := platformapi.AuditEvent{
			ID: e.ID, Time: e.CreatedAt.UTC(), Actor: e.Actor, Action: e.Action, Target: e.Target,
			IP: e.IP, UserAgent: e.UserAgent, Result: e.Result, Error: e.Error,
		}
		if e.ActorID != nil {
			a.ActorID = *e.ActorID
		}
		out = append(out, a)
	}
	return out
}

// CSVHeader is the first line of a CSV export.
var CSVHeader = []string{"id", "time", "actor_id", "actor", "action", "target", "ip", "user_agent", "result", "error"}

// WriteCSV writes events as CSV with CSVHeader; times are RFC 3339 UTC.
func WriteCSV(w io.Writer, events []platformapi.AuditEvent) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	for _, e := range events {
		rec := []string{
			strconv.FormatInt(e.ID, 10), e.Time.UTC().Format(time.RFC3339Nano), e.ActorID, e.Actor,
			e.Action, e.Target, e.IP, e.UserAgent, e.Result, e.Error,
		}
		for i := range rec {
			rec[i] = defuseFormula(rec[i])
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// WriteJSON writes events as a JSON document {"items":[...]}.
func WriteJSON(w io.Writer, events []platformapi.AuditEvent) error {
	enc := json.NewEncoder(w)
	return enc.Encode(platformapi.List[platformapi.AuditEvent]{Items: events})
}

// formulaStarts are the first characters that make a spreadsheet program
// read a cell as a formula (OWASP "CSV injection"): tab and carriage return
// too, since some programs strip them and then see the next character.
const formulaStarts = "=+-@\t\r"

// defuseFormula keeps spreadsheet programs from executing a cell that an
// attacker controls (a user agent starting with "="): such a cell gets a
// leading single quote, which spreadsheets show as text.
func defuseFormula(s string) string {
	if s != "" && strings.IndexByte(formulaStarts, s[0]) >= 0 {
		return "'" + s
	}
	return s
}

// DefuseFormula is the same defence for other CSV exports of the
// platform (usage reports): a cell that would start a formula gets a
// leading single quote.
func DefuseFormula(s string) string { return defuseFormula(s) }
