package dextest

import (
	"encoding/json"
	"net/http"
	"testing"
)

func TestStartServesDiscovery(t *testing.T) {
	d := Start(t, Options{RedirectURIs: []string{"http://127.0.0.1:1/callback"}})
	resp, err := http.Get(d.Issuer + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }() // read fully by the decoder; nothing to lose
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Issuer != d.Issuer {
		t.Fatalf("issuer = %q, want %q", doc.Issuer, d.Issuer)
	}
	d.Stop()
	if resp, err := http.Get(d.Issuer + "/.well-known/openid-configuration"); err == nil {
		_ = resp.Body.Close()
		t.Fatalf("dex still answers after Stop: %s", resp.Status)
	}
}
