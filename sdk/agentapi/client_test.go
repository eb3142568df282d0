package agentapi

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestLocalTimeWireFormat(t *testing.T) {
	ts := time.Date(2023, 5, 16, 3, 50, 19, 123456789, time.UTC)
	b, err := json.Marshal(struct {
		A *LocalTime `json:"a"`
		B *LocalTime `json:"b"`
		C LocalTime  `json:"c"`
	}{A: NewLocalTime(ts), B: NewLocalTime(time.Time{})})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":"` + ts.Local().Truncate(time.Second).Format(time.RFC3339) + `","b":null,"c":""}`
	if string(b) != want {
		t.Fatalf("got %s, want %s", b, want)
	}
	for _, in := range []string{`"2023-05-16T03:50:19Z"`, `"2023-05-16T06:50:19.5+03:00"`, `"2023-05-16 03:50:19 UTC"`} {
		var lt LocalTime
		if err := json.Unmarshal([]byte(in), &lt); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if !lt.Truncate(time.Second).Equal(ts.Truncate(time.Second)) {
			t.Fatalf("%s: got %v", in, lt.Time)
		}
	}
	var lt LocalTime
	if err := json.Unmarshal([]byte(`""`), &lt); err != nil || !lt.IsZero() {
		t.Fatalf("empty string: %v %v", lt, err)
	}
	if err := json.Unmarshal([]byte(`"yesterday"`), &lt); err == nil {
		t.Fatal("bad time accepted")
	}
}

// A stand-in server (httptest, not the agent) checks what the client sends
// and how it reads DLE's answers; the agent's own tests drive this client
// against the real API.
func TestClientRequestsAndErrors(t *testing.T) {
	var polls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(VerificationTokenHeader) != "tok" {
			reply(t, w, http.StatusUnauthorized, `{"code":"UNAUTHORIZED","message":"Check your verification token."}`)
			return
		}
		switch {
		case r.Method == "GET" && r.URL.Path == "/api/clone/c1":
			st := StatusCreating
			if polls.Add(1) >= 3 {
				st = StatusOK
			}
			replyJSON(t, w, http.StatusOK, Clone{ID: "c1", Status: Status{Code: st}, DB: Database{Port: "6001"}})
		case r.Method == "GET" && r.URL.Path == "/api/clone/gone":
			reply(t, w, http.StatusNotFound, `{"code":"NOT_FOUND","message":"Requested object does not exist. Specify your request."}`)
		case r.Method == "GET" && r.URL.Path == "/api/snapshot/p@snapshot_20240101000000":
			replyJSON(t, w, http.StatusOK, Snapshot{ID: "p@snapshot_20240101000000"})
		case r.Method == "POST" && r.URL.Path == "/api/clone":
			var req CreateCloneRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.DB == nil || req.DB.DBName != "app" {
				reply(t, w, http.StatusBadRequest, `{"code":"BAD_REQUEST","message":"db.db_name: wrong","detail":"db.db_name"}`)
				return
			}
			replyJSON(t, w, http.StatusCreated, Clone{ID: "c1", Status: Status{Code: StatusCreating}})
		default:
			reply(t, w, http.StatusInternalServerError, "plain text failure")
		}
	}))
	defer srv.Close()
	ctx := t.Context()
	c := &Client{BaseURL: srv.URL + "/api/", Token: "tok", PollInterval: time.Millisecond}

	if _, err := c.CreateClone(ctx, CreateCloneRequest{DB: &DatabaseRequest{Username: "u", Password: "p", DBName: "app"}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.CreateClone(ctx, CreateCloneRequest{DB: &DatabaseRequest{Username: "u"}})
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusBadRequest || ae.Code != CodeBadRequest || ae.Detail != "db.db_name" {
		t.Fatalf("want 400 APIError, got %#v", err)
	}
	cl, err := c.WaitClone(ctx, "c1")
	if err != nil || cl.Status.Code != StatusOK || cl.DB.PortNumber() != 6001 {
		t.Fatalf("WaitClone: %+v %v", cl, err)
	}
	if err := c.WaitCloneDestroyed(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Clone(ctx, "gone"); !IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	if _, err := c.Snapshot(ctx, "p@snapshot_20240101000000"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Status(ctx)
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusInternalServerError || !strings.Contains(ae.Message, "plain text failure") {
		t.Fatalf("non-JSON error: %v", err)
	}
	bad := &Client{BaseURL: srv.URL, Token: "nope"}
	_, err = bad.Clones(ctx)
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusUnauthorized || ae.Code != CodeUnauthorized {
		t.Fatalf("want 401, got %v", err)
	}
}

// reply writes a canned answer. A failed write fails the test: the client
// hung up before reading it.
func reply(t *testing.T, w http.ResponseWriter, status int, body string) {
	t.Helper()
	w.WriteHeader(status)
	if _, err := io.WriteString(w, body); err != nil {
		t.Errorf("write the %d answer: %v", status, err)
	}
}

// replyJSON writes v as a JSON answer, like reply.
func replyJSON(t *testing.T, w http.ResponseWriter, status int, v any) {
	t.Helper()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Errorf("write the %d answer: %v", status, err)
	}
}
