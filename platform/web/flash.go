package web

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/ui"
)

// A flash is carried across the redirect after a successful form post in
// a short-lived cookie (post/redirect/get, no JavaScript needed). It holds
// only the message; templ escapes it when shown.
const flashCookie = "thinlab_flash"

func setFlash(c *gin.Context, kind, text string) {
	http.SetCookie(c.Writer, &http.Cookie{
		Name: flashCookie, Value: url.QueryEscape(kind + ":" + text), Path: "/",
		MaxAge: 60, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: c.Request.TLS != nil,
	})
}

func takeFlash(c *gin.Context) []ui.Flash {
	raw, err := c.Cookie(flashCookie)
	if err != nil || raw == "" {
		return nil
	}
	http.SetCookie(c.Writer, &http.Cookie{Name: flashCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	kind, text, ok := strings.Cut(raw, ":")
	if !ok {
		return nil
	}
	switch kind {
	case "success", "error", "info":
	default:
		return nil
	}
	return []ui.Flash{{Kind: kind, Text: text}}
}

// redirectWithFlash ends a successful form post.
func redirectWithFlash(c *gin.Context, to, text string) {
	setFlash(c, "success", text)
	c.Redirect(http.StatusSeeOther, to)
}
