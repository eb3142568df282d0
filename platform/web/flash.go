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

func (w *Web) setFlash(c *gin.Context, kind, text string) {
	w.auth.SetCookie(c, flashCookie, url.QueryEscape(kind+":"+text), "/", 60)
}

func (w *Web) takeFlash(c *gin.Context) []ui.Flash {
	raw, err := c.Cookie(flashCookie)
	if err != nil || raw == "" {
		return nil
	}
	w.auth.SetCookie(c, flashCookie, "", "/", -1)
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
func (w *Web) redirectWithFlash(c *gin.Context, to, text string) {
	w.setFlash(c, "success", text)
	c.Redirect(http.StatusSeeOther, to)
}
