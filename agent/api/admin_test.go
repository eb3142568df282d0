package api_test

import (
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/thinlab/thinlab/agent/api"
	"github.com/thinlab/thinlab/agent/clone"
	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/agent/logstream"
	"github.com/thinlab/thinlab/agent/storage"
	"github.com/thinlab/thinlab/internal/logtest"
)

// adminEnv serves the API over the fake engine with secrets in its config
// and a log stream.
func adminEnv(t *testing.T) (*env, *slog.Logger) {
	t.Helper()
	pool := fakePool{}
	cfg := config.Default()
	cfg.StateDir = t.TempDir()
	cfg.Server.VerificationToken = token
	cfg.Pools = []config.Pool{{Name: pool.Name(), Mode: pool.Mode(), Path: pool.MainDir()}}
	cfg.Retrieval.Mode = "logical"
	cfg.Retrieval.Source = config.Source{Host: "db.internal", Port: 5433, DBName: "app", Username: "reader", Password: "s3cret-source-pw", PasswordEnv: "SOURCE_PW_VAR"}
	cfg.Retrieval.Databases = []string{"app"}
	cfg.Retrieval.RefreshSchedule = "0 3 * * *"
	cfg.Platform.EnrollToken = "platform-enroll-token-123"
	hub := logstream.New(100)
	buf := &logtest.Buffer{}
	logger := slog.New(hub.Handler(buf.Logger().Handler()))
	e := &env{t: t, ctx: t.Context(), pool: pool, cfg: cfg, log: buf}
	e.srv = api.New(api.Options{Config: cfg, Clones: &fakeClones{pool: pool, m: map[string]clone.Clone{}}, Pools: []storage.Pool{pool}, Logger: logger, Logs: hub,
		Version: "test", InstanceID: "inst1", StartedAt: time.Now(), SweepInterval: -1, MetricsInterval: -1})
	e.http = httptest.NewServer(e.srv.Handler())
	t.Cleanup(func() { e.http.Close(); e.srv.Close() })
	return e, logger
}

func TestAdminConfigIsMaskedAndReadOnly(t *testing.T) {
	e, _ := adminEnv(t)
	e.cfg.Retrieval.Source.ConnStr = "host=db.internal password='x y z' user=reader"
	secrets := []string{token, "s3cret-source-pw", "platform-enroll-token-123", "'x y z'", "x y z"}

	code, body := e.raw(http.MethodGet, "/admin/config.yaml", token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /admin/config.yaml: %d %s", code, body)
	}
	for _, s := range secrets {
		if strings.Contains(string(body), s) {
			t.Fatalf("config.yaml shows the secret %q:\n%s", s, body)
		}
	}
	for _, want := range []string{"verificationToken: '********'", "password: '********'", "enrollToken: '********'", "passwordEnv: SOURCE_PW_VAR", "host: db.internal", "password=********"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("config.yaml lacks %q:\n%s", want, body)
		}
	}

	code, body = e.raw(http.MethodGet, "/api/admin/config", token, "")
	var proj map[string]any
	if code != http.StatusOK || json.Unmarshal(body, &proj) != nil {
		t.Fatalf("GET /admin/config: %d %s", code, body)
	}
	for _, s := range secrets {
		if strings.Contains(string(body), s) {
			t.Fatalf("/admin/config shows the secret %q: %s", s, body)
		}
	}
	conn := proj["retrieval"].(map[string]any)["spec"].(map[string]any)["logicalDump"].(map[string]any)["options"].(map[string]any)["source"].(map[string]any)["connection"].(map[string]any)
	if conn["host"] != "db.internal" || conn["port"] != float64(5433) || conn["username"] != "reader" || proj["retrievalMode"] != "logical" {
		t.Fatalf("/admin/config projection: %s", body)
	}
	if _, ok := conn["password"]; ok {
		t.Fatalf("/admin/config has a password field: %s", body)
	}

	if code, body := e.raw(http.MethodPost, "/admin/config", token, `{"global":{"debug":true}}`); code != http.StatusBadRequest || !strings.Contains(string(body), "read-only") {
		t.Fatalf("POST /admin/config: %d %s, want 400 read-only", code, body)
	}
	for _, path := range []string{"/admin/config", "/admin/config.yaml", "/admin/ws-auth"} {
		if code, _ := e.raw(http.MethodGet, path, "", ""); code != http.StatusUnauthorized {
			t.Fatalf("GET %s without token: %d, want 401", path, code)
		}
	}
	code, body = e.raw(http.MethodGet, "/status", token, "")
	if code != http.StatusOK || !strings.Contains(string(body), `"disableConfigModification":true`) {
		t.Fatalf("/status does not say the config is read-only: %s", body)
	}
}

func wsToken(t *testing.T, e *env) string {
	t.Helper()
	code, body := e.raw(http.MethodGet, "/admin/ws-auth", token, "")
	var m map[string]string
	if code != http.StatusOK || json.Unmarshal(body, &m) != nil || len(m["token"]) < 32 {
		t.Fatalf("GET /admin/ws-auth: %d %s", code, body)
	}
	return m["token"]
}

func readLine(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, msg, err := c.ReadMessage()
	if err != nil || typ != websocket.TextMessage {
		t.Fatalf("read a log frame: %v (type %d)", err, typ)
	}
	raw, err := base64.StdEncoding.DecodeString(string(msg))
	if err != nil {
		t.Fatalf("log frame is not base64: %q", msg)
	}
	return string(raw)
}

func TestInstanceLogsWebsocket(t *testing.T) {
	e, logger := adminEnv(t)
	logger.Info("before connect", "leak", token)
	wsURL := "ws" + strings.TrimPrefix(e.http.URL, "http")

	for _, tc := range []struct{ name, query string }{{"no token", ""}, {"made-up token", "?token=" + strings.Repeat("a", 64)}} {
		_, resp, err := websocket.DefaultDialer.Dial(wsURL+"/instance/logs"+tc.query, nil)
		closeBody(resp)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: %v %+v, want 401", tc.name, err, resp)
		}
	}
	// The Verification-Token alone does not open the stream.
	_, resp, err := websocket.DefaultDialer.Dial(wsURL+"/instance/logs", http.Header{"Verification-Token": {token}})
	closeBody(resp)
	if err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("header token only: %v, want 401", err)
	}

	tok := wsToken(t, e)
	c, resp, err := websocket.DefaultDialer.Dial(wsURL+"/ws/instance/logs?token="+tok, nil)
	closeBody(resp)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	first := readLine(t, c)
	if !strings.Contains(first, "before connect") || strings.Contains(first, token) || !strings.Contains(first, "********") {
		t.Fatalf("first frame %q: want the earlier line with the token masked", first)
	}
	logger.Warn("after connect")
	for {
		if l := readLine(t, c); strings.Contains(l, "after connect") {
			break
		}
	}
	// Single use.
	_, resp, err = websocket.DefaultDialer.Dial(wsURL+"/api/instance/logs?token="+tok, nil)
	closeBody(resp)
	if err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a spent token: %v, want 401", err)
	}
}

// closeBody closes the handshake answer's body (a refused upgrade has one).
func closeBody(resp *http.Response) {
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
}
