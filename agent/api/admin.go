package api

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/gorilla/websocket"
	"gopkg.in/yaml.v3"

	"github.com/thinlab/thinlab/agent/config"
	"github.com/thinlab/thinlab/sdk/agentapi"
)

// The routes of DLE's UI that are not in its CLI: the configuration tab
// (/admin/config, /admin/config.yaml; read-only here) and the logs tab
// (/admin/ws-auth, then the /instance/logs websocket).

// masked replaces every secret in what the admin routes show.
const masked = "********"

// secretKey says which config keys hold secrets: tokens, passwords and
// anything named secret, whatever config section a later change adds them
// to (an enrollment token, a platform credential).
var secretKey = regexp.MustCompile(`(?i)(token|password|secret|credential)`)

// connStrPassword finds a password inside a libpq connection string, in
// both its key=value and URI forms.
var connStrPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)|(://[^:/@\s]*:)([^@\s]*)(@)`)

func maskConnStr(s string) string {
	return connStrPassword.ReplaceAllStringFunc(s, func(m string) string {
		sub := connStrPassword.FindStringSubmatch(m)
		if sub[1] != "" {
			return sub[1] + masked
		}
		return sub[3] + masked + sub[5]
	})
}

// maskNode masks secret values in a YAML mapping tree in place.
func maskNode(n *yaml.Node) {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			maskNode(c)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch {
			case v.Kind == yaml.ScalarNode && secretKey.MatchString(k.Value) && !strings.HasSuffix(strings.ToLower(k.Value), "env"):
				// A passwordEnv names a variable, not a secret.
				if v.Value != "" {
					v.Value, v.Tag, v.Style = masked, "!!str", 0
				}
			case v.Kind == yaml.ScalarNode && strings.EqualFold(k.Value, "connStr"):
				v.Value = maskConnStr(v.Value)
			default:
				maskNode(v)
			}
		}
	}
}

// effectiveConfigYAML is the agent's configuration as loaded (defaults
// applied), secrets masked.
func effectiveConfigYAML(cfg *config.Config) ([]byte, error) {
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	maskNode(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	return buf.Bytes(), enc.Close()
}

// getConfigYAML is GET /admin/config.yaml.
func (s *Server) getConfigYAML(c *gin.Context) {
	out, err := effectiveConfigYAML(s.cfg)
	if err != nil {
		s.internalError(c, err)
		return
	}
	c.Data(http.StatusOK, "application/yaml; charset=utf-8", out)
}

// getConfig is GET /admin/config: DLE's projection of the configuration
// (the fields its UI's configuration tab shows), filled from the agent's
// own settings; the source password is never part of it.
func (s *Server) getConfig(c *gin.Context) {
	cfg := s.cfg
	r := cfg.Retrieval
	dbs := map[string]any{}
	for _, d := range r.Databases {
		dbs[d] = map[string]any{}
	}
	settings := map[string]any{}
	for k, v := range cfg.Provision.CloneDefaults.Settings {
		settings[k] = v
	}
	mode := r.Mode
	if mode == "" {
		mode = agentapi.RetrievalModeUnknown
	}
	jobs := r.Jobs
	c.JSON(http.StatusOK, gin.H{
		"global":            gin.H{"debug": false},
		"databaseContainer": gin.H{"dockerImage": ""},
		"databaseConfigs":   gin.H{"configs": settings},
		"retrieval": gin.H{
			"refresh": gin.H{"timetable": r.RefreshSchedule},
			"spec": gin.H{
				"logicalDump": gin.H{"options": gin.H{
					"source": gin.H{"connection": gin.H{
						"dbname":   r.Source.DBName,
						"host":     r.Source.Host,
						"port":     r.Source.Port,
						"username": r.Source.Username,
					}},
					"databases":     dbs,
					"parallelJobs":  jobs,
					"customOptions": []string{},
					"ignoreErrors":  false,
				}},
				"logicalRestore": gin.H{"options": gin.H{
					"parallelJobs":  jobs,
					"customOptions": []string{},
					"ignoreErrors":  false,
				}},
			},
		},
		"retrievalMode": mode,
	})
}

// postConfig is POST /admin/config: refused, the agent's configuration
// is its file (GET /status says disableConfigModification).
func (s *Server) postConfig(c *gin.Context) {
	badRequest(c, "", "configuration modification is disabled: this agent's configuration is read-only through the API; edit its config file and restart it")
}

// wsTokens are the single-use tokens of the logs websocket: 60 s, in
// memory, as in DLE.
type wsTokens struct {
	mu sync.Mutex
	m  map[string]time.Time
}

const (
	wsTokenTTL = time.Minute
	// maxWSTokens bounds the outstanding tokens (each is 60 s).
	maxWSTokens = 256
)

func (w *wsTokens) issue(now time.Time) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[string]time.Time{}
	}
	for t, exp := range w.m {
		if !now.Before(exp) {
			delete(w.m, t)
		}
	}
	if len(w.m) >= maxWSTokens {
		return "", false
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	tok := hex.EncodeToString(b)
	w.m[tok] = now.Add(wsTokenTTL)
	return tok, true
}

