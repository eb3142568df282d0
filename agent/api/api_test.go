package api_test

import (
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thinlab/thinlab/sdk/agentapi"
)

var (
	snapA = []string{"CREATE TABLE t (v text)", "INSERT INTO t VALUES ('one')"}
	snapB = []string{"UPDATE t SET v = 'two'"}
)

// TestAPI runs the API's scenarios on one pool and server (each needs
// real clones; sharing the pool keeps the test time down).
func TestAPI(t *testing.T) {
	e := newEnv(t, 24, snapA, snapB)
	t.Run("Auth", func(t *testing.T) { e.t = t; testAuth(e) })
	t.Run("Routing", func(t *testing.T) { e.t = t; testRouting(e) })
	t.Run("BadRequests", func(t *testing.T) { e.t = t; testBadRequests(e) })
	t.Run("Lifecycle", func(t *testing.T) { e.t = t; testLifecycle(e) })
	t.Run("SnapshotProtection", func(t *testing.T) { e.t = t; testSnapshotProtection(e) })
	t.Run("Parallel20", func(t *testing.T) { e.t = t; testParallel20(e) })
}

func testAuth(e *env) {
	t := e.t
	for _, tok := range []string{"", "wrong-token", token + "x"} {
		for _, path := range []string{"/status", "/clones", "/api/status", "/snapshots", "/metrics", "/api/metrics"} {
			code, body := e.raw(http.MethodGet, path, tok, "")
			if code != http.StatusUnauthorized {
				t.Fatalf("GET %s with token %q: %d", path, tok, code)
			}
			m := decodeMap(t, body)
			if m["code"] != "UNAUTHORIZED" || m["message"] != "Check your verification token." {
				t.Fatalf("401 body: %s", body)
			}
		}
	}
	code, _ := e.raw(http.MethodPost, "/clone", "", `{"db":{"username":"x","password":"`+goodPassword+`"}}`)
	if code != http.StatusUnauthorized {
		t.Fatalf("POST /clone without token: %d", code)
	}
	if list, _ := e.client.Clones(e.ctx); len(list) != 0 {
		t.Fatal("an unauthorized create made a clone")
	}
	for _, path := range []string{"/healthz", "/api/healthz", "/openapi.yaml"} {
		if code, body := e.raw(http.MethodGet, path, "", ""); code != http.StatusOK {
			t.Fatalf("GET %s without token: %d %s", path, code, body)
		}
	}
	code, body := e.raw(http.MethodPost, "/healthz", "", "")
	if code != http.StatusOK || string(body) != `{"version":"test","edition":"community","instanceID":"inst1"}` {
		t.Fatalf("POST /healthz: %d %s", code, body)
	}
	bad := &agentapi.Client{BaseURL: e.http.URL, Token: "nope"}
	_, err := bad.Status(e.ctx)
	e.wantError(err, http.StatusUnauthorized, agentapi.CodeUnauthorized, "", "verification token")
	if _, err := e.client.Status(e.ctx); err != nil {
		t.Fatal(err)
	}
	api := &agentapi.Client{BaseURL: e.http.URL + "/api", Token: token}
	if _, err := api.Snapshots(e.ctx); err != nil {
		t.Fatalf("/api mirror: %v", err)
	}
}

func testRouting(e *env) {
	t := e.t
	code, body := e.raw(http.MethodGet, "/no/such/route", token, "")
	if code != http.StatusNotFound || decodeMap(t, body)["code"] != "NOT_FOUND" {
		t.Fatalf("unknown route: %d %s", code, body)
	}
	code, body = e.raw(http.MethodPut, "/clones", token, "")
	if code != http.StatusMethodNotAllowed || len(body) != 0 {
		t.Fatalf("wrong method: %d %q", code, body)
	}
	// Snapshot IDs go into the path unescaped ('@' literal), as DLE's
	// clients send them.
	code, body = e.raw(http.MethodGet, "/snapshot/"+e.snaps[0].ID, token, "")
	if code != http.StatusOK || decodeMap(t, body)["id"] != e.snaps[0].ID {
		t.Fatalf("GET snapshot: %d %s", code, body)
	}
}

