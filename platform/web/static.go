package web

import (
	"io/fs"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/thinlab/thinlab/ui"
)

var staticFS = func() http.Handler {
	sub, err := fs.Sub(ui.Static, "static")
	if err != nil {
		panic(err)
	}
	return http.StripPrefix("/static/", http.FileServer(http.FS(sub)))
}()

// static serves the embedded stylesheet and assets.
func (w *Web) static(c *gin.Context) {
	c.Header("Cache-Control", "public, max-age=3600")
	staticFS.ServeHTTP(c.Writer, c.Request)
}
