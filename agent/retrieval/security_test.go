package retrieval

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/internal/logtest"
	"github.com/thinlab/thinlab/internal/pgcluster"
	"github.com/thinlab/thinlab/internal/pgtest"
)

// procUID reads the real and effective uid of a running (or not yet
// reaped) process from the kernel.
func procUID(pid int) (string, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(status)) {
		if uids, ok := strings.CutPrefix(line, "Uid:"); ok {
			return strings.Join(strings.Fields(uids)[:2], " "), nil
		}
	}
	return "", fmt.Errorf("no Uid line for pid %d", pid)
}

// TestHostileDatabaseNameIsNotDialled runs the attack of issue 8: a source
// user who may create databases names one "host=127.0.0.2 port=X
// dbname=postgres". pg_dump -d NAME would read that as a connection
// string and send the retrieval credentials to 127.0.0.2:X. The database
// must be copied as a database of that name, and nothing may connect to
// 127.0.0.2:X. The same refresh checks, in the kernel's process table,
// that pg_dump and pg_restore run as the unprivileged OS user, not root.
func TestHostileDatabaseNameIsNotDialled(t *testing.T) {
	trap, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.2 (the loopback /8 is needed): %v", err)
	}
	t.Cleanup(func() {
		if err := trap.Close(); err != nil {
			t.Errorf("close the trap listener: %v", err)
		}
	})
	var dialled atomic.Int32
	go func() {
		for {
			c, err := trap.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			_ = c.Close() // only the count matters
		}
	}()
	hostile := fmt.Sprintf("host=127.0.0.2 port=%d dbname=postgres", trap.Addr().(*net.TCPAddr).Port)

	src := source(t)
	src.Exec(t, "postgres", `CREATE DATABASE "`+hostile+`"`)
	conn, err := connectDB(t.Context(), src.Cluster.SocketConnString(src.Port, "postgres", "postgres"), hostile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(t.Context(), "CREATE TABLE marker AS SELECT 'copied from the hostile name'::text AS v"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(t.Context()); err != nil {
		t.Fatal(err)
	}

	p := clonetest.NewPool(t)
	t.Setenv("THINLAB_TEST_SOURCE_PW", src.Password)
	log := &logtest.Buffer{}
	r := newRetriever(t, p, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, nil, log)
	var mu sync.Mutex
	uids := map[string][]string{}
	r.onStart = func(name string, pid int) {
		uid, err := procUID(pid)
		if err != nil {
			uid = "unreadable: " + err.Error()
		}
		mu.Lock()
		uids[name] = append(uids[name], uid)
		mu.Unlock()
	}
	res, err := r.Refresh(t.Context())
	if n := dialled.Load(); n != 0 {
		t.Fatalf("the database name was used as a connection string: %d connection(s) reached 127.0.0.2 (refresh error: %v)", n, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Databases, hostile) {
		t.Fatalf("databases copied %q, want one named %q", res.Databases, hostile)
	}
	if got := query(t, p, res.Snapshot.ID, hostile, "SELECT v FROM marker"); got != "copied from the hostile name" {
		t.Fatalf("database %q in the snapshot has marker %q", hostile, got)
	}

	u := pgtest.OSUser(t)
	want := fmt.Sprintf("%d %d", u.UID, u.UID)
	for _, name := range []string{"pg_dump", "pg_restore"} {
		if len(uids[name]) != len(res.Databases) {
			t.Fatalf("%s started %d times, want once per database (%d)", name, len(uids[name]), len(res.Databases))
		}
		for _, got := range uids[name] {
			if got != want {
				t.Fatalf("%s ran with real/effective uid %q, want %q (the %s OS user, never root)", name, got, want, u.Name)
			}
		}
	}
	if !strings.Contains(log.String(), "insecure") {
		t.Fatal("a source without sslRootCert (sslmode prefer) is not logged as insecure")
	}
}

func TestSourceSSLDefaults(t *testing.T) {
	p, err := sourceParams(config.Source{Host: "db", Username: "u", SSLRootCert: "/etc/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	if p["sslmode"] != "verify-full" || p["sslrootcert"] != "/etc/ca.pem" || insecureSSL(p) != "" {
		t.Fatalf("with a CA: params %v, insecure %q; want sslmode verify-full", p, insecureSSL(p))
	}
	p, _ = sourceParams(config.Source{Host: "db", Username: "u"})
	if p["sslmode"] != "" || !strings.Contains(insecureSSL(p), "prefer") {
		t.Fatalf("without a CA: params %v, insecure %q; want libpq's default named insecure", p, insecureSSL(p))
	}
	p, _ = sourceParams(config.Source{ConnStr: "host=db user=u sslmode=require"})
	if !strings.Contains(insecureSSL(p), "sslmode=require is insecure") {
		t.Fatalf("sslmode=require: insecure %q", insecureSSL(p))
	}
	p, _ = sourceParams(config.Source{Host: "db", Username: "u", SSLRootCert: "/ca", SSLMode: "verify-ca"})
	if p["sslmode"] != "verify-ca" {
		t.Fatalf("explicit sslMode overridden: %v", p)
	}
}

func TestConninfoQuotesEverything(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]string
		want string
	}{
		{map[string]string{"dbname": "host=127.0.0.2 port=1 dbname=postgres"}, `dbname='host=127.0.0.2 port=1 dbname=postgres'`},
		{map[string]string{"dbname": `it's \ odd`}, `dbname='it\'s \\ odd'`},
		{map[string]string{"dbname": "postgresql://evil/x"}, `dbname='postgresql://evil/x'`},
		{map[string]string{"user": "u", "dbname": "d"}, `dbname='d' user='u'`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			got := conninfo(tc.in)
			if got != tc.want {
				t.Fatalf("conninfo(%v) = %s, want %s", tc.in, got, tc.want)
			}
			// Read back with libpq's grammar (the agent's parser, and
			// pgx's for the database name): the same parameters.
			back, err := parseConnString(got)
			if err != nil || fmt.Sprint(back) != fmt.Sprint(tc.in) {
				t.Fatalf("%s parses back as %v (%v), want %v", got, back, err, tc.in)
			}
			cc, err := pgx.ParseConfig(got)
			if err != nil || cc.Database != tc.in["dbname"] {
				t.Fatalf("pgx reads %s as database %q (%v), want %q", got, cc.Database, err, tc.in["dbname"])
			}
		})
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it,
// PEM-encoded.
func testCA(t *testing.T, caName string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: caName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// TestSourceVerifyFull: with retrieval.source.sslRootCert the refresh
// verifies the source's certificate (verify-full by default) and succeeds
// with the right CA, although the CA file is readable by root only (pg_dump,
// unprivileged, gets a private copy); with another CA it fails.
func TestSourceVerifyFull(t *testing.T) {
	caPEM, certPEM, keyPEM := testCA(t, "thinlab test CA")
	otherCA, _, _ := testCA(t, "another CA")
	u := pgtest.OSUser(t)
	dataDir := pgtest.InitDataDir(t)
	for name, data := range map[string][]byte{"server.crt": certPEM, "server.key": keyPEM} {
		path := filepath.Join(dataDir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, int(u.UID), int(u.GID)); err != nil {
			t.Fatal(err)
		}
	}
	c := &pgcluster.Cluster{DataDir: dataDir, User: u}
	port := pgtest.FreePort(t)
	settings := maps.Clone(pgcluster.FastSettings)
	settings["ssl"] = "on"
	if err := c.Start(t.Context(), port, "127.0.0.1", settings); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Kill)
	src := &pgtest.Server{Cluster: c, Port: port, Password: pgtest.Password}
	src.Exec(t, "postgres", "ALTER ROLE postgres PASSWORD '"+pgtest.Password+"'", "CREATE DATABASE app")
	src.Exec(t, "app", "CREATE TABLE t AS SELECT 42 AS answer")

	rootOnly := t.TempDir() // 0700 root: the postgres OS user cannot read inside
	caFile := filepath.Join(rootOnly, "ca.pem")
	otherFile := filepath.Join(rootOnly, "other-ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherFile, otherCA, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("THINLAB_TEST_SOURCE_PW", pgtest.Password)

	p := clonetest.NewPool(t)
	log := &logtest.Buffer{}
	r := newRetriever(t, p, config.Source{Host: "127.0.0.1", Port: port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLRootCert: caFile}, []string{"app"}, log)
	res, err := r.Refresh(t.Context())
	if err != nil {
		t.Fatalf("refresh with sslRootCert (verify-full) against a server with a certificate from that CA: %v", err)
	}
	if got := query(t, p, res.Snapshot.ID, "app", "SELECT answer::text FROM t"); got != "42" {
		t.Fatalf("copied answer = %q, want 42", got)
	}
	if strings.Contains(log.String(), "insecure") {
		t.Fatal("a verify-full source is logged as insecure")
	}

	r2 := newRetriever(t, p, config.Source{Host: "127.0.0.1", Port: port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLRootCert: otherFile}, []string{"app"}, log)
	if _, err := r2.Refresh(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("refresh against a server whose certificate another CA signed: err = %v, want a certificate verification error", err)
	}
}
