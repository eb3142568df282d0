package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/platform/orgrules"
	"github.com/thinlab/thinlab/platform/rbac"
	"github.com/thinlab/thinlab/platform/store"
	"github.com/thinlab/thinlab/sdk/platformapi"
)

// FuzzAPIRequestDecoding feeds arbitrary bodies to the request decoding
// and validation of the organization, member, invitation and token routes
// (decode, then the same check functions the handlers call). It must never
// panic; a refusal is a 400 with the API's error shape and a message; an
// accepted request satisfies what the store relies on.
//
//	go test -run '^$' -fuzz FuzzAPIRequestDecoding -fuzztime 20s ./platform/api/
func FuzzAPIRequestDecoding(f *testing.F) {
	seeds := []struct {
		route uint8
		body  string
	}{
		{0, `{"slug":"acme","name":"Acme"}`},
		{0, `{"slug":"-x","name":""}`},
		{0, `{"slug":"acme","extra":1}`},
		{1, `{"role":"admin"}`},
		{1, `{"role":"god"}`},
		{2, `{"email":"ada@example.com","role":"viewer"}`},
		{2, `{"email":"Ada <ada@example.com>","role":"viewer"}`},
		{2, `{"email":"\u0000@x","role":"owner"}`},
		{3, `{"name":"ci","expires_at":"2999-01-01T00:00:00Z"}`},
		{3, `{"name":"  ","expires_at":"2001-01-01T00:00:00Z"}`},
		{3, `{"name":5}`},
		{3, `not json`},
		{3, ``},
		{0, `{"slug":"a"}{"slug":"b"}`},
		{2, `[1,2,3]`},
	}
	for _, s := range seeds {
		f.Add(s.route, []byte(s.body))
	}
	gin.SetMode(gin.ReleaseMode)
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		w := httptest.NewRecorder()
		c, _ := gin.CreateTestContext(w)
		c.Request = httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		var ok bool
		switch route % 4 {
		case 0:
			var req platformapi.CreateOrgRequest
			if ok = decode(c, &req) && !reject(c, checkCreateOrg(req)); ok {
				if store.ValidSlug(req.Slug) != nil || len(req.Name) > 200 {
					t.Fatalf("accepted organization %+v", req)
				}
			}
		case 1:
			var req platformapi.UpdateMemberRequest
			if ok = decode(c, &req); ok {
				if role, err := rbac.ParseRole(req.Role); err == nil && !rbac.AtLeast(rbac.Owner, role) {
					t.Fatalf("role %q parsed but is not a role", role)
				}
			}
		case 2:
			var req platformapi.CreateInvitationRequest
			if ok = decode(c, &req); ok {
				addr, err := orgrules.InvitationEmail(req.Email)
				ok = !reject(c, err)
				if ok {
					if a, err := mail.ParseAddress(addr); err != nil || a.Name != "" || a.Address != addr {
						t.Fatalf("accepted address %q from %q", addr, req.Email)
					}
				}
			}
		case 3:
			var req platformapi.CreateTokenRequest
			if ok = decode(c, &req) && !reject(c, checkCreateToken(&req, now)); ok {
				if req.Name == "" || len(req.Name) > 100 || req.Name != strings.TrimSpace(req.Name) || (req.ExpiresAt != nil && !req.ExpiresAt.After(now)) {
					t.Fatalf("accepted token request %+v", req)
				}
			}
		}
		if ok {
			return
		}
		if w.Code != http.StatusBadRequest {
			t.Fatalf("refused with HTTP %d, want 400", w.Code)
		}
		var er platformapi.ErrorResponse
		if err := json.Unmarshal(w.Body.Bytes(), &er); err != nil || er.Error.Code != platformapi.CodeInvalid || er.Error.Message == "" {
			t.Fatalf("refusal body %q is not the API's error shape: %v", w.Body.String(), err)
		}
	})
}
