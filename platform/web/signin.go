package web

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/ui"
)

// signIn lists the identity providers; a signed-in browser goes home.
func (w *Web) signIn(c *gin.Context) {
	if s, _ := w.auth.CurrentSession(c); s != nil {
		c.Redirect(http.StatusSeeOther, "/")
		return
	}
	var v ui.SignIn
	for _, p := range w.auth.Providers(c.Query("return_to")) {
		v.Providers = append(v.Providers, ui.Provider{DisplayName: p.DisplayName, LoginURL: p.LoginURL})
	}
	v.SignedOut = c.Query("signed_out") != ""
	w.render(c, http.StatusOK, ui.SignInPage(ui.Page{Title: "Sign in"}, v))
}
