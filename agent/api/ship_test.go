package api_test

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
	"github.com/thinlab/thinlab/agent/shipstore"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// TestShipBetweenAgents ships btrfs snapshots from one agent (pool,
// clone manager, API server) to another through the API: a full stream,
// then an incremental one; the receiver clones each at once and reads the
// rows. A stream cut midway leaves nothing on the receiver, and the next
// import of the same snapshot succeeds.
func TestShipBetweenAgents(t *testing.T) {
	src := newEnv(t, 2, []string{"create table t (x int)", "insert into t values (1)"})
	dst := newEnv(t, 3)
	target := agentapi.ShipTarget{URL: dst.http.URL, Token: token}

	labels := map[string]string{"team": "data"}
	if _, err := src.client.UpdateSnapshot(src.ctx, src.snaps[0].ID, agentapi.PatchSnapshotRequest{Labels: &labels}); err != nil {
		t.Fatal(err)
	}
	res, err := src.client.ShipSnapshot(src.ctx, agentapi.ShipRequest{ID: src.snaps[0].ID, To: &target})
	if err != nil {
		t.Fatalf("ship: %v", err)
	}
	if res.Base != "" || !strings.HasPrefix(res.Snapshot.ID, dst.pool.Name()+"@") || res.Snapshot.Labels["team"] != "data" {
		t.Errorf("ship result %+v: want a full stream, the snapshot in %s with label team=data", res, dst.pool.Name())
	}
	c1 := dst.createOK(dst.createReq("shipped1", res.Snapshot.ID))
	if got := query(dst.ctx, t, c1, goodPassword, "select count(*)::text from t"); got != "1" {
		t.Errorf("clone of the shipped snapshot has %s rows, want 1", got)
	}

	// Second snapshot, shipped as the changes since the first.
	s2 := clonetest.Fill(t, src.pool, "insert into t values (2)")
	res2, err := src.client.ShipSnapshot(src.ctx, agentapi.ShipRequest{ID: s2.ID, Base: src.snaps[0].ID, To: &target})
	if err != nil {
		t.Fatalf("incremental ship: %v", err)
	}
	if res2.Base == "" {
		t.Errorf("second ship sent a full stream, want one based on %s", src.snaps[0].ID)
	}
	c2 := dst.createOK(dst.createReq("shipped2", res2.Snapshot.ID))
	if got := query(dst.ctx, t, c2, goodPassword, "select count(*)::text from t"); got != "2" {
		t.Errorf("clone of the incremental snapshot has %s rows, want 2", got)
	}

	t.Run("InterruptedImportLeavesNothing", func(t *testing.T) {
		s3 := clonetest.Fill(t, src.pool, "insert into t values (3)")
		var stream bytes.Buffer
		if err := src.client.ExportSnapshot(src.ctx, s3.ID, "", &stream); err != nil {
			t.Fatal(err)
		}
		before, err := dst.client.Snapshots(dst.ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = dst.client.ImportSnapshot(dst.ctx, "", bytes.NewReader(stream.Bytes()[:stream.Len()/2]))
		var apiErr *agentapi.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest {
			t.Fatalf("import of half a stream: %v, want 400", err)
		}
		after, err := dst.client.Snapshots(dst.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Errorf("snapshots after a cut import: %d, want %d", len(after), len(before))
		}
		entries, err := os.ReadDir(filepath.Join(filepath.Dir(dst.pool.MainDir()), "snapshots"))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".receiving-") {
				t.Errorf("left on the receiver: %s", e.Name())
			}
		}
		sn, err := dst.client.ImportSnapshot(dst.ctx, "", bytes.NewReader(stream.Bytes()))
		if err != nil {
			t.Fatalf("import of the whole stream after a cut one: %v", err)
		}
		c3 := dst.createOK(dst.createReq("shipped3", sn.ID))
		if got := query(dst.ctx, t, c3, goodPassword, "select count(*)::text from t"); got != "3" {
			t.Errorf("clone has %s rows, want 3", got)
		}
	})

	t.Run("SlowImportOutlivesReadTimeout", func(t *testing.T) {
		// The agent's server bounds request reads (agent.ReadTimeout);
		// an import lifts that bound for its own request.
		s4 := clonetest.Fill(t, src.pool, "insert into t values (4)")
		var stream bytes.Buffer
		if err := src.client.ExportSnapshot(src.ctx, s4.ID, "", &stream); err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewUnstartedServer(dst.srv.Handler())
		hs.Config.ReadTimeout = time.Second
		hs.Start()
		t.Cleanup(hs.Close)
		slow := &slowReader{r: bytes.NewReader(stream.Bytes()), chunk: stream.Len()/10 + 1, pause: 300 * time.Millisecond}
		c := &agentapi.Client{BaseURL: hs.URL, Token: token}
		if _, err := c.ImportSnapshot(src.ctx, "", slow); err != nil {
			t.Fatalf("import sent over 3 s to a server with a 1 s read timeout: %v", err)
		}
	})

	t.Run("BadInput", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			req    agentapi.ShipRequest
			status int
			field  string
		}{
			{"no url", agentapi.ShipRequest{ID: src.snaps[0].ID, To: &agentapi.ShipTarget{Token: token}}, http.StatusBadRequest, "to.url"},
			{"no token", agentapi.ShipRequest{ID: src.snaps[0].ID, To: &agentapi.ShipTarget{URL: dst.http.URL}}, http.StatusBadRequest, "to.token"},
			{"unknown snapshot", agentapi.ShipRequest{ID: src.pool.Name() + "@snapshot_20000101000000", To: &target}, http.StatusNotFound, ""},
			{"base of another pool", agentapi.ShipRequest{ID: src.snaps[0].ID, Base: "other@snapshot_20000101000000", To: &target}, http.StatusBadRequest, "base"},
			{"wrong token", agentapi.ShipRequest{ID: src.snaps[0].ID, To: &agentapi.ShipTarget{URL: dst.http.URL, Token: "wrong"}}, http.StatusBadGateway, "to"},
			{"already there", agentapi.ShipRequest{ID: src.snaps[0].ID, To: &target}, http.StatusBadGateway, "to"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := src.client.ShipSnapshot(src.ctx, tc.req)
				var apiErr *agentapi.APIError
				if !errors.As(err, &apiErr) || apiErr.StatusCode != tc.status || apiErr.Detail != tc.field {
					t.Errorf("ship: %v, want %d naming %q", err, tc.status, tc.field)
				}
			})
		}
		status, body := dst.raw(http.MethodPost, "/snapshots/import", token, "not a stream")
		if status != http.StatusBadRequest || !strings.Contains(string(body), "not a Thinlab snapshot stream") {
			t.Errorf("import of garbage: %d %s, want 400", status, body)
		}
	})
}