// spend reports whether tok was issued and is still valid, and removes it.
func (w *wsTokens) spend(tok string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	exp, ok := w.m[tok]
	delete(w.m, tok)
	return ok && tok != "" && now.Before(exp)
}

// wsAuth is GET /admin/ws-auth: a token for one /instance/logs connection.
func (s *Server) wsAuth(c *gin.Context) {
	tok, ok := s.wsTokens.issue(s.now())
	if !ok {
		writeError(c, http.StatusTooManyRequests, agentapi.CodeBadRequest, "too many log stream tokens outstanding: use one or wait a minute", "")
		return
	}
	c.JSON(http.StatusOK, gin.H{"token": tok})
}

// logsBacklog is how far back a new log stream starts (as DLE).
const logsBacklog = 5 * time.Minute

// The single-use token is the authentication: a page on another origin
// cannot get one without the Verification-Token, so any Origin is
// accepted (DLE accepts any when its UI listens on all addresses).
var logsUpgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 4096,
	CheckOrigin:     func(*http.Request) bool { return true },
}

// instanceLogs is /instance/logs?token=T: a websocket of the agent's log,
// one base64 text frame per line (the last 5 minutes, then new lines),
// with the agent's secrets masked.
func (s *Server) instanceLogs(c *gin.Context) {
	if !s.wsTokens.spend(c.Query("token"), s.now()) {
		writeError(c, http.StatusUnauthorized, agentapi.CodeUnauthorized, "Check your verification token: get a single-use token from GET /admin/ws-auth first (it lasts 60 s)", "")
		return
	}
	if s.logs == nil {
		writeError(c, http.StatusNotFound, agentapi.CodeNotFound, "this agent keeps no log stream", "")
		return
	}
	conn, err := logsUpgrader.Upgrade(c.Writer, c.Request, nil)
	if err != nil {
		return // the upgrader answered the client
	}
	defer func() { _ = conn.Close() }() // the stream ends either way
	lines, stop := s.logs.Subscribe()
	defer stop()
	// The reader notices the client going away (and answers pings).
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		conn.SetReadLimit(4096)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	send := func(text string) bool {
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return conn.WriteMessage(websocket.TextMessage, []byte(base64.StdEncoding.EncodeToString([]byte(s.maskSecrets(text))))) == nil
	}
	for _, l := range s.logs.Since(s.now().Add(-logsBacklog)) {
		if !send(l.Text) {
			return
		}
	}
	for {
		select {
		case l, ok := <-lines:
			if !ok || !send(l.Text) {
				return
			}
		case <-gone:
			return
		case <-s.bg.Done():
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "agent shutting down"), time.Now().Add(time.Second))
			return
		}
	}
}

// maskSecrets hides the agent's own secrets should a log line hold one
// (none should: secrets are never logged).
func (s *Server) maskSecrets(line string) string {
	for _, secret := range []string{s.cfg.Server.VerificationToken, s.cfg.Retrieval.Source.Password, s.cfg.Platform.EnrollToken} {
		if len(secret) >= 4 {
			line = strings.ReplaceAll(line, secret, masked)
		}
	}
	return maskConnStr(line)
}
