package hub

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/thinlab/thinlab/sdk/tunnel"
)

func TestHubWithoutAgents(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("a hub without Authenticate was built")
	}
	h, err := New(Options{Authenticate: func(context.Context, *http.Request) (AgentIdentity, error) {
		return AgentIdentity{}, errors.New("unknown credential")
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	srv := httptest.NewServer(h)
	defer srv.Close()

	for _, tc := range []struct {
		method string
		want   int
	}{{http.MethodPost, http.StatusMethodNotAllowed}, {http.MethodGet, http.StatusUnauthorized}} {
		req, err := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tunnel.TunnelPath, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer nope")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.method, resp.StatusCode, tc.want)
		}
	}

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://agent/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := h.Do("agent-1", req); !errors.Is(err, ErrNotConnected) {
		if resp != nil {
			_ = resp.Body.Close()
		}
		t.Fatalf("Do to an unknown agent: %v", err)
	}
	if _, err := h.DialClone(t.Context(), "agent-1", 6000); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("DialClone to an unknown agent: %v", err)
	}
	if _, _, ok := h.Connected("agent-1"); ok {
		t.Fatal("an unknown agent is connected")
	}
	h.Disconnect("agent-1") // nothing to close: no panic, no wait
}
