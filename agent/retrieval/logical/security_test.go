package logical

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

	"github.com/thinlab/thinlab/agent/clone/clonetest"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/retrieval/retrievaltest"
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

	src := retrievaltest.Source(t)
	src.Exec(t, "postgres", `CREATE DATABASE "`+hostile+`"`)
	conn, err := retrievaltest.ConnectDB(t.Context(), src.Cluster.SocketConnString(src.Port, "postgres", "postgres"), hostile)
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
	j := newTestJob(t, config.Source{Host: "127.0.0.1", Port: src.Port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW"}, nil, log)
	var mu sync.Mutex
	uids := map[string][]string{}
	j.onStart = func(name string, pid int) {
		uid, err := procUID(pid)
		if err != nil {
			uid = "unreadable: " + err.Error()
		}
		mu.Lock()
		uids[name] = append(uids[name], uid)
		mu.Unlock()
	}
	res, snap, err := fill(t, j, p)
	if n := dialled.Load(); n != 0 {
		t.Fatalf("the database name was used as a connection string: %d connection(s) reached 127.0.0.2 (refresh error: %v)", n, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Databases, hostile) {
		t.Fatalf("databases copied %q, want one named %q", res.Databases, hostile)
	}
	if got := retrievaltest.Query(t, p, snap.ID, hostile, "SELECT v FROM marker"); got != "copied from the hostile name" {
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
	j := newTestJob(t, config.Source{Host: "127.0.0.1", Port: port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLRootCert: caFile}, []string{"app"}, log)
	_, snap, err := fill(t, j, p)
	if err != nil {
		t.Fatalf("refresh with sslRootCert (verify-full) against a server with a certificate from that CA: %v", err)
	}
	if got := retrievaltest.Query(t, p, snap.ID, "app", "SELECT answer::text FROM t"); got != "42" {
		t.Fatalf("copied answer = %q, want 42", got)
	}
	if strings.Contains(log.String(), "insecure") {
		t.Fatal("a verify-full source is logged as insecure")
	}

	j2 := newTestJob(t, config.Source{Host: "127.0.0.1", Port: port, Username: "postgres", PasswordEnv: "THINLAB_TEST_SOURCE_PW", SSLRootCert: otherFile}, []string{"app"}, log)
	if _, _, err := fill(t, j2, p); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("refresh against a server whose certificate another CA signed: err = %v, want a certificate verification error", err)
	}
}
