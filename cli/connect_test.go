package cli

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

// pgListener is a TCP listener that reads the PostgreSQL startup packet
// of every connection, records its parameters and hangs up: enough to see
// where psql dialled and which database and user it asked for.
type pgListener struct {
	ln      net.Listener
	mu      sync.Mutex
	startup []map[string]string
}

func listenPG(t *testing.T, addr string) *pgListener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	l := &pgListener{ln: ln}
	closeAtCleanup(t, ln, "the fake postgres listener")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go l.serve(c)
		}
	}()
	return l
}

func (l *pgListener) serve(c net.Conn) {
	// The fake server only records the startup; the client's own
	// outcome is what the test checks.
	defer func() { _ = c.Close() }()
	params := map[string]string{"connected": "yes"}
	defer func() {
		l.mu.Lock()
		l.startup = append(l.startup, params)
		l.mu.Unlock()
	}()
	for {
		var n uint32
		if err := binary.Read(c, binary.BigEndian, &n); err != nil || n < 8 || n > 10000 {
			return
		}
		buf := make([]byte, n-4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		switch binary.BigEndian.Uint32(buf) {
		case 80877103, 80877104: // SSLRequest, GSSENCRequest: not supported
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		}
		kv := bytes.Split(bytes.TrimRight(buf[4:], "\x00"), []byte{0})
		for i := 0; i+1 < len(kv); i += 2 {
			params[string(kv[i])] = string(kv[i+1])
		}
		return
	}
}

func (l *pgListener) seen() []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]string(nil), l.startup...)
}

// TestConnectHostileNames: a database or user name from the agent (or
// --dbname) that looks like a conninfo must not choose where psql
// connects. The real psql runs against a fake agent answer; listeners on
// the clone's address and on the "evil" address record what psql sends.
func TestConnectHostileNames(t *testing.T) {
	isolate(t)
	psql := "/usr/lib/postgresql/15/bin/psql"
	if _, err := os.Stat(psql); err != nil {
		t.Fatalf("needs PostgreSQL 15 client binaries (make deps installs them): %v", err)
	}
	t.Setenv(envPsql, psql)
	t.Setenv("PGCONNECT_TIMEOUT", "10")
	good := listenPG(t, "127.0.0.1:0")
	// 127.0.0.2 is loopback on Linux: the address an attacker's name points at.
	evil := listenPG(t, "127.0.0.2:0")
	_, goodPort, _ := net.SplitHostPort(good.ln.Addr().String())
	_, evilPort, _ := net.SplitHostPort(evil.ln.Addr().String())
	evilConninfo := "host=127.0.0.2 port=" + evilPort

	for _, tc := range []struct {
		name, dbName, user, flagDB string
	}{
		{"db name is a conninfo", evilConninfo, "alice", ""},
		{"db name breaks out of quotes", `x' ` + evilConninfo + ` dbname='y`, "alice", ""},
		{"db name with backslashes", `x\' ` + evilConninfo + ` \`, "alice", ""},
		{"user breaks out of quotes", "app", `alice' ` + evilConninfo + ` user='bob`, ""},
		{"db name is a URI", "postgresql://127.0.0.2:" + evilPort + "/app", "alice", ""},
		{"--dbname is a conninfo", "app", "alice", evilConninfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(good.seen())
			cl := agentapi.Clone{ID: "c1", Status: agentapi.Status{Code: agentapi.StatusOK},
				DB: agentapi.Database{Host: "127.0.0.1", Port: goodPort, Username: tc.user, DBName: tc.dbName}}
			agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				replyJSON(t, w, http.StatusOK, cl)
			}))
			t.Cleanup(agent.Close)
			args := []string{"connect", "c1", "--url", agent.URL, "--token", "tok", "--password", "pw"}
			if tc.flagDB != "" {
				args = append(args, "--dbname", tc.flagDB)
			}
			code, _, errOut := runCLI(t, "", append(args, "--", "-XAtc", "select 1")...)
			// The fake server hangs up after the startup packet: psql fails.
			if code == 0 {
				t.Fatalf("psql against a listener that hangs up exited 0: %s", errOut)
			}
			if got := evil.seen(); len(got) != 0 {
				t.Fatalf("psql dialled the address in the name: %v", got)
			}
			after := good.seen()
			if len(after) <= before {
				t.Fatalf("psql did not connect to the clone's address 127.0.0.1:%s; stderr %q", goodPort, errOut)
			}
			wantDB := tc.dbName
			if tc.flagDB != "" {
				wantDB = tc.flagDB
			}
			last := after[len(after)-1]
			if last["database"] != wantDB || last["user"] != tc.user {
				t.Fatalf("psql asked for database %q user %q, want database %q user %q", last["database"], last["user"], wantDB, tc.user)
			}
		})
	}
}

func TestConninfoQuoting(t *testing.T) {
	got := conninfo([][2]string{{"host", "h"}, {"dbname", `a'b\c d=e`}})
	if want := `host='h' dbname='a\'b\\c d=e'`; got != want {
		t.Fatalf("conninfo = %s, want %s", got, want)
	}
}
