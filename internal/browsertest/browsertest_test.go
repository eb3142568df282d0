package browsertest

import (
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

func TestBrowserSubmitsAForm(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if r.Method == http.MethodPost {
			_ = r.ParseForm()
			_, _ = fmt.Fprintf(w, `<p id="out">hello %s</p>`, html.EscapeString(r.PostForm.Get("name"))) // a failed write shows up as the browser's failure
			return
		}
		_, _ = fmt.Fprint(w, `<form method="post"><input id="name" name="name"></form>`) // as above
	}))
	defer srv.Close()

	ctx := New(t)
	Step(t, ctx, "open", chromedp.Navigate(srv.URL), chromedp.WaitVisible("#name"))
	Step(t, ctx, "submit", chromedp.SendKeys("#name", "browser"), chromedp.Submit("#name"))
	got := Get(t, ctx, "read", chromedp.Text("#out"))
	if !strings.Contains(got, "hello browser") {
		t.Fatalf("page says %q", got)
	}
}