func testBadRequests(e *env) {
	t := e.t
	c := e.client
	ctx := e.ctx
	r := e.createReq("bad1", e.snaps[0].Pool+"@snapshot_20000101000000")
	_, err := c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "snapshot.id", "not found")

	_, err = c.CreateClone(ctx, e.createReq("bad1", "not-a-snapshot"))
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "snapshot.id", "not a snapshot id")

	r = e.createReq("bad1", "")
	r.DB.Username = "bad name;"
	_, err = c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "db.username", "not a valid user name")

	r = e.createReq("bad1", "")
	r.DB.Password = "abc123"
	_, err = c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "db.password", "insecure password")

	r = e.createReq("bad1", "")
	r.DB.Password = ""
	_, err = c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "db.password", "required")

	_, err = c.CreateClone(ctx, agentapi.CreateCloneRequest{ID: "bad1"})
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "db.username", "required")

	r = e.createReq("bad id!", "")
	_, err = c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "id", "not a valid clone id")

	r = e.createReq("bad1", "")
	r.ExtraConf = map[string]string{"archive_command": "cp %p /elsewhere"}
	_, err = c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "extra_conf.archive_command", "never archives")

	r = e.createReq("bad1", "")
	r.Branch = "feature"
	_, err = c.CreateClone(ctx, r)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "branch", "not found")

	for _, body := range []string{`{"db": {"username": "alice"`, `not json at all`, `[1,2]`} {
		code, b := e.raw(http.MethodPost, "/clone", token, body)
		m := decodeMap(t, b)
		if code != http.StatusBadRequest || m["code"] != "BAD_REQUEST" || !strings.Contains(m["message"].(string), "not JSON") && !strings.Contains(m["message"].(string), "want a JSON") {
			t.Fatalf("body %q: %d %s", body, code, b)
		}
	}
	code, b := e.raw(http.MethodPost, "/clone", token, `{"protected":"yes","db":{"username":"alice","password":"x"}}`)
	if m := decodeMap(t, b); code != http.StatusBadRequest || m["detail"] != "protected" {
		t.Fatalf("wrong type: %d %s", code, b)
	}

	// Duplicate ID: the first clone stays, the second is refused.
	first := e.createOK(e.createReq("dup", ""))
	_, err = c.CreateClone(ctx, e.createReq("dup", ""))
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "id", "already exists")
	if got := query(ctx, t, first, goodPassword, "SELECT v FROM t"); got != "two" {
		t.Fatalf("latest snapshot data = %q", got)
	}
	err = c.ResetClone(ctx, "dup", agentapi.ResetCloneRequest{SnapshotID: e.snaps[0].ID, Latest: true})
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "snapshotID", "not both")
	err = c.ResetClone(ctx, "dup", agentapi.ResetCloneRequest{SnapshotID: e.snaps[0].Pool + "@snapshot_20000101000000"})
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "snapshotID", "not found")
	e.destroy("dup")

	_, err = c.Clone(ctx, "nope")
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "nope")
	e.wantError(c.DestroyClone(ctx, "nope"), http.StatusNotFound, agentapi.CodeNotFound, "", "not found")
	e.wantError(c.ResetClone(ctx, "nope", agentapi.ResetCloneRequest{}), http.StatusNotFound, agentapi.CodeNotFound, "", "not found")
	_, err = c.UpdateClone(ctx, "nope", agentapi.PatchCloneRequest{Protected: true})
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "not found")
	_, err = c.Snapshot(ctx, e.snaps[0].Pool+"@snapshot_20000101000000")
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "not found")
	_, err = c.Snapshot(ctx, "garbage")
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "id", "not a snapshot id")
	_, err = c.CreateSnapshot(ctx, "nosuchpool")
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "poolName", "not found")
	_, err = c.FullRefresh(ctx)
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "retrieval.mode", "not configured")

	e.assertNothingLeft()
}

var localTimeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)$`)

// checkKeys asserts that obj has every DLE field and nothing beyond the
// optional and Thinlab-added ones.
func checkKeys(t testing.TB, what string, obj any, required, optional []string) map[string]any {
	t.Helper()
	m, ok := obj.(map[string]any)
	if !ok {
		t.Fatalf("%s is not an object: %v", what, obj)
	}
	allowed := map[string]bool{}
	for _, k := range append(required, optional...) {
		allowed[k] = true
	}
	for _, k := range required {
		if _, ok := m[k]; !ok {
			t.Fatalf("%s lacks DLE field %q: %v", what, k, m)
		}
	}
	for k := range m {
		if !allowed[k] {
			t.Fatalf("%s has unexpected field %q", what, k)
		}
	}
	return m
}

func checkLocalTime(t testing.TB, what string, v any) {
	t.Helper()
	s, ok := v.(string)
	if !ok || !localTimeRE.MatchString(s) {
		t.Fatalf("%s = %#v, want an RFC 3339 string at second precision", what, v)
	}
}

var (
	cloneKeys    = []string{"id", "snapshot", "branch", "revision", "protected", "deleteAt", "createdAt", "status", "db", "metadata"}
	cloneOpt     = []string{"protectedTill", "pool"}
	dbKeys       = []string{"connStr", "host", "port", "username", "password", "dbName"}
	dbOpt        = []string{"ownerUser", "restricted"}
	metaKeys     = []string{"cloneDiffSize", "logicalSize", "cloningTime", "maxIdleMinutes"}
	metaOpt      = []string{"protectionLeaseDurationMinutes", "protectionMaxDurationMinutes"}
	snapshotKeys = []string{"id", "createdAt", "dataStateAt", "physicalSize", "logicalSize", "pool", "numClones", "clones", "branch", "message", "protected"}
	snapshotOpt  = []string{"protectedTill", "deleteAt"}
)

// checkClone checks a clone object against DLE's shape.
func checkClone(t testing.TB, obj any, ok bool) {
	t.Helper()
	m := checkKeys(t, "clone", obj, cloneKeys, cloneOpt)
	checkLocalTime(t, "clone.createdAt", m["createdAt"])
	st := checkKeys(t, "clone.status", m["status"], []string{"code", "message"}, nil)
	db := checkKeys(t, "clone.db", m["db"], dbKeys, dbOpt)
	if _, isString := db["port"].(string); !isString {
		t.Fatalf("db.port must be a string: %#v", db["port"])
	}
	if db["password"] != "" {
		t.Fatal("db.password is not empty")
	}
	if ok {
		if st["code"] != "OK" || db["port"] == "" || db["host"] == "" || !strings.HasPrefix(db["connStr"].(string), "host=") {
			t.Fatalf("OK clone without address: %v", m)
		}
	}
	meta := checkKeys(t, "clone.metadata", m["metadata"], metaKeys, metaOpt)
	if _, isNum := meta["cloneDiffSize"].(float64); !isNum {
		t.Fatalf("cloneDiffSize must be a number: %#v", meta["cloneDiffSize"])
	}
	checkSnapshot(t, m["snapshot"])
}

func checkSnapshot(t testing.TB, obj any) {
	t.Helper()
	m := checkKeys(t, "snapshot", obj, snapshotKeys, snapshotOpt)
	checkLocalTime(t, "snapshot.createdAt", m["createdAt"])
	checkLocalTime(t, "snapshot.dataStateAt", m["dataStateAt"])
	if _, isNum := m["physicalSize"].(float64); !isNum {
		t.Fatalf("physicalSize must be a number: %#v", m["physicalSize"])
	}
	if _, isArr := m["clones"].([]any); !isArr {
		t.Fatalf("clones must be an array: %#v", m["clones"])
	}
}

// testDLEShapes decodes raw answers into generic JSON and compares their
// field names with DLE's (DLE-API.md §6), while clone id is OK.
func testDLEShapes(e *env, id string) {
	t := e.t
	code, b := e.raw(http.MethodGet, "/clone/"+id, token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /clone: %d", code)
	}
	checkClone(t, decodeMap(t, b), true)

	code, b = e.raw(http.MethodGet, "/clones", token, "")
	var arr []any
	if err := jsonUnmarshal(b, &arr); code != http.StatusOK || err != nil || len(arr) != 1 {
		t.Fatalf("GET /clones: %d %v %s", code, err, b)
	}
	checkClone(t, arr[0], true)

	code, b = e.raw(http.MethodGet, "/snapshots", token, "")
	arr = nil
	if err := jsonUnmarshal(b, &arr); code != http.StatusOK || err != nil || len(arr) != 2 {
		t.Fatalf("GET /snapshots: %d %v %s", code, err, b)
	}
	for _, s := range arr {
		checkSnapshot(t, s)
	}
	// Newest first.
	if arr[0].(map[string]any)["id"] != e.snaps[1].ID {
		t.Fatalf("snapshots not newest first: %s", b)
	}

	code, b = e.raw(http.MethodGet, "/status", token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /status: %d", code)
	}
	st := checkKeys(t, "status", decodeMap(t, b), []string{"status", "engine", "pools", "cloning", "retrieving", "provisioner", "synchronization"}, nil)
	if s := checkKeys(t, "status.status", st["status"], []string{"code", "message"}, nil); s["code"] != "OK" {
		t.Fatalf("instance status %v", s)
	}
	eng := checkKeys(t, "engine", st["engine"], []string{"version", "edition", "billingActive", "instanceID"}, []string{"startedAt", "telemetry", "disableConfigModification"})
	checkLocalTime(t, "engine.startedAt", eng["startedAt"])
	pools := st["pools"].([]any)
	if len(pools) != 1 {
		t.Fatalf("pools: %v", pools)
	}
	p := checkKeys(t, "pool", pools[0], []string{"name", "mode", "dataStateAt", "status", "cloneList", "fileSystem"}, nil)
	checkLocalTime(t, "pool.dataStateAt", p["dataStateAt"])
	if p["status"] != "active" || len(p["cloneList"].([]any)) != 1 {
		t.Fatalf("pool: %v", p)
	}
	fs := checkKeys(t, "fileSystem", p["fileSystem"], []string{"mode", "size", "free", "used", "dataSize", "usedBySnapshots", "usedByClones", "compressRatio"}, nil)
	if size, isNum := fs["size"].(float64); !isNum || size <= 0 {
		t.Fatalf("fileSystem.size must be a positive number: %v", fs)
	}
	cl := checkKeys(t, "cloning", st["cloning"], []string{"expectedCloningTime", "numClones", "clones", "protectionLeaseDurationMinutes", "protectionMaxDurationMinutes"}, nil)
	if cl["numClones"].(float64) != 1 {
		t.Fatalf("cloning: %v", cl)
	}
	checkClone(t, cl["clones"].([]any)[0], true)
	ret := checkKeys(t, "retrieving", st["retrieving"], []string{"mode", "status", "lastRefresh", "nextRefresh", "alerts", "activity"}, nil)
	if _, isObj := ret["alerts"].(map[string]any); !isObj {
		t.Fatalf("alerts must be an object: %v", ret["alerts"])
	}
	checkKeys(t, "provisioner", st["provisioner"], []string{"dockerImage", "containerConfig"}, nil)
	sync := checkKeys(t, "synchronization", st["synchronization"], []string{"status", "lastReplayedLsn", "lastReplayedLsnAt", "replicationLag", "replicationUptime"}, []string{"startedAt"})
	checkKeys(t, "synchronization.status", sync["status"], []string{"code", "message"}, nil)

	code, b = e.raw(http.MethodGet, "/instance/retrieval", token, "")
	if code != http.StatusOK {
		t.Fatalf("GET /instance/retrieval: %d", code)
	}
	checkKeys(t, "retrieval", decodeMap(t, b), []string{"mode", "status", "lastRefresh", "nextRefresh", "alerts", "activity"}, nil)
}

func testLifecycle(e *env) {
	t := e.t
	c := e.client
	ctx := e.ctx
	a, b := e.snaps[0], e.snaps[1]

	// The raw create answer: 201, CREATING, no address yet.
	code, body := e.raw(http.MethodPost, "/clone", token, `{"id":"life","protected":false,"db":{"username":"alice","password":"`+goodPassword+`","db_name":"postgres"},"snapshot":{"id":"`+a.ID+`"},"unknownField":1}`)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	m := decodeMap(t, body)
	checkClone(t, m, false)
	if st := m["status"].(map[string]any); st["code"] != "CREATING" || st["message"] != "Clone is being created." {
		t.Fatalf("create status: %v", st)
	}
	cl, err := c.WaitClone(ctx, "life")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Snapshot == nil || cl.Snapshot.ID != a.ID || cl.DB.Username != "alice" || cl.Status.Message != "Clone is ready to accept Postgres connections." {
		t.Fatalf("clone: %+v", cl)
	}
	if got := query(ctx, t, cl, goodPassword, "SELECT v FROM t"); got != "one" {
		t.Fatalf("data = %q", got)
	}
	if _, err := tryQuery(ctx, cl, "wrong-password", "SELECT 1::text"); err == nil {
		t.Fatal("wrong password accepted")
	}
	testDLEShapes(e, "life")

	// Protect: destroy is refused with 409 and the clone keeps working.
	pc, err := c.UpdateClone(ctx, "life", agentapi.PatchCloneRequest{Protected: true})
	if err != nil || !pc.Protected || pc.ProtectedTill == nil {
		t.Fatalf("protect: %+v %v", pc, err)
	}
	e.wantError(c.DestroyClone(ctx, "life"), http.StatusConflict, agentapi.CodeConflict, "", "protected")
	code, body = e.raw(http.MethodDelete, "/snapshot/"+a.ID, token, "")
	if code != http.StatusConflict || !strings.Contains(string(body), "life") {
		t.Fatalf("delete snapshot with a clone: %d %s", code, body)
	}
	code, body = e.raw(http.MethodDelete, "/snapshot/"+a.ID+"?force=true", token, "")
	if code != http.StatusConflict || !strings.Contains(string(body), "protected") {
		t.Fatalf("force-delete snapshot with a protected clone: %d %s", code, body)
	}
	if got := query(ctx, t, cl, goodPassword, "SELECT v FROM t"); got != "one" {
		t.Fatalf("after refused destroy: %q", got)
	}
	pc, err = c.UpdateClone(ctx, "life", agentapi.PatchCloneRequest{Protected: false})
	if err != nil || pc.Protected {
		t.Fatalf("unprotect: %+v %v", pc, err)
	}

	// Reset to the other snapshot: same port, user and password; the other
	// snapshot's data.
	if err := c.ResetClone(ctx, "life", agentapi.ResetCloneRequest{SnapshotID: b.ID}); err != nil {
		t.Fatal(err)
	}
	now, err := c.Clone(ctx, "life")
	if err != nil || (now.Status.Code != agentapi.StatusResetting && now.Status.Code != agentapi.StatusOK) {
		t.Fatalf("after reset: %+v %v", now, err)
	}
	rc, err := c.WaitClone(ctx, "life")
	if err != nil {
		t.Fatal(err)
	}
	if rc.DB.Port != cl.DB.Port || rc.DB.Username != cl.DB.Username || rc.DB.ConnStr != cl.DB.ConnStr || rc.Snapshot.ID != b.ID {
		t.Fatalf("reset changed the address: before %+v after %+v", cl.DB, rc.DB)
	}
	if got := query(ctx, t, rc, goodPassword, "SELECT v FROM t"); got != "two" {
		t.Fatalf("after reset data = %q", got)
	}
	// An empty reset body resets to the same snapshot.
	if err := c.ResetClone(ctx, "life", agentapi.ResetCloneRequest{}); err != nil {
		t.Fatal(err)
	}
	if rc, err = c.WaitClone(ctx, "life"); err != nil || rc.Snapshot.ID != b.ID {
		t.Fatalf("same-snapshot reset: %+v %v", rc, err)
	}
	sa, err := c.Snapshot(ctx, a.ID)
	if err != nil || sa.NumClones != 0 {
		t.Fatalf("snapshot A: %+v %v", sa, err)
	}
	sb, err := c.Snapshot(ctx, b.ID)
	if err != nil || sb.NumClones != 1 || sb.Clones[0] != "life" {
		t.Fatalf("snapshot B: %+v %v", sb, err)
	}

	// Destroy: DELETING, then 404 NOT_FOUND (what DLE's CLI waits for).
	code, body = e.raw(http.MethodDelete, "/clone/life", token, "")
	if code != http.StatusOK || len(body) != 0 {
		t.Fatalf("destroy: %d %q", code, body)
	}
	if err := c.WaitCloneDestroyed(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Clone(ctx, "life")
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "")

	// The creation-time histogram saw the clone; the gauges see no clone.
	e.srv.RefreshMetrics(ctx)
	code, body = e.raw(http.MethodGet, "/metrics", token, "")
	text := string(body)
	if code != http.StatusOK || !regexp.MustCompile(`(?m)^thinlab_agent_clone_creation_seconds_count [1-9]`).MatchString(text) ||
		!strings.Contains(text, `thinlab_agent_clones{status="OK"} 0`) ||
		!strings.Contains(text, `thinlab_agent_snapshots{pool="`+a.Pool+`"} 2`) ||
		!strings.Contains(text, `thinlab_agent_pool_bytes{kind="size",pool="`+a.Pool+`"}`) {
		t.Fatalf("metrics: %d %s", code, text)
	}

	// POST /snapshot snapshots the pool's current data; it can be deleted
	// while no clone uses it.
	ps, err := c.CreateSnapshot(ctx, "")
	if err != nil || ps.Pool != a.Pool || !strings.HasPrefix(ps.ID, a.Pool+"@snapshot_") {
		t.Fatalf("create snapshot: %+v %v", ps, err)
	}
	if err := c.DeleteSnapshot(ctx, ps.ID, false); err != nil {
		t.Fatal(err)
	}
	_, err = c.Snapshot(ctx, ps.ID)
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "not found")
	e.assertNothingLeft()
}

func testParallel20(e *env) {
	t := e.t
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r := e.createReq("par"+strconv.Itoa(i), "")
			r.DB.Restricted = i%2 == 1
			if _, err := e.client.CreateClone(e.ctx, r); err != nil {
				errs <- err
				return
			}
			if _, err := e.client.WaitClone(e.ctx, r.ID); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	list, err := e.client.Clones(e.ctx)
	if err != nil || len(list) != n {
		t.Fatalf("list: %d %v", len(list), err)
	}
	ports := map[string]string{}
	for i := range list {
		cl := &list[i]
		if cl.Status.Code != agentapi.StatusOK {
			t.Fatalf("clone %s is %s", cl.ID, cl.Status.Code)
		}
		if other, dup := ports[cl.DB.Port]; dup {
			t.Fatalf("clones %s and %s share port %s", cl.ID, other, cl.DB.Port)
		}
		ports[cl.DB.Port] = cl.ID
		if got := query(e.ctx, t, cl, goodPassword, "SELECT v FROM t"); got != "two" {
			t.Fatalf("clone %s data = %q", cl.ID, got)
		}
	}
	// Newest first, as DLE lists them.
	if !slices.IsSortedFunc(list, func(a, b agentapi.Clone) int {
		return agentapi.TimeOf(b.CreatedAt).Compare(agentapi.TimeOf(a.CreatedAt))
	}) {
		t.Fatal("clones are not sorted newest first")
	}
	for i := range n {
		if err := e.client.DestroyClone(e.ctx, "par"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if err := e.client.WaitCloneDestroyed(e.ctx, "par"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	e.assertNothingLeft()
}

// TestPortRangeExhausted: with one port, a second clone is refused with a
// clear 409 and leaves nothing behind.
func TestPortRangeExhausted(t *testing.T) {
	e := newEnv(t, 1, snapA)
	first := e.createOK(e.createReq("only", ""))
	_, err := e.client.CreateClone(e.ctx, e.createReq("second", ""))
	e.wantError(err, http.StatusConflict, agentapi.CodeConflict, "", "portPool")
	if _, ok := errors.AsType[*agentapi.APIError](err); !ok {
		t.Fatal(err)
	}
	list, _ := e.client.Clones(e.ctx)
	if len(list) != 1 || list[0].ID != "only" {
		t.Fatalf("clones after refusal: %+v", list)
	}
	if got := query(e.ctx, t, first, goodPassword, "SELECT v FROM t"); got != "one" {
		t.Fatalf("data = %q", got)
	}
	e.destroy("only")
	e.assertNothingLeft()
}

func testSnapshotProtection(e *env) {
	t := e.t
	c := e.client
	ctx := e.ctx
	ps, err := c.CreateSnapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	id := ps.ID
	yes, no := true, false
	_, err = c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{})
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "protected", "nothing to update")
	_, err = c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{Protected: &yes, DeleteAt: agentapi.NewLocalTime(time.Now().Add(time.Hour))})
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "deleteAt", "cannot be protected and scheduled")
	_, err = c.UpdateSnapshot(ctx, e.snaps[0].Pool+"@snapshot_20000101000000", agentapi.PatchSnapshotRequest{Protected: &yes})
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "not found")

	// Without a duration: capped by protectionMaxDurationMinutes (120).
	sn, err := c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{Protected: &yes})
	if err != nil || !sn.Protected || sn.ProtectedTill == nil || time.Until(sn.ProtectedTill.Time) < 110*time.Minute {
		t.Fatalf("protect: %+v %v", sn, err)
	}
	dur := uint(30)
	sn, err = c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{Protected: &yes, ProtectionDurationMinutes: &dur})
	if err != nil || !sn.Protected || time.Until(sn.ProtectedTill.Time) > 31*time.Minute {
		t.Fatalf("protect 30 min: %+v %v", sn, err)
	}
	e.wantError(c.DeleteSnapshot(ctx, id, true), http.StatusConflict, agentapi.CodeConflict, "", "protected")
	_, err = c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{DeleteAt: agentapi.NewLocalTime(time.Now())})
	e.wantError(err, http.StatusBadRequest, agentapi.CodeBadRequest, "deleteAt", "protected")
	if got, err := c.Snapshot(ctx, id); err != nil || !got.Protected {
		t.Fatalf("GET after protect: %+v %v", got, err)
	}

	// Unprotect and schedule the deletion in the past: the next sweep
	// deletes it.
	sn, err = c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{Protected: &no})
	if err != nil || sn.Protected || sn.ProtectedTill != nil {
		t.Fatalf("unprotect: %+v %v", sn, err)
	}
	past := time.Now().Add(-time.Minute).Truncate(time.Second)
	sn, err = c.UpdateSnapshot(ctx, id, agentapi.PatchSnapshotRequest{DeleteAt: agentapi.NewLocalTime(past)})
	if err != nil || sn.DeleteAt == nil || !sn.DeleteAt.Equal(past) {
		t.Fatalf("deleteAt: %+v %v", sn, err)
	}
	if got := e.srv.SweepSnapshots(ctx); len(got) != 1 || got[0] != id {
		t.Fatalf("sweep deleted %v, want %s", got, id)
	}
	_, err = c.Snapshot(ctx, id)
	e.wantError(err, http.StatusNotFound, agentapi.CodeNotFound, "", "not found")
}