// TestShipThroughS3 exports a snapshot into MinIO (shipping.s3) and
// imports it on another agent; an export cut midway stores nothing.
func TestShipThroughS3(t *testing.T) {
	m := retrievaltest.StartMinIO(t)
	m.Put(t, "ship", "readme", []byte("snapshot streams"))
	t.Setenv("SHIP_TEST_KEY_ID", m.Creds.AccessKeyID)
	t.Setenv("SHIP_TEST_SECRET", m.Creds.SecretAccessKey)
	s3cfg := config.ShippingS3{S3: config.S3{Endpoint: m.Endpoint, AccessKeyIDEnv: "SHIP_TEST_KEY_ID", SecretAccessKeyEnv: "SHIP_TEST_SECRET"}, Bucket: "ship", Prefix: "agents/"}

	src := newEnv(t, 1, []string{"create table t (x int)", "insert into t values (1), (2)"})
	dst := newEnv(t, 2)
	src.cfg.Shipping.S3 = s3cfg
	dst.cfg.Shipping.S3 = s3cfg

	res, err := src.client.ShipSnapshot(src.ctx, agentapi.ShipRequest{ID: src.snaps[0].ID, S3: &agentapi.S3Object{Key: "src/s1"}})
	if err != nil {
		t.Fatalf("ship to S3: %v", err)
	}
	if res.Key != "src/s1" || res.Bytes == 0 {
		t.Errorf("ship to S3 answered %+v, want key src/s1 and the stream's size", res)
	}
	sn, err := dst.client.FetchSnapshot(dst.ctx, agentapi.FetchRequest{S3: agentapi.S3Object{Key: "src/s1"}})
	if err != nil {
		t.Fatalf("fetch from S3: %v", err)
	}
	c := dst.createOK(dst.createReq("froms3", sn.ID))
	if got := query(dst.ctx, t, c, goodPassword, "select count(*)::text from t"); got != "2" {
		t.Errorf("clone of the snapshot fetched from S3 has %s rows, want 2", got)
	}

	// A stream that breaks off: the store must not publish the object.
	store := shipstore.NewWithCredentials(mustURL(t, m.Endpoint), "", "ship", "agents/", m.Creds)
	if _, err := store.Put(t.Context(), "cut", io.MultiReader(bytes.NewReader(make([]byte, shipstore.PartSize+10)), errReader{})); err == nil {
		t.Fatal("Put of a failing reader succeeded")
	}
	if _, err := store.Get(t.Context(), "cut"); !errors.Is(err, shipstore.ErrNotFound) {
		t.Errorf("after a failed upload, Get: %v, want ErrNotFound", err)
	}

	for _, tc := range []struct {
		name  string
		run   func() error
		field string
	}{
		{"bad key", func() error {
			_, err := src.client.ShipSnapshot(src.ctx, agentapi.ShipRequest{ID: src.snaps[0].ID, S3: &agentapi.S3Object{Key: "../x"}})
			return err
		}, "s3.key"},
		{"both targets", func() error {
			_, err := src.client.ShipSnapshot(src.ctx, agentapi.ShipRequest{ID: src.snaps[0].ID, S3: &agentapi.S3Object{Key: "x"}, To: &agentapi.ShipTarget{URL: dst.http.URL, Token: token}})
			return err
		}, "to"},
		{"missing object", func() error {
			_, err := dst.client.FetchSnapshot(dst.ctx, agentapi.FetchRequest{S3: agentapi.S3Object{Key: "nothing"}})
			return err
		}, ""},
	} {
		err := tc.run()
		var apiErr *agentapi.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode >= 500 || apiErr.Detail != tc.field {
			t.Errorf("%s: %v, want a 4xx naming %q", tc.name, err, tc.field)
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("sender died") }

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// slowReader pauses before every chunk bytes it yields.
type slowReader struct {
	r     io.Reader
	chunk int
	pause time.Duration
	left  int
}

func (s *slowReader) Read(b []byte) (int, error) {
	if s.left == 0 {
		time.Sleep(s.pause)
		s.left = s.chunk
	}
	n, err := s.r.Read(b[:min(len(b), s.left)])
	s.left -= n
	return n, err
}
