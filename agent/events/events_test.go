package events

import (
	"testing"
)

func TestEmitFillsIDTimeSeverityAndReachesSubscribers(t *testing.T) {
	var b Bus
	var got []Event
	cancel := b.Subscribe(func(e Event) { got = append(got, e) })
	b.Emit(Event{Kind: CloneReady, Clone: "c1"})
	b.Emit(Event{Kind: CloneFailed, Severity: Error, Clone: "c2"})
	cancel()
	b.Emit(Event{Kind: CloneDestroyed, Clone: "c1"})

	if len(got) != 2 {
		t.Fatalf("subscriber got %d events, want 2 (the third was after cancel)", len(got))
	}
	if got[0].ID == "" || got[0].ID == got[1].ID {
		t.Errorf("IDs %q and %q: want distinct, non-empty", got[0].ID, got[1].ID)
	}
	if got[0].Time.IsZero() || got[0].Severity != Info || got[1].Severity != Error {
		t.Errorf("time/severity not filled as expected: %+v", got)
	}
}

func TestNilBusDropsEvents(t *testing.T) {
	var b *Bus
	b.Emit(Event{Kind: CloneReady}) // must not panic
}

func TestWithDataMarshals(t *testing.T) {
	e := Event{Kind: Usage}.WithData(map[string]int{"cloneSeconds": 5})
	if string(e.Data) != `{"cloneSeconds":5}` {
		t.Fatalf("Data = %s", e.Data)
	}
}
