package usage

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/events"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// TestSampleIsTheWireType: a sample as the agent encodes it decodes into
// the platform's wire type (sdk/tunnel.UsageSample) with every field,
// the savings fields (logical size, cloning time) included.
func TestSampleIsTheWireType(t *testing.T) {
	from := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	smp := Sample{
		From: from, To: from.Add(time.Minute),
		Clones: []CloneSample{{ID: "c1", Pool: "p1", Seconds: 60, DiffBytes: 7, LogicalBytes: 1 << 30, CloningSeconds: 0.25, Destroyed: true}},
		Pools:  []Pool{{Name: "p1", SizeBytes: 10, UsedBytes: 5, FreeBytes: 5, Snapshots: 2, Clones: 1}},
	}
	raw, err := json.Marshal(smp)
	if err != nil {
		t.Fatal(err)
	}
	var got tunnel.UsageSample
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := tunnel.UsageSample{
		From: smp.From, To: smp.To,
		Clones: []tunnel.UsageCloneSample{{ID: "c1", Pool: "p1", Seconds: 60, DiffBytes: 7, LogicalBytes: 1 << 30, CloningSeconds: 0.25, Destroyed: true}},
		Pools:  []tunnel.UsagePool{{Name: "p1", SizeBytes: 10, UsedBytes: 5, FreeBytes: 5, Snapshots: 2, Clones: 1}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v\nwant    %+v", got, want)
	}
	if tunnel.EventKindUsage != string(events.Usage) {
		t.Fatalf("the wire kind %q is not the agent's %q", tunnel.EventKindUsage, events.Usage)
	}
}
