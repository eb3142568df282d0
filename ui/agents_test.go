package ui

import (
	"strings"
	"testing"
	"time"
)

func TestFmtBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 3 << 30: "3.0 GiB", 5 << 40: "5.0 TiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// The agents page escapes what agents report about themselves: an agent
// is a host outside the platform's trust, its name and pool names are
// text, never markup.
func TestAgentsPageEscapesAgentFacts(t *testing.T) {
	now := time.Now()
	p := Page{Org: &Org{Slug: "acme"}, CSRF: "tok"}
	html := render(t, AgentsPage(p, Agents{CanManage: true, Agents: []Agent{{
		ID: "agt_1", Name: `<script>alert(1)</script>`, State: "connected", ConnectedSince: &now, LastHeartbeat: &now,
		Health: "error", HealthMessage: `<img src=x onerror=alert(2)>`,
		Pools: []AgentPool{{Name: `<b>pool</b>`, Backend: "zfs"}}, CanManage: true,
	}}}))
	for _, bad := range []string{"<script>alert", "<img src=x", "<b>pool</b>"} {
		if strings.Contains(html, bad) {
			t.Errorf("agents page contains unescaped %q", bad)
		}
	}
	if !strings.Contains(html, "&lt;script&gt;") || !strings.Contains(html, `action="/o/acme/agents/agt_1/revoke"`) {
		t.Errorf("agents page: escaped name or revoke form missing:\n%s", html)
	}
}
