package tunnele2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/internal/pgtest"
	"github.com/thinlab/thinlab/internal/tlstest"
	"github.com/thinlab/thinlab/platform/hub"
	"github.com/thinlab/thinlab/sdk/tunnel"
)

// replicaSet stands for the platform database's record of which replica
// holds which agent: Locate asks every replica's hub.
type replicaSet struct {
	mu       sync.Mutex
	replicas []*platform
}

func (rs *replicaSet) locate(_ context.Context, agentID string) (string, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, p := range rs.replicas {
		if connected(p, agentID) {
			return p.URL, nil
		}
	}
	return "", nil
}

func relayTLS(t *testing.T, files tlstest.Files) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("test CA does not parse")
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// TestRequestsReachAgentThroughTheReplicaHoldingItsTunnel: two replicas,
// the agent's tunnel on A; API calls and clone streams asked of B are
// relayed through A, refusals come back as refusals, and a replica with
// another secret is refused.
func TestRequestsReachAgentThroughTheReplicaHoldingItsTunnel(t *testing.T) {
	pg := pgtest.Start(t)
	files := tlstest.New(t)
	db := newPlatformDB()
	secret := []byte(strings.Repeat("s", 32))
	rs := &replicaSet{}
	withRelay := func(secret []byte) func(*hub.Options) {
		return func(o *hub.Options) {
			o.Locate = rs.locate
			o.RelaySecret = secret
			o.RelayTLS = relayTLS(t, files)
		}
	}
	a := startPlatform(t, db, files, "", withRelay(secret))
	b := startPlatform(t, db, files, "", withRelay(secret))
	rs.replicas = []*platform{a, b}

	startAgent(t, agentConfig{url: a.URL, stateDir: t.TempDir(), caFile: files.CA, target: func(port int) bool { return port == pg.Port }})
	waitFor(t, "enrollment", func() bool { db.mu.Lock(); defer db.mu.Unlock(); return len(db.creds) == 1 })
	id := db.agentID(t)
	waitFor(t, "the session on A", func() bool { return connected(a, id) })
	if connected(b, id) {
		t.Fatal("the agent is connected to B too")
	}

	for i := range 3 {
		code, got := callAPI(t, b, id, fmt.Sprintf("/status/%d", i))
		if code != http.StatusOK || got["path"] != fmt.Sprintf("/status/%d", i) {
			t.Fatalf("API call %d through B: %d %v", i, code, got)
		}
	}

	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", pg.Port, pg.Password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) { return b.hub.DialClone(ctx, id, pg.Port) }
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatalf("postgres through B and A: %v", err)
	}
	var n int
	err = conn.QueryRow(t.Context(), "SELECT count(*) FROM generate_series(1, 50000)").Scan(&n)
	_ = conn.Close(context.Background()) // the test's session
	if err != nil || n != 50000 {
		t.Fatalf("query through the relay: %d %v", n, err)
	}

	_, err = b.hub.DialClone(t.Context(), id, 22)
	var refused *tunnel.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(refused.Reason, "not the port of a live clone") {
		t.Fatalf("port 22 through B: %v, want the agent's refusal", err)
	}

	// A replica whose secret differs is refused by A.
	c := startPlatform(t, db, files, "", withRelay([]byte(strings.Repeat("x", 32))))
	if _, err := c.hub.DialClone(t.Context(), id, pg.Port); err == nil || !strings.Contains(err.Error(), "secrets differ") {
		t.Fatalf("relay with another secret: %v, want refused", err)
	}
	if !strings.Contains(a.logs.String(), "relay refused: bad signature") {
		t.Fatalf("A did not log the refused relay:\n%s", a.logs.String())
	}

	// An agent nobody holds is not connected, on every replica.
	if _, err := b.hub.DialClone(t.Context(), "no-such-agent", pg.Port); !errors.Is(err, hub.ErrNotConnected) {
		t.Fatalf("unknown agent: %v, want ErrNotConnected", err)
	}
}
