package fleete2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// BenchmarkConnectCopy measures what `thinlab connect` users get: COPY of
// N MiB out of a real clone through the platform's clone connection route
// (websocket to the platform, the agent's tunnel, the clone's port; the
// same stream the CLI's local listener hands to psql) against a direct
// connection to the clone, alternating. THINLAB_BENCH_COPY_MIB sets N
// (default 64; the figure is 1024).
func BenchmarkConnectCopy(b *testing.B) {
	mib := 64
	if v, err := strconv.Atoi(os.Getenv("THINLAB_BENCH_COPY_MIB")); err == nil && v > 0 {
		mib = v
	}
	env, org, owner, _, ag := enrolled(b)
	ctx := b.Context()
	tok := env.Token(org, owner)
	c := engineClient(env, "acme", ag.ID, tok)
	if _, err := c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "copy", DB: &agentapi.DatabaseRequest{Username: "dev", Password: clonePassword}}); err != nil {
		b.Fatal(err)
	}
	ready, err := c.WaitClone(ctx, "copy")
	if err != nil {
		b.Fatal(err)
	}
	direct, err := pgx.ParseConfig(ready.DB.ConnStr + " password=" + clonePassword)
	if err != nil {
		b.Fatal(err)
	}
	through := direct.Copy()
	pc := env.Client(tok)
	through.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return pc.DialClone(ctx, "acme", ag.ID, "copy")
	}
	copyOut := func(cfg *pgx.ConnConfig) time.Duration {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = conn.Close(context.Background()) }() // the benchmark's session
		start := time.Now()
		n, err := conn.PgConn().CopyTo(ctx, io.Discard, fmt.Sprintf("COPY (SELECT repeat('x', 1023) FROM generate_series(1, %d)) TO STDOUT", mib*1024))
		if err != nil || n.RowsAffected() != int64(mib*1024) {
			b.Fatalf("COPY: %d rows, %v", n.RowsAffected(), err)
		}
		return time.Since(start)
	}
	var ds, ts []time.Duration
	for range max(b.N, 3) {
		ds = append(ds, copyOut(direct))
		ts = append(ts, copyOut(through))
	}
	slices.Sort(ds)
	slices.Sort(ts)
	d, tt := ds[len(ds)/2], ts[len(ts)/2]
	ratio := tt.Seconds() / d.Seconds()
	b.ReportMetric(ratio, "copy_ratio")
	fmt.Printf("BENCH tunnel_copy_ratio %.2f x (thinlab connect path, %d MiB: %.0f MiB/s through the platform, %.0f MiB/s direct, medians of %d)\n",
		ratio, mib, float64(mib)/tt.Seconds(), float64(mib)/d.Seconds(), len(ds))
}
