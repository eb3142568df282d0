package agentapi

import (
	"bytes"
	"encoding/json"
	"testing"
)

// fuzzTypes are the DLE JSON types of the API, each as a constructor of a
// fresh value to decode into.
var fuzzTypes = []func() any{
	func() any { return new(Clone) },
	func() any { return new(Snapshot) },
	func() any { return new(PoolSnapshot) },
	func() any { return new(InstanceStatus) },
	func() any { return new(CreateCloneRequest) },
	func() any { return new(PatchSnapshotRequest) },
	func() any { return new(PatchCloneRequest) },
	func() any { return new(ResetCloneRequest) },
	func() any { return new(CreateSnapshotRequest) },
	func() any { return new(ErrorBody) },
	func() any { return new(Health) },
	func() any { return new(Retrieving) },
}

// FuzzJSONTypes: whatever an agent (or a DLE engine) sends, decoding never
// panics, and a decoded value survives a round trip: encoding it, decoding
// that and encoding again gives the same bytes (LocalTime normalises to
// seconds in the local zone once, then is stable).
func FuzzJSONTypes(f *testing.F) {
	seeds := []string{
		`{"id":"c1","snapshot":{"id":"main@snapshot_20240102030405","createdAt":"2024-01-02T03:04:05Z","dataStateAt":"2024-01-02 03:04:05 UTC","pool":"main","numClones":1},"protected":true,"protectedTill":"2024-01-02T03:04:05.5+03:00","deleteAt":null,"createdAt":"","status":{"code":"OK","message":"ready"},"db":{"connStr":"host=h port=6000","host":"h","port":"6000","username":"u","password":"","dbName":"postgres"},"metadata":{"cloneDiffSize":1,"cloningTime":0.5,"maxIdleMinutes":120}}`,
		`{"id":"main@snapshot_20240102030405","createdAt":"2024-01-02T03:04:05Z","dataStateAt":"2024-01-02T03:04:05Z","physicalSize":1,"logicalSize":2,"pool":"main","numClones":0,"protected":false,"protectedTill":"","deleteAt":"2030-01-01T00:00:00Z"}`,
		`{"status":{"code":"OK","message":"Instance is ready"},"engine":{"version":"v","edition":"community","startedAt":"2024-01-02T03:04:05Z"},"pools":[{"name":"p","mode":"btrfs","dataStateAt":"","status":"active","cloneList":["a"],"fileSystem":{"mode":"btrfs","size":1,"free":1,"used":0}}],"cloning":{"expectedCloningTime":0,"numClones":0,"clones":[]},"retrieving":{"mode":"logical","status":"finished","lastRefresh":null,"nextRefresh":null,"alerts":{"refresh_failed":{"level":"error","message":"m","lastSeen":"2024-01-02T03:04:05Z","count":2}}}}`,
		`{"id":"x","protected":true,"protectionDurationMinutes":60,"db":{"username":"alice","password":"pw","restricted":true,"db_name":"app"},"snapshot":{"id":""},"branch":"main","extra_conf":{"work_mem":"8MB"}}`,
		`{"protected":true,"protectionDurationMinutes":0,"deleteAt":"9999-12-31T23:59:59Z"}`,
		`{"deleteAt":"0000-01-01T00:00:00+23:59"}`,
		`{"snapshotID":"main@snapshot_20240102030405","latest":true}`,
		`{"code":"BAD_REQUEST","message":"m","detail":"db.password","hint":"h"}`,
		`null`, `[]`, `{"createdAt":1}`, `{"protectedTill":"\u0000"}`,
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		mk := fuzzTypes[int(which)%len(fuzzTypes)]
		v := mk()
		if err := json.Unmarshal(data, v); err != nil {
			return
		}
		first, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%T decoded from %q does not encode: %v", v, data, err)
		}
		w := mk()
		if err := json.Unmarshal(first, w); err != nil {
			t.Fatalf("%T: our own encoding %s does not decode: %v", v, first, err)
		}
		second, err := json.Marshal(w)
		if err != nil {
			t.Fatalf("%T: re-encoding failed: %v", w, err)
		}
		if !bytes.Equal(first, second) {
			t.Fatalf("%T is not stable over a round trip:\nfirst  %s\nsecond %s", v, first, second)
		}
	})
}
